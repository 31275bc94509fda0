"""The study's results tables carry intervals and paired comparisons against the base model."""

import csv
import json
import re

import pytest

from lit_align.evaluation.stats import holm, compare, wilson_interval
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
    assert rloo_row.endswith("+0.000 [0.000, 0.000], paired bootstrap p=1.000, Holm p=1.000: inconclusive | +0.000 [0.000, 0.000], "
                             "McNemar exact p=1.000, Holm p=1.000: inconclusive |")


def test_verdict_needs_both_the_interval_and_the_test():
    alone = lambda c: verdict(c, holm([c.p_value])[0])  # noqa: E731  a lone comparison: Holm's p is the raw one
    assert alone(compare([0] * 10, [1] * 10)) == "better"
    assert alone(compare([1] * 10, [0] * 10)) == "worse"
    # 4 gained, 0 lost: the interval excludes 0 but McNemar's p = 0.125: not enough
    assert alone(compare([0] * 10, [1] * 4 + [0] * 6)) == "inconclusive"


def test_verdict_words_rest_on_the_adjusted_p_never_on_the_raw_one(tmp_path):
    """A raw p below 0.05 whose Holm-adjusted p is above it gets no verdict word: in ``verdict`` itself, which
    has no default for the adjusted p and refuses one below the raw p, and in the per-stage Countdown table."""
    c = compare([0] * 20, [1] * 6 + [0] * 14)  # 6 gained, none lost: McNemar p = 2 × 0.5**6 = 0.03125
    assert c.p_value == pytest.approx(0.03125) and c.low > 0
    assert verdict(c, 0.0625) == "inconclusive"  # the raw p alone would say "better"
    with pytest.raises(TypeError):
        verdict(c)  # noqa: the adjusted p is required
    with pytest.raises(ValueError, match="below the comparison's raw p"):
        verdict(c, 0.01)
    # two stages each gain 6 of 20: accuracy p = 0.031 each, Holm over the table's 4 comparisons = 0.062
    base = ([0.0] * 20, [0.0] * 20)
    gained = ([1.0] * 6 + [0.0] * 14, [1.0] * 6 + [0.0] * 14)
    _eval(tmp_path / "countdown_sft", base, gained)
    _after_only(tmp_path / "countdown_sft_more", *gained)
    lines = _countdown_table([_stage("countdown_sft"), _stage("countdown_sft_more")], tmp_path)
    for row in lines[3:]:
        score, accuracy = [cell.strip() for cell in row.strip("|").split("|")][3:]
        assert accuracy.endswith("McNemar exact p=0.031, Holm p=0.062: inconclusive"), row
        raw, adjusted = map(float, re.findall(r"p=([0-9.]+)", score))
        assert score.endswith(": better") and adjusted < 0.05 and adjusted >= raw


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
        "ifeval_prompt_level_strict": 0.5, "ifeval_prompt_level_strict_low": 0.3, "ifeval_prompt_level_strict_high": 0.7,
        "ifeval_instruction_level_strict": 0.6, "ifeval_prompt_level_loose": 0.55, "ifeval_instruction_level_loose": 0.65,
        "reward_mean": 1.5, "mean_tokens": 40}))
    row = _instruction_table([_stage("instruction_eval_base", "test", "base")], tmp_path)[2]
    assert row == "| base | 0.500 [0.300, 0.700] | 0.600 | 0.550 | 0.650 | 0.500 | 1.500 | 40 |"


@pytest.mark.parametrize("missing", ["problem_scores", "problem_correct"])
def test_a_stage_without_per_problem_figures_gets_no_comparison(tmp_path, missing):
    _eval(tmp_path / "countdown_sft", ([0.0] * 4, [0.0] * 4), ([1.0] * 4, [1.0] * 4))
    data = json.loads((tmp_path / "countdown_sft" / "eval.json").read_text())
    del data["after"][missing]
    (tmp_path / "countdown_sft" / "eval.json").write_text(json.dumps(data))
    row = _countdown_table([_stage("countdown_sft", label="SFT")], tmp_path)[3]
    assert row.count("| – |") == 1


