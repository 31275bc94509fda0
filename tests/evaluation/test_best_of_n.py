import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lit_align.cli import main
from lit_align.evaluation.best_of_n import CSV_COLUMNS, BestOfN, best_of_n_hits, majority_hits, pass_at_k
from lit_align.evaluation.stats import bootstrap_interval, wilson_interval
from lit_align.tasks.countdown import CountdownVerifier

ROOT = Path(__file__).resolve().parents[2]


def test_pass_at_k_by_hand():
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
    # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 0, 5) == 0.0 and pass_at_k(5, 4, 2) == 1.0


def test_best_of_n_and_majority_hits_by_hand():
    correct = torch.tensor([[False, True, False, False], [True, False, False, False], [False, False, False, False]])
    selector = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.2, 0.9, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert best_of_n_hits(correct, selector, 1).tolist() == [False, True, False]  # only prompt 1's first is right
    assert best_of_n_hits(correct, selector, 2).tolist() == [True, False, False]  # 0 gains, 1's selector errs
    keys = [["a", "b", "b", None], ["x", "y", "y", "y"], [None, None, None, None]]
    assert majority_hits(keys, correct, 1) == [0, 1, 0]
    # n=3: prompt 0 votes b (its first "b", sample 1, is correct); prompt 1 votes y (sample 1, wrong)
    assert majority_hits(keys, correct, 3) == [1, 0, 0]
    assert majority_hits(keys, correct, 4) == [1, 0, 0]


def test_majority_votes_on_the_answers_the_verifier_reads():
    # the Countdown verifier's answers: "1+2" and "1 + 2" vote together, a completion without a tag does not vote
    texts = ["<answer>1+2</answer>", "<answer>(4)</answer>", "<answer> 1 + 2 </answer>", "no answer at all"]
    keys = [[CountdownVerifier().answer(t) for t in texts]]
    assert keys == [["1+2", "(4)", "1+2", None]]
    assert majority_hits(keys, torch.tensor([[False, True, False, True]]), 4) == [0]  # "1+2" wins, and it is wrong
    assert majority_hits(keys, torch.tensor([[True, False, True, False]]), 4) == [1]
    # a verifier that reads no answers (here the toy one below) gives no votes: majority@N is 0
    assert HasLetter().answer("<answer>1+2</answer>") is None


