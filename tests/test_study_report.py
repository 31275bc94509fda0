"""The study's results tables carry intervals and paired comparisons against the base model."""

import csv
import json

import pytest

from lit_align.evaluation.stats import compare, wilson_interval
from study.plan import Stage
from study.report import _best_of_n_table, _countdown_table, _instruction_table, verdict


def _stage(name, command="fit", label=None):
    return Stage(name=name, command=command, config="configs/x.yaml", label=label or name)


def _eval(folder, before, after):
    folder.mkdir(parents=True)
    entry = lambda scores, correct: {  # noqa: E731
        "score": sum(scores) / len(scores), "accuracy": sum(correct) / len(correct), "num_problems": len(scores),
        "num_completions": len(scores), "score_interval": [0.01, 0.02], "accuracy_interval": list(wilson_interval(sum(correct), len(correct))),
        "problem_scores": scores, "problem_correct": correct}
    (folder / "eval.json").write_text(json.dumps({"before": entry(*before), "after": entry(*after)}))


def test_countdown_rows_carry_intervals_and_a_paired_verdict_against_the_base(tmp_path):
    base = ([0.0] * 20, [0.0] * 20)
    sft = ([1.0] * 8 + [0.1] * 12, [1.0] * 8 + [0.0] * 12)  # 8 of 20 gained, none lost
    _eval(tmp_path / "countdown_sft", base, sft)
    _eval(tmp_path / "countdown_rloo", sft, ([0.0] * 20, [0.0] * 20))  # its after: back to nothing
    lines = _countdown_table([_stage("countdown_sft", label="SFT"), _stage("countdown_rloo", label="RLOO")], tmp_path)
    base_row, sft_row, rloo_row = lines[2:]
    assert base_row.startswith("| base model | 0.000 [0.010, 0.020] | 0.000 [0.000, ")
    low, high = wilson_interval(8, 20)
    assert f"| 0.400 [{low:.3f}, {high:.3f}] |" in sft_row
    expected = compare(base[0], sft[0], test="bootstrap")
    assert f"{expected.diff:+.3f} [{expected.low:.3f}, {expected.high:.3f}]" in sft_row
    assert sft_row.count(": better") == 2  # score (paired bootstrap) and accuracy (McNemar: 8 against 0)
    assert "McNemar exact p=0.008" in sft_row  # 2 * 0.5**8 = 0.0078125
    assert rloo_row.endswith("+0.000 [0.000, 0.000], paired bootstrap p=1.000: inconclusive | +0.000 [0.000, 0.000], "
                             "McNemar exact p=1.000: inconclusive |")


def test_verdict_needs_both_the_interval_and_the_test():
    assert verdict(compare([0] * 10, [1] * 10)) == "better"
    assert verdict(compare([1] * 10, [0] * 10)) == "worse"
    # 4 gained, 0 lost: the interval excludes 0 but McNemar's p = 0.125: not enough
    assert verdict(compare([0] * 10, [1] * 4 + [0] * 6)) == "inconclusive"


def test_best_of_n_and_instruction_tables_show_the_intervals(tmp_path):
    folder = tmp_path / "countdown_best_of_n"
    folder.mkdir()
    with open(folder / "best_of_n.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["n", "best_of_n", "best_of_n_low", "best_of_n_high", "pass_at_n",
                                               "pass_at_n_low", "pass_at_n_high", "majority_at_n", "majority_at_n_low",
                                               "majority_at_n_high"])
        writer.writeheader()
        writer.writerow({"n": 4, "best_of_n": 0.25, "best_of_n_low": 0.1, "best_of_n_high": 0.5, "pass_at_n": 0.3,
                         "pass_at_n_low": 0.2, "pass_at_n_high": 0.4, "majority_at_n": 0.05,
                         "majority_at_n_low": 0.0, "majority_at_n_high": 0.2})
    assert _best_of_n_table(tmp_path)[2] == "| 4 | 0.250 [0.100, 0.500] | 0.300 [0.200, 0.400] | 0.050 [0.000, 0.200] |"
    (tmp_path / "instruction_eval_base").mkdir()
    (tmp_path / "instruction_eval_base" / "metrics.json").write_text(json.dumps({
        "adherence_prompt_level": 0.5, "adherence_prompt_level_low": 0.3, "adherence_prompt_level_high": 0.7,
        "adherence_instruction_level": 0.6, "reward_mean": 1.5, "mean_tokens": 40}))
    row = _instruction_table([_stage("instruction_eval_base", "test", "base")], tmp_path)[2]
    assert row == "| base | 0.500 [0.300, 0.700] | 0.600 | 0.500 | 1.500 | 40 |"


@pytest.mark.parametrize("missing", ["problem_scores", "problem_correct"])
def test_a_stage_without_per_problem_figures_gets_no_comparison(tmp_path, missing):
    _eval(tmp_path / "countdown_sft", ([0.0] * 4, [0.0] * 4), ([1.0] * 4, [1.0] * 4))
    data = json.loads((tmp_path / "countdown_sft" / "eval.json").read_text())
    del data["after"][missing]
    (tmp_path / "countdown_sft" / "eval.json").write_text(json.dumps(data))
    row = _countdown_table([_stage("countdown_sft", label="SFT")], tmp_path)[3]
    assert row.count("| – |") == 1
