"""Drawing completions from a policy: the one door every sampling path goes through.

- ``generate``: batched sampling with Hugging Face ``generate`` (KV cache, stops, kept tokens only),
  ``SamplingParams`` (the one place sampling settings are declared) and ``Samples``.
- ``engines``: rollout engines (``HFGenerate``, colocated ``VLLM``) that every method and evaluation asks.
- ``scoring``: the sample-and-score loop over prompt records shared by evaluations and the pairs tool.

May import: ``lit_align.objectives``, ``lit_align.rewards``, ``lit_align.modeling``, ``lit_align.data``.
"""