def test_best_of_n_runs_through_the_cli_and_accuracy_rises_with_n(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = main([
        "test", "--config", str(ROOT / "configs/eval/countdown_best_of_n.yaml"),
        "--model.init_args.model", "tiny:causal-lm",
        "--model.init_args.verifier", "test_best_of_n.HasLetter",
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
    for name in ("best_of_n.csv", "best_of_n.md", "best_of_n.png", "best_of_n_per_problem.csv"):
        assert (tmp_path / "outputs/best_of_n" / name).stat().st_size > 0
    # the intervals come from the same per-prompt vectors: Wilson on the hits, bootstrap on pass@N
    with open(tmp_path / "outputs/best_of_n/best_of_n.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == 4 and tuple(written[0]) == CSV_COLUMNS
    with open(tmp_path / "outputs/best_of_n/best_of_n_per_problem.csv", newline="") as f:
        per_problem = list(csv.DictReader(f))
    assert [int(r["correct_samples"]) for r in per_problem] == [sum(c) for c in correct]
    for row, line in zip(results, written):
        n = row["n"]
        hits = [int(any(c[:n])) for c in correct]
        passes = [1 - math.comb(8 - sum(c), n) / math.comb(8, n) for c in correct]
        assert [int(r[f"best_of_{n}"]) for r in per_problem] == hits
        assert (row["best_of_n_low"], row["best_of_n_high"]) == pytest.approx(wilson_interval(sum(hits), 12))
        assert (row["pass_at_n_low"], row["pass_at_n_high"]) == pytest.approx(bootstrap_interval(passes))
        assert float(line["best_of_n"]) == pytest.approx(row["best_of_n"]) and float(line["pass_at_n_high"]) == pytest.approx(row["pass_at_n_high"])


# Five prompts, four samples each. Selector ties go to the earliest sample; majority ties to the answer seen first.
CORRECT = torch.tensor([
    [False, True, False, False],  # c = 1
    [True, False, False, False],  # c = 1
    [False, False, False, False],  # c = 0
    [True, True, True, False],  # c = 3
    [False, True, True, True],  # c = 3
])
SELECTOR = torch.tensor([
    [0.0, 1.0, 0.0, 0.0],  # picks: N=1 sample 0 (wrong), N=2 and 4 sample 1 (right)
    [0.2, 0.9, 0.0, 0.0],  # N=1 sample 0 (right), N=2 and 4 sample 1 (wrong)
    [0.0, 0.0, 0.0, 0.0],  # nothing right
    [0.5, 0.5, 0.5, 0.9],  # N=1, 2 sample 0 (right), N=4 sample 3 (wrong)
    [0.1, 0.3, 0.8, 0.2],  # N=1 sample 0 (wrong), N=2 sample 1 (right), N=4 sample 2 (right)
])
KEYS = [
    ["a", "b", "b", None],  # N=1: a (wrong); N=2: a/b tie -> a (wrong); N=4: b, first at sample 1 (right)
    ["x", "y", "y", "y"],  # N=1, 2: x (right); N=4: y (wrong)
    [None, None, None, None],  # no votes: a miss
    ["7", "7", "8", None],  # 7 (right) throughout
    ["1", "2", "2", "2"],  # N=1: 1 (wrong); N=2: tie -> 1 (wrong); N=4: 2 (right)
]
BEST_HITS = {1: [0, 1, 0, 1, 0], 2: [1, 0, 0, 1, 1], 4: [1, 0, 0, 0, 1]}
MAJORITY_HITS = {1: [0, 1, 0, 1, 0], 2: [0, 1, 0, 1, 0], 4: [1, 0, 0, 1, 1]}
# pass@N = 1 - C(4 - c, N) / C(4, N) for c = 1, 1, 0, 3, 3
PASSES = {1: [0.25, 0.25, 0.0, 0.75, 0.75], 2: [0.5, 0.5, 0.0, 1.0, 1.0], 4: [1.0, 1.0, 0.0, 1.0, 1.0]}


def test_per_prompt_hits_by_hand():
    for n in (1, 2, 4):
        assert best_of_n_hits(CORRECT, SELECTOR, n).int().tolist() == BEST_HITS[n]
        assert majority_hits(KEYS, CORRECT, n) == MAJORITY_HITS[n]
        assert [pass_at_k(4, int(c), n) for c in CORRECT.sum(dim=1)] == pytest.approx(PASSES[n])


def test_epoch_end_reports_intervals_of_the_per_prompt_vectors_and_leaves_the_figures_alone(tmp_path, monkeypatch, capsys):
    module = BestOfN(model="tiny:causal-lm", verifier=HasLetter(), n_values=[4, 1, 2], output_dir=str(tmp_path))
    monkeypatch.setattr(module, "log_dict", lambda *args, **kwargs: None)
    module._trainer = SimpleNamespace(is_global_zero=True)
    # two test batches, as test_step leaves them: (correct, selector, answer keys) per batch of prompts
    module._rows = [(CORRECT[:2], SELECTOR[:2], KEYS[:2]), (CORRECT[2:], SELECTOR[2:], KEYS[2:])]
    module.on_test_epoch_end()

    assert [r["n"] for r in module.results] == [1, 2, 4]
    for row in module.results:
        n = row["n"]
        # each figure is the mean of its per-prompt hits
        assert row["best_of_n"] == pytest.approx(sum(BEST_HITS[n]) / 5)
        assert row["majority_at_n"] == pytest.approx(sum(MAJORITY_HITS[n]) / 5)
        assert row["pass_at_n"] == pytest.approx(sum(PASSES[n]) / 5)
        # and each interval is that of its own per-prompt vector
        assert (row["best_of_n_low"], row["best_of_n_high"]) == wilson_interval(sum(BEST_HITS[n]), 5)
        assert (row["majority_at_n_low"], row["majority_at_n_high"]) == wilson_interval(sum(MAJORITY_HITS[n]), 5)
        assert (row["pass_at_n_low"], row["pass_at_n_high"]) == pytest.approx(bootstrap_interval(PASSES[n]), abs=1e-12)
        for key in ("best_of_n", "pass_at_n", "majority_at_n"):
            assert row[f"{key}_low"] <= row[key] <= row[f"{key}_high"], (key, row)

    with open(tmp_path / "best_of_n.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == 3 and tuple(written[0]) == CSV_COLUMNS  # one row per N, as before
    for line, row in zip(written, module.results):
        assert {k: float(v) for k, v in line.items()} == pytest.approx({k: float(v) for k, v in row.items()})

    with open(tmp_path / "best_of_n_per_problem.csv", newline="") as f:
        per_problem = list(csv.DictReader(f))
    assert [int(r["problem"]) for r in per_problem] == [0, 1, 2, 3, 4]
    assert [int(r["correct_samples"]) for r in per_problem] == [1, 1, 0, 3, 3]
    for n in (1, 2, 4):
        assert [int(r[f"best_of_{n}"]) for r in per_problem] == BEST_HITS[n]
        assert [int(r[f"majority_at_{n}"]) for r in per_problem] == MAJORITY_HITS[n]
        assert [float(r[f"pass_at_{n}"]) for r in per_problem] == pytest.approx(PASSES[n])

    low, high = wilson_interval(3, 5)
    row_2 = f"| 2 | 0.600 [{low:.3f}, {high:.3f}] |"
    assert row_2 in (tmp_path / "best_of_n.md").read_text() and row_2 in capsys.readouterr().out
    assert (tmp_path / "best_of_n.png").stat().st_size > 0


from lit_align.rewards.base import Reward  # noqa: E402


class HasLetter(Reward):
    """A toy verifier for the tiny model: correct when the completion contains 'e'. Keeps what it scored."""

    def __init__(self):
        self.seen: list[str] = []

    def __call__(self, prompts, completions, records):
        self.seen += completions
        return torch.tensor([float("e" in c) for c in completions])
