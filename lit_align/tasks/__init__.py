"""Built-in tasks: generators of records plus their verifiers (Countdown, verifiable instructions).

May import: ``lit_align.rewards`` (the ``Reward`` protocol) and ``lit_align.data``.
"""
