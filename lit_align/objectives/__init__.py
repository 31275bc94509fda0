"""What training optimises, as pure functions of tensors.

- ``logprobs``: forwards that turn a model and token ids into per-token log-probs (chunked, grouped by
  length, weights cast once under autocast): the only module here that runs a model.
- ``ops``: tensor helpers with documented shapes (masks, positions, advantages).
- ``losses``: the objectives (SFT, reward models, the DPO family, RLOO), each checked against
  hand-worked values.

May import: ``lit_align.data`` (for ``IGNORE_INDEX``) and nothing else of lit_align.
"""
