"""Score a policy's completions on held-out prompts with a verifier, before and after training."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from lit_align.data.collate import collate_prompts
from lit_align.data.formats import prompt_ids
from lit_align.data.sources import Source
from lit_align.generation import SamplingParams
from lit_align.rollout import HFGenerate, RolloutEngine
from lit_align.rewards.base import Reward, score_samples


def evaluate_with_verifier(
    model, tokenizer, records: list[tuple[str, dict]], verifier: Reward, params: SamplingParams, batch_size: int = 16,
    engine: RolloutEngine | None = None,
) -> dict:
    """Mean verifier score and exact accuracy (share of completions scoring 1.0) over ``records``;
    ``engine`` draws the completions (default: Hugging Face generate on ``model``)."""
    engine = engine or HFGenerate()
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        batch = collate_prompts([prompt_ids(r, o, tokenizer) for o, r in chunk], [r for _, r in chunk], tokenizer.pad_token_id)
        out = engine.sample(model, tokenizer, batch.input_ids.to(device), batch.attention_mask.to(device), params, seed=start)
        scores.extend(score_samples(verifier, batch.records, out.texts, params.n)[0].tolist())
    scores_t = torch.tensor(scores, dtype=torch.float64)
    return {
        "score": float(scores_t.mean()),
        "accuracy": float((scores_t == 1.0).double().mean()),
        "num_completions": len(scores),
    }


class VerifierEval(L.Callback):
    """Evaluate held-out prompts with a verifier at the start and end of ``fit``; print and log both."""

    def __init__(
        self,
        source: Source,
        verifier: Reward,
        num_prompts: int = 32,
        max_new_tokens: int = 160,
        temperature: float = 0.0,
        batch_size: int = 16,
        output: str | None = None,
    ):
        """
        Args:
            source: held-out prompt records (e.g. CountdownSource with with_traces false and another seed).
            verifier: reward source (prompts, completions, records) -> (N,) scores in [0, 1].
            num_prompts: how many held-out prompts to score.
            max_new_tokens: longest completion.
            temperature: 0 for greedy decoding.
            batch_size: prompts per generation batch.
            output: JSON file for the before/after figures (None: not written).
        """
        self.source, self.verifier, self.num_prompts = source, verifier, num_prompts
        self.params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
        self.batch_size, self.output = batch_size, output
        self.results: dict[str, dict] = {}

    def _run(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        records = []
        for origin, record in self.source.records():
            if len(records) >= self.num_prompts:
                break
            records.append((origin, record))
        result = evaluate_with_verifier(
            pl_module.policy, pl_module.tokenizer, records, self.verifier, self.params, self.batch_size,
            getattr(pl_module, "rollout", None),
        )
        self.results[stage] = result
        if trainer.is_global_zero:
            print(
                f"[lit_align] {stage} training: mean verifier score {result['score']:.3f}, "
                f"exact accuracy {result['accuracy']:.3f} on {result['num_completions']} held-out prompts"
            )
        for key in ("score", "accuracy"):
            for logger in trainer.loggers:
                logger.log_metrics({f"eval/{stage}_{key}": result[key]}, step=trainer.global_step)
        if self.output and trainer.is_global_zero:
            Path(self.output).parent.mkdir(parents=True, exist_ok=True)
            Path(self.output).write_text(json.dumps(self.results, indent=2))

    # The before-figure rides in checkpoints: a resumed run must not re-measure it on trained weights.
    def state_dict(self) -> dict:
        return {"results": self.results}

    def load_state_dict(self, state_dict: dict) -> None:
        self.results = dict(state_dict.get("results", {}))

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        if "before" not in self.results:
            self._run(trainer, pl_module, "before")

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        self._run(trainer, pl_module, "after")
