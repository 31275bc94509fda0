"""``python tools/reproduce.py --profile paper-smoke``: every paper config runs, in the study's order, on stand-ins.

The command runs once for the module (about a minute on 2 cores); the tests read what it left behind.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lit_align.modeling import models
from study.plan import plan
from lit_align.rewards.model import RewardModelScorer

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = {p.name for p in (ROOT / "configs" / "paper").glob("*.yaml")}
HUB_NAMES = ("Qwen/Qwen2.5-0.5B", "microsoft/deberta-v3-large", "distilbert/distilbert-base-uncased",
             "OpenAssistant/reward-model-deberta-v3-large", "HuggingFaceH4/ultrafeedback_binarized",
             "HuggingFaceTB/smol-smoltalk", "Jiayi-Pan/Countdown-Tasks-3to4")
REWARD_MODELS = {"instruction_rm_deberta": "DebertaV2ForSequenceClassification",
                 "instruction_rm_distilbert": "DistilBertForSequenceClassification",
                 "instruction_rm_distilbert_regression": "DistilBertForSequenceClassification"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper_smoke")
    cmd = [sys.executable, "tools/reproduce.py", "--profile", "paper-smoke", "--out", str(out / "runs"),
           "--results", str(out / "results.md")]
    # One thread: tiny models gain nothing from more, and spin-waiting threads crawl on shared cores.
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return out / "runs", out / "results.md", plan("paper-smoke", str(out / "runs"))


def _config(runs: Path, stage: str) -> dict:
    return yaml.safe_load((runs / stage / "config.yaml").read_text())


def _init(runs: Path, stage: str) -> dict:
    return _config(runs, stage)["model"]["init_args"]


def _differs(export: Path, start: dict[str, torch.Tensor]) -> bool:
    trained = load_file(export / "model.safetensors")
    shared = set(trained) & set(start)
    assert shared, export
    return any(not torch.equal(trained[k], start[k]) for k in shared)


def test_every_paper_config_ran_as_a_stage_on_cpu_with_no_hub_name_left(run):
    runs, _, stages = run
    assert {Path(s.config).name for s in stages} == PAPER_CONFIGS
    for stage in stages:
        assert (runs / stage.name / "done.json").is_file(), stage.name
        text = (runs / stage.name / "config.yaml").read_text()
        assert not [name for name in HUB_NAMES if name in text], stage.name
        trainer = _config(runs, stage.name)["trainer"]
        assert (trainer["accelerator"], trainer["precision"], trainer["devices"]) == ("cpu", "32-true", 1), stage.name


def test_each_fit_stage_exported_a_folder_that_loads_and_holds_trained_weights(run):
    runs, _, stages = run
    qwen = load_file(models.tiny_qwen2_path("tiny:qwen2") / "model.safetensors")
    for stage in (s for s in stages if s.command == "fit"):
        export = runs / stage.name / "export"
        if stage.name in REWARD_MODELS:
            scorer = RewardModelScorer(str(export))
            assert type(scorer.model).__name__ == REWARD_MODELS[stage.name] and scorer.tokenizer.chat_template is None
            assert torch.isfinite(scorer.score(["Name a colour."], ["Blue."])).all()
            backbone = "tiny:deberta-v2" if "deberta" in stage.name else "tiny:distilbert"
            assert _differs(export, models.load_sequence_classifier(backbone).state_dict()), stage.name
        else:
            policy = models.load_causal_lm(str(export))
            assert type(policy).__name__ == "Qwen2ForCausalLM", stage.name
            assert (export / "tokenizer.json").is_file() and (export / "chat_template.jinja").is_file(), stage.name
            assert _differs(export, qwen), stage.name  # two steps at the paper's lr moved the weights
    tokenizer = models.load_tokenizer(str(runs / "instruction_sft" / "export"))  # 1-2 s per Qwen tokenizer: load one
    assert tokenizer.chat_template and tokenizer.eos_token == "<|endoftext|>"  # the base layout, as Qwen2.5-0.5B


def test_stages_read_the_exports_of_the_stages_before_them(run):
    runs, _, _ = run
    export = lambda stage: str(runs / stage / "export")
    assert _init(runs, "instruction_sft")["model"] == "tiny:qwen2"
    assert _init(runs, "instruction_rm_deberta")["model"] == "tiny:deberta-v2"
    assert _init(runs, "instruction_rm_distilbert_regression")["model"] == "tiny:distilbert"
    assert _init(runs, "instruction_dpo")["model"] == _init(runs, "instruction_dpo_lora")["model"] == export("instruction_sft")
    rloo_rm = _init(runs, "instruction_rloo_rm")
    assert rloo_rm["model"] == export("instruction_sft")
    assert rloo_rm["reward"]["init_args"]["model"] == export("instruction_rm_deberta")  # OpenAssistant's RM swapped
    assert _init(runs, "instruction_rloo_checker")["model"] == export("instruction_sft_lora")
    assert _init(runs, "instruction_eval_base")["model"] == "tiny:qwen2"
    for key in ("sft", "sft_lora", "dpo", "dpo_lora", "rloo_rm", "rloo_checker"):
        evaluation = _init(runs, f"instruction_eval_{key}")
        assert evaluation["model"] == export(f"instruction_{key}")
        assert evaluation["judge"]["init_args"]["model"] == export("instruction_rm_deberta")
        assert evaluation["reference_responses"] == str(runs / "instruction_eval_base" / "responses.jsonl")
    assert _init(runs, "countdown_rloo")["model"] == _init(runs, "countdown_best_of_n")["model"] == export("countdown_sft")
    problems = _config(runs, "countdown_rloo")["data"]["train"]["init_args"]["problems"]
    assert problems == {"class_path": "lit_align.data.sources.LocalFile",
                        "init_args": {"path": str(ROOT / "tests" / "fixtures" / "countdown_tasks_3to4_sample.jsonl")}}


def test_evaluations_and_verifier_checks_wrote_their_metrics(run):
    runs, _, _ = run
    base = json.loads((runs / "instruction_eval_base" / "metrics.json").read_text())
    assert base["num_prompts"] == 4 and "win_rate" not in base
    for key in ("sft", "sft_lora", "dpo", "dpo_lora", "rloo_rm", "rloo_checker"):
        metrics = json.loads((runs / f"instruction_eval_{key}" / "metrics.json").read_text())
        assert metrics["num_prompts"] == 4 and 0.0 <= metrics["win_rate"] <= 1.0, key
        assert metrics["reference_reward_mean"] == pytest.approx(base["reward_mean"], abs=1e-5)  # one judge throughout
    for stage in ("countdown_sft", "countdown_rloo"):
        checks = json.loads((runs / stage / "eval.json").read_text())
        assert set(checks) == {"before", "after"} and checks["after"]["num_completions"] == 2, stage
    with open(runs / "countdown_best_of_n" / "best_of_n.csv", newline="") as f:
        assert [int(row["n"]) for row in csv.DictReader(f)] == [1, 2]
    rloo = (runs / "countdown_rloo" / "logs").glob("version_*/metrics.csv")
    rows = list(csv.DictReader(open(next(rloo))))
    assert max(int(r["step"]) for r in rows if r.get("train/reward_mean")) >= 1  # both RLOO steps were logged


def test_the_results_section_is_written_for_the_profile(run):
    runs, results, stages = run
    text = results.read_text()
    assert text.count("<!-- reproduce:paper-smoke:begin -->") == text.count("<!-- reproduce:paper-smoke:end -->") == 1
    for stage in stages:
        if stage.name.startswith("instruction_eval_"):
            row = next(line for line in text.splitlines() if line.startswith(f"| {stage.label} |"))
            assert "–" not in row, row
    assert "SFT + more" not in text  # the study's Countdown track has no second SFT stage
    assert f"| {next(s for s in stages if s.name == 'countdown_rloo').label} |" in text
