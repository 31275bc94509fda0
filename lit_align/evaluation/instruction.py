"""Instruction-following evaluation: RM-judged win rate against a reference policy, and adherence.

For each held-out prompt the policy answers once (greedy by default). Reported, through
``python -m lit_align test``:

- **win rate** against a reference policy's answer to the same prompt, judged by a reward model
  (``judge``): a win counts 1, a tie (equal scores) 1/2, a loss 0. The study judged with a 70B reward
  model; here any ``Reward`` judges, e.g. a ``RewardModelScorer`` of a hub RM or of one trained with
  lit_align. The reference answers come from ``reference_model`` (sampled here with the same
  settings, through a Hugging Face ``generate`` engine of its own) or from ``reference_responses``, the
  ``responses.jsonl`` of an earlier run of this evaluation (so a base model is sampled once and
  compared against many times);
- mean judge reward of the policy and of the reference, and mean response length (tokens and words);
- **IFEval's four numbers** when records carry IFEval instructions (``instruction_id_list`` and
  ``kwargs``, ``lit_align.tasks.constraints``), judged by IFEval's reference checks: prompt level
  (every instruction of a prompt met) and instruction level (share of instructions met), each strict
  and loose (``ifeval_prompt_level_strict``, ``ifeval_instruction_level_loose``, ...).

Every rate and mean above comes with a 95 % interval over prompts, written to ``metrics.json`` as
``<key>_low`` and ``<key>_high`` next to ``<key>``: Wilson for prompt-level adherence (a 0/1 outcome
per prompt); the percentile bootstrap over prompts for instruction-level adherence (each prompt's share
of instructions met, weighted by its number of instructions, so the resampled statistic is still
instructions met / instructions), for the win rate (1, 1/2 or 0 per prompt) and for the mean rewards.

Outputs in ``output_dir``: ``metrics.json`` and ``responses.jsonl`` (one line per prompt, with its
``strict`` and ``loose`` verdicts per instruction and ``prompt_ok`` / ``prompt_ok_loose`` when records
carry IFEval instructions, its ``reward`` and, against a
reference, ``reference_reward`` and ``win``: the per-prompt values behind the figures, for paired
tests between runs on the same prompts).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lit_align.data.collate import PromptBatch
from lit_align.data.kinds import PromptKind
from lit_align.data.sources import DataError, read_records
from lit_align.evaluation.stats import Estimate, mean_estimate, proportion_estimate
from lit_align.modeling import models
from lit_align.policy import PolicyBase
from lit_align.rewards.base import Reward, checked_rewards
from lit_align.sampling.engines import HFGenerate
from lit_align.sampling.generate import Samples, SamplingParams


def win_outcomes(policy_scores: torch.Tensor, reference_scores: torch.Tensor) -> torch.Tensor:
    """Per prompt: 1 where the policy's score beats the reference's, 1/2 on a tie, 0 on a loss (float64).

    >>> wins = win_outcomes(torch.tensor([2.0, 1.0, 0.0, 3.0]), torch.tensor([1.0, 1.0, 5.0, 0.0]))
    >>> wins.tolist(), float(wins.mean())  # the win rate: ties count half
    ([1.0, 0.5, 0.0, 1.0], 0.625)
    """
    if policy_scores.shape != reference_scores.shape or policy_scores.numel() == 0:
        raise ValueError(f"win_rate needs two equal, non-empty shapes: {tuple(policy_scores.shape)} vs {tuple(reference_scores.shape)}")
    return (policy_scores > reference_scores).double() + 0.5 * (policy_scores == reference_scores).double()


def read_responses(path: str) -> list[dict]:
    """The ``responses.jsonl`` of an earlier evaluation run (fields ``prompt`` and ``response``)."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file (reference_responses must be a responses.jsonl of an earlier run)")
    rows = []
    for origin, row in read_records(path):
        for field in ("prompt", "response"):
            if field not in row:
                raise DataError(f"{origin}: missing field {field!r}")
        rows.append(row)
    return rows