# ----------------------------------------------------------------------------- the claims table

def _after_only(folder, scores, correct):
    folder.mkdir(parents=True)
    entry = {"score": sum(scores) / len(scores), "accuracy": sum(correct) / len(correct), "num_problems": len(scores),
             "num_completions": len(scores), "problem_scores": scores, "problem_correct": correct}
    (folder / "eval.json").write_text(json.dumps({"after": entry}))


def _best_of_n(folder, hits: dict, temperature: float):
    folder.mkdir(parents=True)
    n_max = max(hits)
    with open(folder / "best_of_n_per_problem.csv", "w", newline="") as f:
        fields = ["problem", "correct_samples"] + [f"{k}_{n}" for n in hits for k in ("best_of", "majority_at", "pass_at")]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for p in range(len(hits[n_max])):
            writer.writerow({"problem": p, "correct_samples": hits[n_max][p]}
                            | {f"{k}_{n}": hits[n][p] for n in hits for k in ("best_of", "majority_at", "pass_at")})
    (folder / "config.yaml").write_text(f"model:\n  init_args:\n    generation:\n      temperature: {temperature}\n")


def _val(folder, best, passes, n=4):
    folder.mkdir(parents=True)
    (folder / "best_of_n.csv").write_text(f"n,best_of_n,pass_at_n\n1,0.0,0.0\n{n},{best},{passes}\n")


