"""Best-of-N sampling against a verifier, with pass@k and majority vote, through ``lit_align test``.

For each held-out prompt the policy samples ``max(n_values)`` completions once; every N in
``n_values`` then looks at the first N of them:

- best-of-N accuracy: the completion the selector scores highest (ties: the earliest) is correct;
- pass@N: unbiased estimate 1 - C(n-c, N) / C(n, N) from all n samples with c correct (Chen et al., 2021);
- majority@N: the most frequent answer among the first N (ties: the one seen first) is correct.

"Correct" means a verifier score of at least ``correct_threshold`` (1.0 for Countdown). The selector
is the verifier itself (an oracle, as in the study's external-verifier setup) or any other reward
source such as a reward model. Majority vote compares the answers the verifier reads from the
completions (``Reward.answer``; the Countdown verifier's: the last <answer> with whitespace removed);
completions without one do not vote, and a verifier that reads no answers gives majority@N 0.

Each figure is an average over prompts and is reported with a 95 % interval over prompts: Wilson for
best-of-N and majority@N (a 0/1 outcome per prompt), the percentile bootstrap for pass@N (a value in
[0, 1] per prompt). ``best_of_n_per_problem.csv`` keeps the per-prompt outcomes behind every row, so
two values of N (or two runs on the same prompts) can be compared with a paired test offline, e.g.
``lit_align.evaluation.stats.compare`` on two of its columns.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
from collections import Counter
from pathlib import Path

import torch

from lit_align.data.collate import PromptBatch
from lit_align.data.kinds import PromptKind
from lit_align.evaluation.stats import mean_estimate, proportion_estimate, with_interval
from lit_align.policy import PolicyBase
from lit_align.rewards.base import Reward, score_samples

log = logging.getLogger(__name__)
# best_of_n.csv: one row per N, each figure followed by the ends of its 95 % interval over prompts
CSV_COLUMNS = ("n", "best_of_n", "best_of_n_low", "best_of_n_high", "pass_at_n", "pass_at_n_low", "pass_at_n_high",
               "majority_at_n", "majority_at_n_low", "majority_at_n_high")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct.

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 4), pass_at_k(4, 0, 2), round(pass_at_k(4, 2, 2), 4)
    (0.25, 1.0, 0.0, 0.8333)
    """
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def best_of_n_hits(correct: torch.Tensor, selector: torch.Tensor, n: int) -> torch.Tensor:
    """Per prompt, whether the selector-best completion among the first n is correct. Shapes (P, N) -> (P,).

    >>> correct, selector = torch.tensor([[0, 1], [1, 0]]).bool(), torch.tensor([[0.1, 0.9], [0.5, 0.5]])
    >>> best_of_n_hits(correct, selector, 1).tolist(), best_of_n_hits(correct, selector, 2).tolist()
    ([False, True], [True, True])
    """
    pick = selector[:, :n].argmax(dim=1)  # argmax returns the first maximum, so ties go to the earliest
    return correct[torch.arange(correct.size(0)), pick]


def majority_hits(keys: list[list[str | None]], correct: torch.Tensor, n: int) -> list[int]:
    """Per prompt, 1 if the most frequent answer among the first n samples is correct, else 0
    (0 also when none of them has an answer). Ties go to the answer seen first.

    >>> correct = torch.tensor([[False, True, True], [True, False, False]])
    >>> majority_hits([["a", "b", "b"], ["x", None, "y"]], correct, 3)  # b wins; x and y tie, x came first
    [1, 1]
    >>> majority_hits([["a", "b", "b"], [None, None, None]], correct, 2)  # a and b tie, a came first; no votes
    [0, 0]
    """
    hits = []
    for p, row in enumerate(keys):
        votes = Counter(k for k in row[:n] if k is not None)
        hit = 0
        if votes:
            top = max(votes.values())
            winner = next(k for k in row[:n] if k is not None and votes[k] == top)
            hit = int(bool(correct[p, row.index(winner)]))
        hits.append(hit)
    return hits


