"""Evaluations, beside the training methods and not built on them: each is handed a policy.

- ``best_of_n``: ``BestOfN``, best-of-N, pass@k and majority vote against a verifier (``lit_align test``);
- ``instruction``: ``InstructionEval``, RM-judged win rate against a reference, reward, length and adherence;
- ``verifier``: ``VerifierEval``, a callback scoring held-out prompts before and after ``fit``;
- ``stats``: intervals and paired tests for figures measured over held-out problems.

``BestOfN`` and ``InstructionEval`` are LightningModules on ``lit_align.policy.PolicyBase`` (the policy,
its tokenizer and rollout engine); ``VerifierEval`` evaluates the ``PolicyBase`` of the run it joins.

May import: ``lit_align.policy``, ``lit_align.sampling``, ``lit_align.rewards``, ``lit_align.tasks``,
``lit_align.modeling``, ``lit_align.data``; never ``lit_align.methods``.
"""