def _responses(folder, ok, wins=None):
    folder.mkdir(parents=True)
    rows = [{"prompt_ok": bool(o)} | ({"win": w} if wins is not None else {}) for o, w in zip(ok, wins or ok)]
    (folder / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _val_stage(t):
    return Stage(f"countdown_best_of_n_val_t{t:g}", "test", "configs/x.yaml", "val",
                 {"model": {"init_args": {"generation": {"temperature": t}}}})


@pytest.fixture
def study(tmp_path):
    """A study whose outcomes are known: the largest SFT gains 8 of 20 problems (the smallest 1),
    best-of-4 reaches 10 of 20 (less than twice the largest SFT's greedy 8), RLOO changes nothing, GRPO loses 4,
    SFT wins every prompt, DPO loses every one."""
    zeros, n = [0.0] * 20, 20
    _eval(tmp_path / "countdown_sft", (zeros, zeros), ([1.0] * 1 + [0.1] * 19, [1.0] * 1 + [0.0] * 19))
    _after_only(tmp_path / "countdown_sft_more", [1.0] * 1 + [0.1] * 19, [1.0] * 1 + [0.0] * 19)
    largest = ([1.0] * 8 + [0.1] * 12, [1.0] * 8 + [0.0] * 12)
    _after_only(tmp_path / "countdown_sft_most", *largest)
    _after_only(tmp_path / "countdown_sft_full", [1.0] * 1 + [0.1] * 19, [1.0] * 1 + [0.0] * 19)
    _after_only(tmp_path / "countdown_rloo", *largest)
    _after_only(tmp_path / "countdown_grpo", [1.0] * 4 + [0.1] * 16, [1.0] * 4 + [0.0] * 16)  # 4 of the largest SFT's 8 lost
    greedy = [1] * 2 + [0] * 18
    _best_of_n(tmp_path / "countdown_best_of_n", {1: greedy, 4: [1] * 10 + [0] * 10}, 1.0)
    _val(tmp_path / "countdown_best_of_n_val_t0.7", 0.2, 0.3)
    _val(tmp_path / "countdown_best_of_n_val_t1", 0.4, 0.35)
    _responses(tmp_path / "instruction_eval_base", [0] * n)
    _responses(tmp_path / "instruction_eval_sft", [1] * 10 + [0] * 10, [1.0] * n)
    _responses(tmp_path / "instruction_eval_dpo", [0] * n, [0.0] * n)
    _responses(tmp_path / "instruction_eval_rloo_rm", [1] * 10 + [0] * 10, [0.5] * n)
    _responses(tmp_path / "instruction_eval_rloo_checker", [1] * 10 + [0] * 10, [1.0, 0.0] * 10)
    stages = [_stage("countdown_sft", label="SFT, LoRA, 80 synthetic traces"),
              _stage("countdown_sft_more", label="SFT, LoRA, 240 synthetic traces"),
              _stage("countdown_sft_most", label="SFT, LoRA, 560 synthetic traces"),
              _stage("countdown_sft_full"), _stage("countdown_rloo"), _stage("countdown_grpo"), _val_stage(0.7), _val_stage(1.0)]
    return stages, tmp_path


def _row(lines, start):
    return next(line for line in lines if line.startswith(f"| {start}"))


def _p_values(row: str) -> tuple[float, float]:
    """(raw p, Holm-adjusted p) of a claims-table row."""
    cells = [c.strip() for c in row.strip("|").split("|")]
    return float(re.search(r"p=([0-9.]+) \(n=", cells[2]).group(1)), float(cells[3])


def _family(row: str) -> str:
    return "instruction" if ("IFEval" in row or "win rate" in row) else "countdown"


def test_claims_table_gives_each_claim_its_paired_test_holm_p_and_verdict(study):
    from study.report import claims_table

    lines = claims_table(*study)
    assert lines[0].endswith("| Holm p | verdict |")
    rows = lines[2:]
    assert len(rows) == 25 and not any("not run" in line for line in rows)
    sft = _row(lines, "SFT on synthetic traces beats the base model (Countdown accuracy)")
    assert "McNemar exact p=0.008 (n=20)" in sft  # 8 gained, 0 lost: 2 × 0.5**8
    low, high = wilson_interval(8, 20)
    assert f"→ SFT (SFT, LoRA, 560 synthetic traces) 0.400 [{low:.3f}, {high:.3f}]" in sft
    more = _row(lines, "more synthetic traces with more optimiser steps beat fewer (Countdown accuracy")
    assert "80 synthetic traces: 0.050" in more and "560 synthetic traces: 0.400" in more
    assert "+0.350" in more and "McNemar exact p=0.016 (n=20)" in more  # 7 gained: 2 × 0.5**7
    assert _row(lines, "RLOO with the verifier beats its SFT start (Countdown accuracy)").endswith(
        "+0.000 [0.000, 0.000], McNemar exact p=1.000 (n=20) | 1.000 | inconclusive |")
    # GRPO against its start and against RLOO: 4 lost, none gained: 2 × 0.5**4 = 0.125, GRPO − RLOO = −0.2
    grpo = _row(lines, "GRPO with the verifier beats its SFT start (Countdown accuracy)")
    assert "SFT start 0.400" in grpo and "→ GRPO 0.200" in grpo and "-0.200" in grpo and "McNemar exact p=0.125 (n=20)" in grpo
    versus = _row(lines, "RLOO against GRPO, same start, batches and steps (Countdown accuracy; GRPO − RLOO)")
    assert "RLOO 0.400 [" in versus and "→ GRPO 0.200" in versus and "McNemar exact p=0.125 (n=20)" in versus
    assert versus.endswith("| no difference resolved |")
    # Holm within each family: 14 Countdown claims, 11 instruction claims; the printed adjusted p is Holm's
    # of the printed raw ones (to their rounding), and the verdict is taken on it
    for family, size in (("countdown", 14), ("instruction", 11)):
        members = [r for r in rows if _family(r) == family]
        assert len(members) == size
        raw = [_p_values(r)[0] for r in members]
        for r, expected in zip(members, holm(raw)):
            assert _p_values(r)[1] == pytest.approx(expected, abs=0.0005 * size + 0.0005), r  # raw p printed to 3 places
    # the correction changes verdicts: p = 0.008 and 0.016 alone would reproduce; among 14 claims they do not
    vote = _row(lines, "majority vote over N samples, no verifier, beats greedy SFT accuracy (N = 4)")
    assert "greedy SFT 0.400" in vote and "majority@4 0.500" in vote  # the fixture's majority hits: 10 of 20
    assert _p_values(sft)[1] > 0.05 and sft.endswith("| inconclusive |")
    assert _p_values(more)[1] > 0.05 and more.endswith("| inconclusive |")


def test_best_of_n_claim_tests_against_twice_greedy_with_the_validation_temperature(study):
    from study.report import claims_table

    row = _row(claims_table(*study), "best-of-N with a perfect verifier (so, pass@N) at least doubles")
    # best-of-4 10/20 against greedy (the largest SFT's greedy 8/20): 0.5 − 2 × 0.4 = −0.3
    expected = compare([2.0] * 8 + [0.0] * 12, [1] * 10 + [0] * 10, test="bootstrap")
    assert f"{expected.diff:+.3f} [{expected.low:.3f}, {expected.high:.3f}]" in row and expected.diff == pytest.approx(-0.3)
    assert "temperature 1 chosen on validation problems" in row and "N=1: 0.100, N=4: 0.500" in row
    assert not row.endswith("| reproduced |")


def test_instruction_claims_pair_prompts_and_test_win_rate_against_a_half(study):
    from study.report import claims_table

    lines = claims_table(*study)
    sft = _row(lines, "SFT beats the base model in IFEval prompt-level")  # 10 gained: 2 × 0.5**10, times 11 at most
    assert "McNemar exact p=0.002 (n=20)" in sft and _p_values(sft)[1] < 0.05 and sft.endswith("| reproduced |")
    assert _row(lines, "SFT beats the base model in win rate").endswith("| reproduced |")
    assert "+0.500 [0.500, 0.500]" in _row(lines, "SFT beats the base model in win rate")
    assert _row(lines, "DPO beats the base model in win rate").endswith("| not reproduced (the opposite holds) |")
    assert _row(lines, "RLOO (RM reward) beats the base model in win rate").endswith("| inconclusive |")  # every prompt a tie
    assert _row(lines, "DPO beats its SFT start in IFEval prompt-level").endswith("| not reproduced (the opposite holds) |")


def test_lora_against_full_names_the_better_one(study):
    from study.report import claims_table

    row = _row(claims_table(*study), "LoRA against full fine-tuning, SFT on Countdown (same traces; accuracy")
    assert "LoRA 0.050" in row and "full 0.050" in row and row.endswith("| no difference resolved |")


def test_a_tied_temperature_is_called_the_tie_break_rules_not_a_choice_on_the_data(study):
    from study.report import claims_table, temperature_choice

    stages, out = study
    assert temperature_choice(stages, out)["tied"] is False
    for folder in ("countdown_best_of_n_val_t0.7", "countdown_best_of_n_val_t1"):
        (out / folder / "best_of_n.csv").write_text("n,best_of_n,pass_at_n\n1,0.0,0.0\n4,0.25,0.25\n")
    (out / "countdown_best_of_n" / "config.yaml").write_text("model:\n  init_args:\n    generation:\n      temperature: 0.7\n")
    assert temperature_choice(stages, out)["tied"] is True
    row = _row(claims_table(stages, out), "best-of-N with a perfect verifier (so, pass@N) at least doubles")
    assert "temperature 0.7 by the tie-break rule (the validation problems tied)" in row and "chosen on" not in row


def test_temperature_is_chosen_by_best_of_n_then_pass_then_the_lower_one(tmp_path):
    from study.plan import choose_temperature

    _val(tmp_path / "a", 0.3, 0.5)
    _val(tmp_path / "b", 0.4, 0.1)
    assert choose_temperature({0.7: tmp_path / "a", 1.0: tmp_path / "b"})[0] == 1.0
    _val(tmp_path / "c", 0.4, 0.2)
    assert choose_temperature({0.7: tmp_path / "c", 1.0: tmp_path / "b"})[0] == 0.7  # tie on best-of-N: pass@N
    assert choose_temperature({0.7: tmp_path / "b", 1.0: tmp_path / "b"})[0] == 0.7  # full tie: the lower one
    with pytest.raises(FileNotFoundError, match="temperature 1.2 has not run"):
        choose_temperature({1.2: tmp_path / "missing"})


def test_split_by_prompt_deals_records_in_turn_and_refuses_too_few(tmp_path):
    from study.runner import split_by_prompt

    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps({"prompt": i}) + "\n" for i in range(5)))
    assert split_by_prompt(source, tmp_path, ["a.jsonl", "b.jsonl"]) == {"a.jsonl": 3, "b.jsonl": 2}
    assert [json.loads(line)["prompt"] for line in (tmp_path / "b.jsonl").read_text().splitlines()] == [1, 3]
    source.write_text(json.dumps({"prompt": 0}) + "\n")
    with pytest.raises(ValueError, match="1 records: too few"):
        split_by_prompt(source, tmp_path, ["a.jsonl", "b.jsonl"])
    with pytest.raises(FileNotFoundError, match="gone.jsonl is missing"):
        split_by_prompt(tmp_path / "gone.jsonl", tmp_path, ["a.jsonl"])


