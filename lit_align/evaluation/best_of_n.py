"""Best-of-N sampling against a verifier, with pass@k and majority vote, through ``lit_align test``.

For each held-out prompt the policy samples ``max(n_values)`` completions once; every N in
``n_values`` then looks at the first N of them:

- best-of-N accuracy: the completion the selector scores highest (ties: the earliest) is correct;
- pass@N: unbiased estimate 1 - C(n-c, N) / C(n, N) from all n samples with c correct (Chen et al., 2021);
- majority@N: the most frequent answer among the first N (ties: the one seen first) is correct.

"Correct" means a verifier score of at least ``correct_threshold`` (1.0 for Countdown). The selector
is the verifier itself (an oracle, as in the study's external-verifier setup) or any other reward
source such as a reward model. Majority vote compares the text inside the last <answer> tag with
whitespace removed; completions without one do not vote.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import re
from collections import Counter
from pathlib import Path

import torch

from lit_align.data.collate import PromptBatch
from lit_align.data.kinds import PromptKind
from lit_align.methods.base import PolicyModule
from lit_align.rewards.base import Reward, score_samples

log = logging.getLogger(__name__)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct.

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 4), pass_at_k(4, 0, 2), round(pass_at_k(4, 2, 2), 4)
    (0.25, 1.0, 0.0, 0.8333)
    """
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def best_of_n(correct: torch.Tensor, selector: torch.Tensor, n: int) -> float:
    """Share of prompts whose selector-best completion among the first n is correct. Shapes (P, N).

    >>> best_of_n(torch.tensor([[0, 1], [1, 0]]).bool(), torch.tensor([[0.1, 0.9], [0.5, 0.5]]), 2)
    1.0
    """
    pick = selector[:, :n].argmax(dim=1)  # argmax returns the first maximum, so ties go to the earliest
    return correct[torch.arange(correct.size(0)), pick].float().mean().item()


def answer_key(completion: str) -> str | None:
    found = _ANSWER.findall(completion)
    return re.sub(r"\s+", "", found[-1]) if found else None


def majority_at_n(keys: list[list[str | None]], correct: torch.Tensor, n: int) -> float:
    """Share of prompts whose most frequent answer among the first n samples is correct."""
    hits = 0
    for p, row in enumerate(keys):
        votes = Counter(k for k in row[:n] if k is not None)
        if votes:
            top = max(votes.values())
            winner = next(k for k in row[:n] if k is not None and votes[k] == top)
            hits += bool(correct[p, row.index(winner)])
    return hits / max(1, len(keys))


class BestOfN(PolicyModule):
    """Evaluate a policy by best-of-N, pass@k and majority vote (``python -m lit_align test``)."""

    batch_kind = PromptKind()

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
            output_dir: where best_of_n.csv, best_of_n.md and best_of_n.png are written.
        """
        super().__init__(*args, **kwargs)
        self.verifier, self.selector = verifier, selector
        self.n_values, self.correct_threshold, self.output_dir = sorted(n_values), correct_threshold, output_dir
        self.sampling = dataclasses.replace(self.generation, n=max(n_values))
        self._rows: list[tuple[torch.Tensor, torch.Tensor, list]] = []

    def test_step(self, batch: PromptBatch, batch_idx: int) -> None:
        n = self.sampling.n
        out = self.rollout.sample(self.policy, self.tokenizer, batch.input_ids, batch.attention_mask, self.sampling,
                                  seed=batch_idx)
        scores = score_samples(self.verifier, batch.records, out.texts, n)[0]
        picks = scores if self.selector is None else score_samples(self.selector, batch.records, out.texts, n)[0]
        keys = [answer_key(t) for t in out.texts]
        self._rows.append(((scores >= self.correct_threshold).view(-1, n), picks.view(-1, n), [keys[i : i + n] for i in range(0, len(keys), n)]))

    def on_test_epoch_end(self) -> None:
        correct = torch.cat([r[0] for r in self._rows])
        selector = torch.cat([r[1] for r in self._rows])
        keys = [k for r in self._rows for k in r[2]]
        n_max = correct.size(1)
        table = []
        for n in self.n_values:
            counts = correct.sum(dim=1).tolist()
            row = {
                "n": n,
                "best_of_n": best_of_n(correct, selector, n),
                "pass_at_n": sum(pass_at_k(n_max, int(c), n) for c in counts) / len(counts),
                "majority_at_n": majority_at_n(keys, correct, n),
            }
            table.append(row)
            self.log_dict({f"test/{k}@{n}": float(v) for k, v in row.items() if k != "n"})
        self.results = table
        self._write(table, correct.size(0))
        self._rows.clear()

    def _write(self, table: list[dict], num_prompts: int) -> None:
        if not self.trainer.is_global_zero:
            return
        out = Path(self.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "best_of_n.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
        lines = [f"Best-of-N on {num_prompts} prompts ({self.sampling.n} samples each)", "",
                 "| N | best-of-N accuracy | pass@N | majority@N |", "|---|---|---|---|"]
        lines += [f"| {r['n']} | {r['best_of_n']:.3f} | {r['pass_at_n']:.3f} | {r['majority_at_n']:.3f} |" for r in table]
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
            ax.plot(ns, [r[key] for r in table], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("N (samples per prompt)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "best_of_n.png", dpi=120)
        plt.close(fig)
