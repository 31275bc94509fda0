"""On-policy preference pairs: sample N completions per prompt, score them, keep best and worst.

    python -m lit_align.pairs --config configs/pairs/countdown_embedded.yaml

For each prompt the policy samples ``generation.n`` completions; a reward source scores them; the
highest- and lowest-scoring completions become ``chosen`` and ``rejected`` when their scores
differ (prompts whose samples all score the same are skipped and counted). The output is a jsonl
of preference records that ``AlignDataModule`` reads (``lit_align.data.sources.LocalFile``).

The same samples can also make SFT data from verified self-generated responses: with
``sft_output`` set, each prompt's best completion is written as a prompt + completion record when
its score reaches ``sft_min_score`` (e.g. 1.0: every instruction of the prompt was followed).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path

import torch

from lit_align.modeling import models
from lit_align.data.formats import prompt_of
from lit_align.data.sources import Source
from lit_align.sampling.scoring import sample_and_score
from lit_align.sampling.generate import SamplingParams
from lit_align.sampling.engines import HFGenerate, RolloutEngine
from lit_align.rewards.base import Reward

log = logging.getLogger(__name__)
# the pairs tool's default; a config that sets some of its fields keeps the others
FOUR_SAMPLES = SamplingParams(max_new_tokens=160, temperature=1.0, n=4)


def _pair(record: dict, texts: list[str], scores: torch.Tensor) -> dict | None:
    best, worst = int(scores.argmax()), int(scores.argmin())
    if scores[best] == scores[worst]:
        return None
    prompt = prompt_of(record)
    wrap = (lambda t: [{"role": "assistant", "content": t}]) if isinstance(prompt, list) else (lambda t: t)
    extra = {k: v for k, v in record.items() if k not in ("prompt", "messages", "chosen", "rejected")}
    return extra | {
        "prompt": prompt,
        "chosen": wrap(texts[best]),
        "rejected": wrap(texts[worst]),
        "score_chosen": float(scores[best]),
        "score_rejected": float(scores[worst]),
    }


def _sft_record(record: dict, texts: list[str], scores: torch.Tensor, min_score: float) -> dict | None:
    best = int(scores.argmax())
    if float(scores[best]) < min_score:
        return None
    prompt = prompt_of(record)
    extra = {k: v for k, v in record.items() if k not in ("prompt", "messages", "chosen", "rejected", "completion")}
    completion = [{"role": "assistant", "content": texts[best]}] if isinstance(prompt, list) else texts[best]
    return extra | {"prompt": prompt, "completion": completion, "score": float(scores[best])}


def make_preference_pairs(
    source: Source,
    reward: Reward,
    model: str = "embedded:smollm2-135m-instruct",
    output: str = "outputs/pairs/pairs.jsonl",
    generation: SamplingParams = FOUR_SAMPLES,
    batch_size: int = 8,
    limit: int | None = None,
    seed: int = 0,
    dtype: str = "float32",
    sft_output: str | None = None,
    sft_min_score: float = 1.0,
    rollout: RolloutEngine | None = None,
) -> dict:
    """Write on-policy preference pairs to ``output`` and return counts.

    Args:
        source: prompt records (a "prompt" field, or "messages" whose last assistant turn is dropped).
        reward: reward source scoring each completion (CountdownVerifier, RewardModelScorer, ...).
        model: the policy that samples: embedded:NAME, a folder (e.g. an SFT export), .gguf or hub id.
        output: jsonl file to write.
        generation: sampling settings: n completions per prompt, at a temperature above 0 so that they differ.
        batch_size: prompts per generation batch.
        limit: use at most this many prompts.
        seed: sampling seed.
        dtype: policy weight dtype.
        sft_output: also write each prompt's best completion scoring at least sft_min_score here (SFT data).
        sft_min_score: lowest score of a completion kept for sft_output.
        rollout: the engine that samples: HFGenerate (default) or VLLM (configs/rollout/vllm_pairs.yaml).
    """
    engine = rollout or HFGenerate()
    tokenizer = models.load_tokenizer(model)
    policy = models.load_causal_lm(model, dtype).to("cuda" if torch.cuda.is_available() else "cpu")
    records = list(itertools.islice(source.records(), limit))  # (origin, record) pairs
    counts = {"prompts": len(records), "completions": 0, "pairs": 0, "skipped_equal_scores": 0}
    if sft_output:
        counts |= {"sft_records": 0, "sft_below_min_score": 0}
        Path(sft_output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    try:
        _write_pairs(engine, policy, tokenizer, records, reward, generation, batch_size, seed, output, sft_output,
                     sft_min_score, counts)
    finally:
        engine.close()  # an engine's memory (vLLM's KV cache) must not outlive the call: the caller goes on
    log.info("preference pairs: %s -> %s", counts, output)
    Path(output).with_suffix(".counts.json").write_text(json.dumps(counts, indent=2) + "\n")
    print(f"[lit_align] wrote {counts['pairs']} preference pairs to {output} ({counts})")
    return counts


def _write_pairs(engine, policy, tokenizer, records, reward, generation, batch_size, seed, output, sft_output,
                 sft_min_score, counts) -> None:
    with open(output, "w", encoding="utf-8") as out, open(sft_output or os.devnull, "w", encoding="utf-8") as sft_out:
        batches = sample_and_score(engine, policy, tokenizer, records, reward, generation, batch_size, seed)
        for chunk, samples, scores in batches:
            counts["completions"] += len(samples.texts)
            for i, record in enumerate(chunk):
                rows = slice(i * generation.n, (i + 1) * generation.n)
                if sft_output:
                    sft = _sft_record(record, samples.texts[rows], scores[rows], sft_min_score)
                    counts["sft_records" if sft else "sft_below_min_score"] += 1
                    if sft:
                        sft_out.write(json.dumps(sft, ensure_ascii=False) + "\n")
                pair = _pair(record, samples.texts[rows], scores[rows])
                if pair is None:
                    counts["skipped_equal_scores"] += 1
                else:
                    counts["pairs"] += 1
                    out.write(json.dumps(pair, ensure_ascii=False) + "\n")


def main(args: list[str] | None = None) -> dict:
    from jsonargparse import CLI

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return CLI(make_preference_pairs, args=args)


if __name__ == "__main__":
    from lit_align.cli import plain_errors

    with plain_errors("lit_align.pairs"):
        main()
