import math
from pathlib import Path

import pytest
import torch

from lit_align.cli import main
from lit_align.evaluation.best_of_n import (
    answer_key,
    best_of_n,
    majority_at_n,
    pass_at_k,
)

ROOT = Path(__file__).resolve().parents[1]


def test_pass_at_k_by_hand():
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
    # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 0, 5) == 0.0 and pass_at_k(5, 4, 2) == 1.0


def test_best_of_n_and_majority_by_hand():
    correct = torch.tensor([[False, True, False, False], [True, False, False, False], [False, False, False, False]])
    selector = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.2, 0.9, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert best_of_n(correct, selector, 1) == pytest.approx(1 / 3)  # only prompt 2's first sample is right
    assert best_of_n(correct, selector, 2) == pytest.approx(1 / 3)  # prompt 1 gains, prompt 2's selector errs
    keys = [["a", "b", "b", None], ["x", "y", "y", "y"], [None, None, None, None]]
    assert majority_at_n(keys, correct, 1) == pytest.approx(1 / 3)
    # n=3: prompt 0 votes b (its first "b", sample 1, is correct); prompt 1 votes y (sample 1, wrong)
    assert majority_at_n(keys, correct, 3) == pytest.approx(1 / 3)
    assert majority_at_n(keys, correct, 4) == pytest.approx(1 / 3)
    assert answer_key("<answer> 1 + 2 </answer> then <answer>(3)*4</answer>") == "(3)*4" and answer_key("none") is None


def test_best_of_n_runs_through_the_cli_and_accuracy_rises_with_n(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = main([
        "test", "--config", str(ROOT / "configs/eval/countdown_best_of_n.yaml"),
        "--model.init_args.model", "tiny:causal-lm",
        "--model.init_args.verifier", "tests.test_best_of_n.HasLetter",
        "--model.init_args.generation", '{"max_new_tokens": 4, "temperature": 1.0}',
        "--model.init_args.n_values", "[1, 2, 4, 8]", "--data.limit", "12",
    ])
    results = cli.model.results
    accuracy = [r["best_of_n"] for r in results]
    assert accuracy == sorted(accuracy) and accuracy[-1] > accuracy[0]
    # Recompute every row from the completions the verifier saw (12 prompts x 8 samples, a prompt's
    # samples adjacent). With the verifier as selector, best-of-N is the share of prompts with a correct
    # completion among their first N; pass@N averages 1 - C(8 - c, N) / C(8, N) over prompts with c
    # correct of 8. Both are exact ratios; 1e-6 covers the float32 mean.
    seen = cli.model.verifier.seen
    assert len(seen) == 12 * 8
    correct = [[("e" in text) for text in seen[i : i + 8]] for i in range(0, len(seen), 8)]
    assert [r["n"] for r in results] == [1, 2, 4, 8]
    for row in results:
        n = row["n"]
        best = sum(any(c[:n]) for c in correct) / 12
        passed = sum(1 - math.comb(8 - sum(c), n) / math.comb(8, n) for c in correct) / 12
        assert row["best_of_n"] == pytest.approx(best, abs=1e-6), row
        assert row["pass_at_n"] == pytest.approx(passed, abs=1e-6), row
    assert results[-1]["best_of_n"] == pytest.approx(results[-1]["pass_at_n"], abs=1e-6)  # N = all samples
    assert 0 < sum(map(sum, correct)) < 12 * 8  # the toy verifier splits the samples
    for name in ("best_of_n.csv", "best_of_n.md", "best_of_n.png"):
        assert (tmp_path / "outputs/best_of_n" / name).stat().st_size > 0


from lit_align.rewards.base import Reward  # noqa: E402


class HasLetter(Reward):
    """A toy verifier for the tiny model: correct when the completion contains 'e'. Keeps what it scored."""

    def __init__(self):
        self.seen: list[str] = []

    def __call__(self, prompts, completions, records):
        self.seen += completions
        return torch.tensor([float("e" in c) for c in completions])
