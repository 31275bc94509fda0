"""Drawing completions from a policy: the one door every sampling path goes through.

- ``generate``: batched sampling with Hugging Face ``generate`` (KV cache, stops, kept tokens only),
  ``SamplingParams`` (the one place sampling settings are declared) and ``Samples``.
- ``engines``: rollout engines (``HFGenerate``, colocated ``VLLM``) that every method and evaluation asks.
- ``remote`` and ``server``: ``VLLMServer``, the engine whose samples come from a rollout server in another
  process, and that server; the client never imports the server.
- ``vllm_engine``: the vLLM calls the colocated engine and the server share (start, requests, weight
  loads, completions into ``Samples``) and the facts the server shares with its client.
- ``seeds``: seeds derived from a draw's coordinates (never overflow).
- ``scoring``: the sample-and-score loop over prompt records shared by evaluations and the pairs tool.

May import: ``lit_align.objectives``, ``lit_align.rewards``, ``lit_align.modeling``, ``lit_align.data``.
"""
