"""Score a policy's completions on held-out prompts with a verifier, before and after training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch

from lit_align.data.sources import Source
from lit_align.evaluation.stats import Comparison, Estimate, compare, mean_estimate, proportion_estimate
from lit_align.policy import PolicyBase
from lit_align.rewards.base import Reward
from lit_align.sampling.engines import HFGenerate, RolloutEngine
from lit_align.sampling.generate import SamplingParams
from lit_align.sampling.scoring import sample_and_score


def evaluate_with_verifier(
    model, tokenizer, records: list[tuple[str, dict]], verifier: Reward, params: SamplingParams, batch_size: int = 16,
    engine: RolloutEngine | None = None,
) -> dict:
    """Mean verifier score and exact accuracy (share of completions scoring 1.0) over ``records``, each
    with its 95 % interval over problems; ``engine`` draws the completions (default: Hugging Face
    generate on ``model``).

    Returns ``score`` and ``accuracy`` (means over all completions), ``score_interval`` (percentile
    bootstrap over problems) and ``accuracy_interval`` (Wilson with one completion per problem, the
    bootstrap otherwise), as ``[low, high]``, and the per-problem figures they come from
    (``problem_scores``, ``problem_correct``: means over each problem's ``params.n`` completions, in
    record order), which a paired comparison of two stages needs.
    """
    scores = []
    for _, _, batch_scores in sample_and_score(engine or HFGenerate(), model, tokenizer, records, verifier, params,
                                               batch_size):
        scores.extend(batch_scores.tolist())
    per_problem = torch.tensor(scores, dtype=torch.float64).view(len(records), params.n)
    problem_scores = per_problem.mean(dim=1)
    problem_correct = (per_problem == 1.0).double().mean(dim=1)
    score_est, accuracy_est = _estimates(problem_scores.tolist(), problem_correct.tolist(), params.n)
    return {
        "score": float(per_problem.mean()),
        "accuracy": float((per_problem == 1.0).double().mean()),
        "num_completions": len(scores),
        "num_problems": len(records),
        "score_interval": [score_est.low, score_est.high],
        "accuracy_interval": [accuracy_est.low, accuracy_est.high],
        "problem_scores": problem_scores.tolist(),
        "problem_correct": problem_correct.tolist(),
    }


def _estimates(problem_scores: list[float], problem_correct: list[float], n: int) -> tuple[Estimate, Estimate]:
    score = mean_estimate(problem_scores)
    if n == 1:  # one completion per problem: accuracy is a proportion of 0/1 outcomes
        accuracy = proportion_estimate(round(sum(problem_correct)), len(problem_correct))
    else:
        accuracy = mean_estimate(problem_correct)
    return score, accuracy


def describe(result: dict) -> tuple[Estimate, Estimate]:
    """The score and accuracy of an ``evaluate_with_verifier`` result as ``Estimate`` s, for printing,
    from the intervals the result already holds."""
    problems = result["num_problems"]
    per_problem = result["num_completions"] // problems
    return (Estimate(result["score"], *result["score_interval"], problems, "bootstrap"),
            Estimate(result["accuracy"], *result["accuracy_interval"], problems, "Wilson" if per_problem == 1 else "bootstrap"))


def compare_results(before: dict, after: dict) -> tuple[Comparison, Comparison]:
    """After minus before on the same problems: the score by paired bootstrap, exact accuracy by
    McNemar's exact test (0/1 outcomes) or the paired bootstrap (several completions per problem)."""
    if before["num_problems"] != after["num_problems"]:
        raise ValueError("before and after were measured on different numbers of problems; they cannot be paired")
    return (compare(before["problem_scores"], after["problem_scores"], test="bootstrap",
                    label="verifier score, after - before"),
            compare(before["problem_correct"], after["problem_correct"], label="exact accuracy, after - before"))


# VerifierEval's default; a config that sets some of its fields keeps the others (greedy stays greedy)
GREEDY = SamplingParams(max_new_tokens=160, temperature=0.0)


