"""Drawing completions from a policy: the one door every sampling path goes through.

- ``generate``: batched sampling with Hugging Face ``generate`` (KV cache, stops, kept tokens only),
  ``SamplingParams`` (the one place sampling settings are declared) and ``Samples``.
- ``engines``: rollout engines (``HFGenerate``, colocated ``VLLM``) that every method and evaluation asks.
- ``remote``: ``VLLMServer``, the engine whose samples come from vLLM's own server in another process;
  ``vllm_gloo``, lit_align's weight-transfer engine that vLLM loads into that server (plugin entry point);
  ``weight_wire``, the push protocol the two share (the client imports no vLLM).
- ``vllm_engine``: the vLLM calls of the colocated engine (start, requests, weight loads, completions into
  ``Samples``); the server mode's client builds its requests and reads its completions with it too.
- ``seeds``: seeds derived from a draw's coordinates (never overflow).
- ``scoring``: the sample-and-score loop over prompt records shared by evaluations and the pairs tool.

May import: ``lit_align.objectives``, ``lit_align.rewards``, ``lit_align.modeling``, ``lit_align.data``.
"""
