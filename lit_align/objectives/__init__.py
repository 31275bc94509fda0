"""What training optimises, as pure functions of tensors.

- ``logprobs``: forwards that turn a model and token ids into per-token log-probs (chunked, grouped by
  length, weights cast once under autocast): the only module here that runs a model.
- ``ops``: tensor helpers with documented shapes (loss masks, positions).
- ``losses``: the offline objectives (SFT, reward models, the DPO family), each checked against
  hand-worked values;
- ``policy_gradient``: online RL's pure pieces (advantage estimators, aggregations, TIS, the KL
  estimators and their placements, DAPO's overlong punishment);
- ``rl``: online RL's objectives as objects chosen by ``class_path`` (``ClippedRatio`` under RLOO and
  GRPO, ``GSPO``, ``CISPO``, ``SAPO``, ``VESPO``), each called with one ``PolicyGradientBatch``.

May import: ``lit_align.data`` (for ``IGNORE_INDEX``) and nothing else of lit_align.
"""
