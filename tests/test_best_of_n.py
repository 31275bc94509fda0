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
    assert all(math.isclose(r["best_of_n"], r["pass_at_n"], abs_tol=0.35) for r in results)
    for name in ("best_of_n.csv", "best_of_n.md", "best_of_n.png"):
        assert (tmp_path / "outputs/best_of_n" / name).stat().st_size > 0


from lit_align.rewards.base import Reward  # noqa: E402


class HasLetter(Reward):
    """A toy verifier for the tiny model: correct when the completion contains 'e'."""

    def __call__(self, prompts, completions, records):
        return torch.tensor([float("e" in c) for c in completions])
