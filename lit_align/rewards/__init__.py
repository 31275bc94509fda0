"""Reward sources: the ``Reward`` protocol and its checks, weighted sums, reward-model scorers.

Task verifiers (Countdown, the instruction checks) live with their tasks in ``lit_align.tasks``.

May import: ``lit_align.objectives``, ``lit_align.modeling``, ``lit_align.data``.
"""
