"""The reproduction chain: the smoke profile runs every stage on tiny models; reruns skip; fit stages resume."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from lit_align.cli import main as cli_main
from lit_align.reproduce.plan import PROFILES, plan
from lit_align.reproduce.runner import merge, run

STAGES = [s.name for s in plan("smoke", "out")]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    stages = run("smoke", str(out / "runs"), str(out / "results.md"), checkpoint_every=1)
    return out, stages


def test_smoke_profile_runs_every_stage_of_both_tracks(smoke):
    out, stages = smoke
    assert [s.name for s in stages] == STAGES
    assert {"instruction_samples", "instruction_sft", "instruction_rm", "instruction_dpo", "instruction_rloo_rm",
            "instruction_rloo_checker", "countdown_sft", "countdown_sft_more", "countdown_rloo", "countdown_best_of_n"} <= set(STAGES)
    for stage in stages:
        folder = out / "runs" / stage.name
        assert (folder / "done.json").is_file() and (folder / "config.yaml").is_file(), stage.name
        if stage.command == "fit":
            assert (folder / "export" / "config.json").is_file(), stage.name
            assert (folder / "checkpoints" / "last.ckpt").is_file(), stage.name
            rows = list(csv.DictReader(open(next(folder.glob("logs/version_*/metrics.csv")))))
            assert any(r.get("train/loss") for r in rows), stage.name


def test_smoke_stages_chain_their_inputs_and_outputs(smoke):
    out, _ = smoke
    runs = out / "runs"
    config = lambda name: yaml.safe_load((runs / name / "config.yaml").read_text())
    assert config("instruction_dpo")["model"]["init_args"]["model"] == str(runs / "instruction_sft" / "export")
    assert config("instruction_rloo_rm")["model"]["init_args"]["reward"]["init_args"]["model"] == str(runs / "instruction_rm" / "export")
    assert config("instruction_sft")["data"]["train"]["init_args"]["path"] == str(runs / "instruction_samples" / "sft.jsonl")
    assert config("countdown_rloo")["model"]["init_args"]["model"] == str(runs / "countdown_sft_more" / "export")
    assert config("countdown_sft_more")["trainer"]["max_steps"] == PROFILES["smoke"].cd_more_steps
    evaluation = config("instruction_eval_dpo")["model"]["init_args"]
    assert evaluation["reference_responses"] == str(runs / "instruction_eval_base" / "responses.jsonl")


def test_smoke_evaluations_write_their_metrics(smoke):
    out, _ = smoke
    runs = out / "runs"
    base = json.loads((runs / "instruction_eval_base" / "metrics.json").read_text())
    assert base["num_prompts"] == PROFILES["smoke"].if_eval_prompts and "win_rate" not in base
    for name in ("sft", "dpo", "rloo_rm", "rloo_checker"):
        m = json.loads((runs / f"instruction_eval_{name}" / "metrics.json").read_text())
        assert 0.0 <= m["win_rate"] <= 1.0 and 0.0 <= m["adherence_prompt_level"] <= m["adherence_instruction_level"] <= 1.0
        assert m["reference_reward_mean"] == pytest.approx(base["reward_mean"], abs=1e-5)  # the same base answers, re-judged
    for name in ("countdown_sft", "countdown_sft_more", "countdown_rloo"):
        assert set(json.loads((runs / name / "eval.json").read_text())) == {"before", "after"}
    assert len((runs / "countdown_best_of_n" / "best_of_n.csv").read_text().splitlines()) == 1 + len(PROFILES["smoke"].bon_n)
    counts = json.loads((runs / "instruction_samples" / "pairs.counts.json").read_text())
    assert counts["prompts"] == PROFILES["smoke"].if_prompts and counts["completions"] == 4 * counts["prompts"]


def test_smoke_results_file_has_a_filled_table_row_per_stage(smoke):
    out, stages = smoke
    text = (out / "results.md").read_text()
    assert text.count("<!-- reproduce:smoke:begin -->") == 1
    for stage in stages:
        if stage.name.startswith("instruction_eval_"):
            row = next(line for line in text.splitlines() if line.startswith(f"| {stage.label} |"))
            assert "–" not in row, row  # every cell was measured
    assert (out / "reproduce_smoke_curves.png").is_file() and (out / "reproduce_smoke_best_of_n.png").is_file()


def test_rerun_skips_finished_stages_and_a_fit_stage_resumes_from_its_checkpoint(smoke, capsys):
    out, _ = smoke
    runs = out / "runs"
    before = (runs / "countdown_sft" / "eval.json").read_text()
    (runs / "countdown_sft" / "done.json").unlink()
    capsys.readouterr()
    run("smoke", str(runs), str(out / "results.md"), checkpoint_every=1)
    printed = capsys.readouterr().out
    assert printed.count("done already") == len(STAGES) - 1
    assert f"resuming from {runs / 'countdown_sft' / 'checkpoints' / 'last.ckpt'}" in printed
    # the before-training figure came back from the checkpoint instead of being re-measured on trained weights
    assert json.loads((runs / "countdown_sft" / "eval.json").read_text())["before"] == json.loads(before)["before"]
    assert (out / "results.md").read_text().count("<!-- reproduce:smoke:begin -->") == 1


def test_paper_profile_writes_parseable_configs_for_every_stage(tmp_path, capsys):
    stages = run("paper", str(tmp_path), None, dry_run=True)
    assert "instruction_samples" not in [s.name for s in stages]  # the paper's data are public datasets
    for stage in stages:
        config = tmp_path / stage.name / "config.yaml"
        with pytest.raises(SystemExit) as done:
            cli_main([stage.command, "--config", str(config), "--print_config"])
        assert done.value.code in (None, 0), stage.name
        parsed = yaml.safe_load(capsys.readouterr().out)
        assert parsed["trainer"]["accelerator"] == "gpu", stage.name
    sft = yaml.safe_load((tmp_path / "countdown_sft" / "config.yaml").read_text())
    assert sft["model"]["init_args"]["model"] == "Qwen/Qwen2.5-0.5B"


def test_merge_replaces_lists_and_merges_dicts():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert merge(base, {"a": {"c": [3]}, "e": 2}) == {"a": {"b": 1, "c": [3]}, "d": 1, "e": 2}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}  # not modified in place


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown profile 'laptop'"):
        plan("laptop", "out")
