"""Sample completions for prompt records and score them, a batch of prompts at a time.

The loop shared by the verifier evaluation (``evaluation.verifier``) and the on-policy preference
pairs (``lit_align.pairs``): collate the prompts, ask the rollout engine for ``params.n``
completions each, score every completion against its record.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from lit_align.data.collate import collate_prompts
from lit_align.data.formats import prompt_ids, prompt_of
from lit_align.sampling.generate import Samples, SamplingParams
from lit_align.rewards.base import Reward, score_samples
from lit_align.sampling.engines import RolloutEngine


def sample_and_score(
    engine: RolloutEngine, model, tokenizer, records: list[tuple[str, dict]], reward: Reward, params: SamplingParams,
    batch_size: int, seed: int = 0,
) -> Iterator[tuple[list[dict], Samples, torch.Tensor]]:
    """For each run of ``batch_size`` ``(origin, record)`` pairs: the records, their samples (``params.n``
    per record, grouped record by record) and the ``(len(records) * n,)`` scores ``reward`` gives them.

    The batch starting at record ``start`` samples with seed ``seed + start``.
    """
    device = next(model.parameters()).device
    for start in range(0, len(records), batch_size):
        window = records[start : start + batch_size]
        batch = collate_prompts([prompt_ids(r, o, tokenizer) for o, r in window], [r for _, r in window],
                                tokenizer.pad_token_id, [prompt_of(r, o) for o, r in window])
        samples = engine.sample(model, tokenizer, batch.input_ids.to(device), batch.attention_mask.to(device), params,
                                seed=seed + start)
        yield batch.records, samples, score_samples(reward, batch.records, samples.texts, params.n, batch.prompts)