class InstructionEval(PolicyBase):
    """Win rate against a reference (RM-judged), mean reward, length and adherence (``lit_align test``)."""

    batch_kind = PromptKind()
    uses_rollout_engine = True

    def __init__(
        self,
        *args,
        judge: Reward | None = None,
        reference_model: str | None = None,
        reference_responses: str | None = None,
        output_dir: str = "outputs/instruction_eval",
        **kwargs,
    ):
        """
        Args:
            judge: reward source that judges responses (e.g. RewardModelScorer); None: no win rate or reward.
            reference_model: policy to compare against, sampled here with the same settings.
            reference_responses: responses.jsonl of an earlier run to compare against (instead of reference_model).
            output_dir: where metrics.json and responses.jsonl are written.
        """
        kwargs.setdefault("generation", SamplingParams(max_new_tokens=128, temperature=0.0))
        super().__init__(*args, **kwargs)
        if reference_model is not None and reference_responses is not None:
            raise ValueError("give reference_model or reference_responses, not both")
        self.judge, self.reference_name, self.output_dir = judge, reference_model, output_dir
        self.reference_rows = read_responses(reference_responses) if reference_responses else None
        self.reference_policy = None
        # the policy's engine holds the policy's weights, so the reference samples through one of its own
        self.reference_engine = HFGenerate()
        self._rows: list[dict] = []

    def configure_model(self) -> None:
        super().configure_model()
        if self.reference_name is not None and self.reference_policy is None:
            ref = models.load_causal_lm(self.reference_name, self.dtype_name, self.trust_remote_code)
            self.reference_policy = ref.eval().requires_grad_(False)

    def _first_answers(self, samples: Samples) -> tuple[list[str], list[int]]:
        """Each prompt's first completion and its length in tokens."""
        n = self.generation.n
        return samples.texts[::n], samples.completion_mask.sum(dim=1)[::n].tolist()

    def test_step(self, batch: PromptBatch, batch_idx: int) -> None:
        texts, lengths = self._first_answers(self.sample(batch.input_ids, batch.attention_mask, seed=batch_idx))
        refs = [None] * len(texts)
        if self.reference_policy is not None:
            drawn = self.reference_engine.sample(self.reference_policy.to(self.device), self.tokenizer, batch.input_ids,
                                                 batch.attention_mask, self.generation, seed=batch_idx)
            refs = self._first_answers(drawn)[0]
        for record, prompt, text, length, ref in zip(batch.records, batch.prompts, texts, lengths, refs):
            self._rows.append({"prompt": prompt, "response": text, "tokens": int(length), "reference": ref, "record": record})

    def _attach_reference_rows(self) -> None:
        if self.reference_rows is None:
            return
        if len(self.reference_rows) != len(self._rows):
            raise DataError(f"reference_responses has {len(self.reference_rows)} responses for {len(self._rows)} prompts")
        for i, (row, ref) in enumerate(zip(self._rows, self.reference_rows)):
            if ref["prompt"] != row["prompt"]:
                raise DataError(f"reference_responses: line {i + 1} answers a different prompt than this run's prompt {i + 1}")
            row["reference"] = ref["response"]

    def _judge(self, responses: list[str]) -> torch.Tensor:
        prompts, records = [r["prompt"] for r in self._rows], [r["record"] for r in self._rows]
        return checked_rewards(self.judge, prompts, responses, records)

    def on_test_epoch_end(self) -> None:
        # Under DDP each rank holds only its own shard of the prompts: the figures and intervals below
        # are the local rank's, and only global rank 0 writes them (the ranks' rows are not gathered).
        self._attach_reference_rows()
        rows = self._rows
        metrics = {
            "num_prompts": len(rows),
            "mean_tokens": sum(r["tokens"] for r in rows) / max(1, len(rows)),
            "mean_words": sum(len(r["response"].split()) for r in rows) / max(1, len(rows)),
        }
        intervals: dict[str, Estimate] = {}  # 95 % intervals over prompts, for the printed summary
        if all("instruction_id_list" in r["record"] for r in rows) and rows:
            from lit_align.tasks.constraints import adherence

            figures = adherence([r["response"] for r in rows], [r["record"] for r in rows])
            judgements = figures.pop("judgements")
            metrics |= {f"ifeval_{k}": v for k, v in figures.items()}
            for r, j in zip(rows, judgements):
                r["strict"], r["loose"] = j.strict, j.loose
                r["prompt_ok"], r["prompt_ok_loose"] = all(j.strict), all(j.loose)
            for mode in ("strict", "loose"):
                # prompt level: a 0/1 outcome per prompt (Wilson); instruction level: instructions met /
                # instructions, resampling prompts, each prompt's share weighted by its size (bootstrap)
                ok = "prompt_ok" if mode == "strict" else "prompt_ok_loose"
                intervals[f"ifeval_prompt_level_{mode}"] = proportion_estimate(sum(r[ok] for r in rows), len(rows))
                intervals[f"ifeval_instruction_level_{mode}"] = mean_estimate(
                    [sum(r[mode]) / len(r[mode]) for r in rows], weights=[len(r[mode]) for r in rows])
        if self.judge is not None:
            scores = self._judge([r["response"] for r in rows])
            metrics["reward_mean"] = float(scores.mean())
            if rows:  # no interval (and no error) for an empty held-out set
                intervals["reward_mean"] = mean_estimate(scores)
            for r, s in zip(rows, scores.tolist()):
                r["reward"] = s
            if all(r["reference"] is not None for r in rows):
                ref_scores = self._judge([r["reference"] for r in rows])
                metrics["reference_reward_mean"] = float(ref_scores.mean())
                intervals["reference_reward_mean"] = mean_estimate(ref_scores)
                wins = win_outcomes(scores, ref_scores)
                metrics["win_rate"] = float(wins.mean())
                intervals["win_rate"] = mean_estimate(wins)
                for r, s, w in zip(rows, ref_scores.tolist(), wins.tolist()):
                    r["reference_reward"], r["win"] = s, w
        for key, estimate in intervals.items():
            metrics |= estimate.bounds(key)
        self.log_dict({f"test/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        self.results = metrics
        self.intervals = intervals
        self._write(metrics, rows, intervals)
        self._rows = []

    def _write(self, metrics: dict, rows: list[dict], intervals: dict[str, Estimate]) -> None:
        if not self.trainer.is_global_zero:
            return
        out = Path(self.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        with open(out / "responses.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({k: v for k, v in r.items() if k != "record"}, ensure_ascii=False) + "\n" for r in rows)
        interval_keys = {f"{k}_{end}" for k in intervals for end in ("low", "high")}
        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in metrics.items()
                 if not isinstance(v, dict) and k not in interval_keys}
        lines = [f"[lit_align] instruction-following evaluation: {shown}"]
        if intervals:
            lines.append("[lit_align] 95 % intervals over prompts:")
            lines += [f"[lit_align]   {key}: {estimate}" for key, estimate in intervals.items()]
        print("\n".join(lines))