# ----------------------------------------------------------------------------- the copy of a stage's outcomes

def test_the_copy_of_a_stages_logs_is_the_run_the_report_reads(tmp_path):
    """A stage folder with several runs: the newest is the largest version *number* (version_10, not
    version_9 by string order, nor version_1, nor the folder touched last); the report reads it and the
    copy holds it alone, an older copy in the data folder removed."""
    import os

    from study.report import collect, metric_rows, newest_log

    stage = tmp_path / "out" / "countdown_grpo"
    for i, version in enumerate((0, 1, 9, 10)):
        log = stage / "logs" / f"version_{version}"
        log.mkdir(parents=True)
        (log / "metrics.csv").write_text(f"step,train/reward_mean\n0,{version}\n")
        os.utime(log / "metrics.csv", (1_000_000 - i, 1_000_000 - i))  # version_0 written last: mtime misleads
    (stage / "done.json").write_text("{}")
    stale = tmp_path / "data" / "countdown_grpo" / "logs" / "version_11"  # a copy from an earlier run's folder
    stale.mkdir(parents=True)
    (stale / "metrics.csv").write_text("step,train/reward_mean\n0,11\n")

    assert newest_log(stage) == stage / "logs" / "version_10" / "metrics.csv"
    assert metric_rows(stage) == [{"step": "0", "train/reward_mean": "10"}]
    copied = collect([_stage("countdown_grpo")], tmp_path / "out", tmp_path / "data")
    data = tmp_path / "data" / "countdown_grpo"
    assert sorted(p.relative_to(data).as_posix() for p in copied) == ["done.json", "logs/version_10/metrics.csv"]
    assert [p.name for p in (data / "logs").iterdir()] == ["version_10"]
    assert metric_rows(data) == metric_rows(stage)
    # a stage whose run left no log keeps the copy it has
    collect([_stage("countdown_grpo")], tmp_path / "elsewhere", tmp_path / "data")
    assert (data / "logs" / "version_10" / "metrics.csv").is_file()


def test_the_committed_embedded_block_rebuilds_byte_for_byte_from_docs_study_data(tmp_path):
    """docs/results.md's embedded block is what the report builder writes from docs/study_data/embedded: a
    wording changed in the builder, or an outcome file changed, shows here until the block is rebuilt with
    ``python tools/reproduce.py --profile embedded --report-only --out docs/study_data/embedded``."""
    from pathlib import Path

    from study.runner import run

    root = Path(__file__).resolve().parents[1]
    begin, end = "<!-- reproduce:embedded:begin -->", "<!-- reproduce:embedded:end -->"
    block = lambda text: text[text.index(begin):text.index(end)]  # noqa: E731
    rebuilt = tmp_path / "results.md"
    run("embedded", str(root / "docs" / "study_data" / "embedded"), str(rebuilt), report_only=True)
    assert block(rebuilt.read_text()) == block((root / "docs" / "results.md").read_text())