class VerifierEval(L.Callback):
    """Evaluate held-out prompts with a verifier at the start and end of ``fit`` (and every ``every_n_steps``
    optimiser steps: a held-out curve); print and log each.

    It evaluates the module's policy (``lit_align.policy.PolicyBase``: SFT, DPO, RLOO), sampled
    through the module's rollout engine; any other module is refused when fit starts.
    """

    uses_rollout_engine: ClassVar[bool] = True  # as ``PolicyBase`` declares it: a run with this callback samples

    def __init__(
        self,
        source: Source,
        verifier: Reward,
        num_prompts: int = 32,
        generation: SamplingParams = GREEDY,
        batch_size: int = 16,
        output: str | None = None,
        before: bool = True,
        every_n_steps: int = 0,
    ):
        """
        Args:
            source: held-out prompt records (e.g. CountdownSource with with_traces false and another seed).
            verifier: reward source (prompts, completions, records) -> (N,) scores in [0, 1].
            num_prompts: how many held-out prompts to score.
            generation: sampling settings; those not set keep these defaults (greedy, 160 new tokens, one per prompt).
            batch_size: prompts per generation batch.
            output: JSON file for the before/after figures (None: not written).
            before: also evaluate at the start of fit; false where the starting model was evaluated
                already on the same problems (e.g. by the run that exported it), so only ``after`` is
                measured and written.
            every_n_steps: also evaluate after every this many optimiser steps (0: never), stored as
                ``step_N`` in the output and logged as ``eval/curve_score`` and ``eval/curve_accuracy``;
                the time it takes counts towards ``trainer.max_time``.
        """
        if every_n_steps < 0:
            raise ValueError(f"VerifierEval every_n_steps must be >= 0, got {every_n_steps}")
        self.source, self.verifier, self.num_prompts = source, verifier, num_prompts
        self.params = generation
        self.batch_size, self.output, self.before, self.every_n_steps = batch_size, output, before, every_n_steps
        self.results: dict[str, dict] = {}

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if stage == "fit" and not isinstance(pl_module, PolicyBase):  # the figures are taken in fit only
            raise TypeError(f"VerifierEval evaluates a policy: it needs a module built on lit_align.policy.PolicyBase "
                            f"(SFT, DPO, RLOO), not {type(pl_module).__name__}")

    def _run(self, trainer: L.Trainer, pl_module: PolicyBase, stage: str) -> None:
        records = []
        for origin, record in self.source.records():
            if len(records) >= self.num_prompts:
                break
            records.append((origin, record))
        result = evaluate_with_verifier(pl_module.policy, pl_module.tokenizer, records, self.verifier, self.params,
                                        self.batch_size, pl_module.rollout)
        self.results[stage] = result
        score, accuracy = describe(result)
        lines = [f"[lit_align] {stage} training: mean verifier score {score}, exact accuracy {accuracy} "
                 f"on {result['num_problems']} held-out problems (95 % intervals over problems)"]
        if stage == "after" and "before" in self.results:
            before_score, _ = describe(self.results["before"])
            comparisons = compare_results(self.results["before"], result)
            lines += [f"[lit_align] {c}" for c in comparisons]
            result["against_before"] = {"score_interval_clears_before": score.clears(before_score),
                                        "score": comparisons[0].to_dict(), "accuracy": comparisons[1].to_dict()}
            lines.append(f"[lit_align] the score's after-interval lies above its before-interval: "
                         f"{'yes' if score.clears(before_score) else 'no'}")
        if trainer.is_global_zero:
            print("\n".join(lines))
        name = "curve" if stage.startswith("step_") else stage
        for key, estimate in (("score", score), ("accuracy", accuracy)):
            for logger in trainer.loggers:
                logger.log_metrics({f"eval/{name}_{key}": result[key], f"eval/{name}_{key}_low": estimate.low,
                                    f"eval/{name}_{key}_high": estimate.high}, step=trainer.global_step)
        if self.output and trainer.is_global_zero:
            Path(self.output).parent.mkdir(parents=True, exist_ok=True)
            Path(self.output).write_text(json.dumps(self.results, indent=2))

    # The before-figure rides in checkpoints: a resumed run must not re-measure it on trained weights.
    @property
    def state_key(self) -> str:
        """A curve's own key, so that a run can hold it beside a before/after evaluation (whose key stays
        the class name, as in the checkpoints written before curves existed)."""
        if not self.every_n_steps:
            return super().state_key
        return self._generate_state_key(every_n_steps=self.every_n_steps, output=self.output)

    def state_dict(self) -> dict:
        return {"results": self.results}

    def load_state_dict(self, state_dict: dict) -> None:
        self.results = dict(state_dict.get("results", {}))

    def on_fit_start(self, trainer: L.Trainer, pl_module: PolicyBase) -> None:
        if self.before and "before" not in self.results:
            self._run(trainer, pl_module, "before")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: PolicyBase, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step and step % self.every_n_steps == 0 and f"step_{step}" not in self.results:
            self._run(trainer, pl_module, f"step_{step}")  # once per step: a batch that only drew does not move it

    def on_fit_end(self, trainer: L.Trainer, pl_module: PolicyBase) -> None:
        self._run(trainer, pl_module, "after")