class BestOfN(PolicyBase):
    """Evaluate a policy by best-of-N, pass@k and majority vote (``python -m lit_align test``)."""

    batch_kind = PromptKind()
    uses_rollout_engine = True

    def __init__(
        self,
        *args,
        verifier: Reward,
        selector: Reward | None = None,
        n_values: list[int] = [1, 2, 4, 8, 16],  # noqa: B006 (read-only default, shown in --help)
        correct_threshold: float = 1.0,
        output_dir: str = "outputs/best_of_n",
        **kwargs,
    ):
        """
        Args:
            verifier: judges correctness (e.g. CountdownVerifier).
            selector: picks the best of N (e.g. a RewardModelScorer); None: the verifier itself.
            n_values: sample counts to report; max(n_values) completions are sampled per prompt.
            correct_threshold: a verifier score at or above this counts as correct.
            output_dir: where best_of_n.csv (a row per N, with 95 % intervals), best_of_n_per_problem.csv,
                best_of_n.md and best_of_n.png are written.
        """
        super().__init__(*args, **kwargs)
        self.verifier, self.selector = verifier, selector
        self.n_values, self.correct_threshold, self.output_dir = sorted(n_values), correct_threshold, output_dir
        self.sampling = dataclasses.replace(self.generation, n=max(n_values))
        self._rows: list[tuple[torch.Tensor, torch.Tensor, list]] = []

    def test_step(self, batch: PromptBatch, batch_idx: int) -> None:
        n = self.sampling.n
        out = self.sample(batch.input_ids, batch.attention_mask, self.sampling, seed=batch_idx)
        scores = score_samples(self.verifier, batch.records, out.texts, n, batch.prompts)
        picks = scores if self.selector is None else score_samples(self.selector, batch.records, out.texts, n,
                                                                   batch.prompts)
        keys = [self.verifier.answer(t) for t in out.texts]
        self._rows.append(((scores >= self.correct_threshold).view(-1, n), picks.view(-1, n), [keys[i : i + n] for i in range(0, len(keys), n)]))

    def on_test_epoch_end(self) -> None:
        # Under DDP each rank holds only the prompts of its own shard (and a DistributedSampler may pad
        # the last batch with repeats): the figures, intervals and per-problem rows below are those of
        # the local rank, and only global rank 0 writes files. Gathering the ranks' rows is not done here;
        # run the evaluation on one device for figures over the whole held-out set.
        correct = torch.cat([r[0] for r in self._rows])
        selector = torch.cat([r[1] for r in self._rows])
        keys = [k for r in self._rows for k in r[2]]
        n_max = correct.size(1)
        counts = correct.sum(dim=1).tolist()
        num_prompts = len(counts)
        table, per_problem = [], {}
        for n in self.n_values:
            best_hits = [int(h) for h in best_of_n_hits(correct, selector, n).tolist()]
            majority = majority_hits(keys, correct, n)
            passes = [pass_at_k(n_max, int(c), n) for c in counts]
            row = {"n": n}  # each figure is the mean of its per-prompt vector, with a 95 % interval over prompts
            for key, estimate in (("best_of_n", proportion_estimate(sum(best_hits), num_prompts)),
                                  ("pass_at_n", mean_estimate(passes)),
                                  ("majority_at_n", proportion_estimate(sum(majority), num_prompts))):
                row |= {key: estimate.value, **estimate.bounds(key)}
            table.append(row)
            per_problem[n] = (best_hits, majority, passes)
            self.log_dict({f"test/{k}@{n}": float(v) for k, v in row.items() if k != "n"})
        self.results = table
        self.per_problem = _per_problem_rows(counts, per_problem)
        self._write(table, num_prompts)
        self._rows.clear()

    def _write(self, table: list[dict], num_prompts: int) -> None:
        if not self.trainer.is_global_zero:
            return
        out = Path(self.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "best_of_n.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
            writer.writeheader()
            writer.writerows(table)
        with open(out / "best_of_n_per_problem.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.per_problem[0]))
            writer.writeheader()
            writer.writerows(self.per_problem)

        lines = [f"Best-of-N on {num_prompts} prompts ({self.sampling.n} samples each); 95 % intervals over prompts "
                 "in brackets (Wilson for best-of-N and majority@N, percentile bootstrap for pass@N)", "",
                 "| N | best-of-N accuracy | pass@N | majority@N |", "|---|---|---|---|"]
        lines += [f"| {r['n']} | {with_interval(r, 'best_of_n')} | {with_interval(r, 'pass_at_n')} "
                  f"| {with_interval(r, 'majority_at_n')} |" for r in table]
        (out / "best_of_n.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            log.warning("matplotlib is not installed: no best_of_n.png (pip install matplotlib)")
            return
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ns = [r["n"] for r in table]
        for key, label in (("best_of_n", "best-of-N"), ("pass_at_n", "pass@N"), ("majority_at_n", "majority@N")):
            (line,) = ax.plot(ns, [r[key] for r in table], marker="o", label=label)
            ax.fill_between(ns, [r[f"{key}_low"] for r in table], [r[f"{key}_high"] for r in table],
                            color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("N (samples per prompt)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"shaded: 95 % intervals over {num_prompts} prompts", fontsize=9)
        ax.set_ylim(0, 1)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "best_of_n.png", dpi=120)
        plt.close(fig)


def _per_problem_rows(counts: list, per_problem: dict[int, tuple[list, list, list]]) -> list[dict]:
    """One row per prompt (in test order): its correct-sample count and, for each N, best-of-N and
    majority@N hits (0/1) and its pass@N estimate."""
    rows = []
    for p, c in enumerate(counts):
        row = {"problem": p, "correct_samples": int(c)}
        for n, (best_hits, majority, passes) in per_problem.items():
            row |= {f"best_of_{n}": best_hits[p], f"majority_at_{n}": majority[p], f"pass_at_{n}": passes[p]}
        rows.append(row)
    return rows
