"""The paper setups (configs/paper/) run their data path offline, and name the study's hub ids unchanged.

The hub cannot be reached in tests, so each setup runs one CPU step with a tiny model and its hub
dataset swapped for a local file of the same schema (UltraFeedback for the preference setups,
smol-smoltalk for SFT); the Countdown warm-start generates its data and needs no swap.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lit_align.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "paper"
CPU = ROOT / "configs" / "trainer" / "cpu.yaml"
FIXTURES = ROOT / "tests" / "fixtures"
ULTRAFEEDBACK_SAMPLE = FIXTURES / "ultrafeedback_binarized_sample.jsonl"
SMOLTALK_SAMPLE = FIXTURES / "smol_smoltalk_sample.jsonl"
ULTRAFEEDBACK = "HuggingFaceH4/ultrafeedback_binarized"
SMOLTALK = "HuggingFaceTB/smol-smoltalk"
QWEN = "Qwen/Qwen2.5-0.5B"
DISTILBERT = "distilbert/distilbert-base-uncased"
WARMSTART = PAPER / "sft_qwen2.5-0.5b_countdown_warmstart.yaml"
LOCAL_FILE = "lit_align.data.sources.LocalFile"
HFEXPORT = "lit_align.lightning.callbacks.HFExport"

# The tiny stand-in for each method's hub model (the tokenizer is loaded from it in __init__).
TINY_MODEL = {"lit_align.methods.RewardModel": "tiny:classifier", "lit_align.methods.DPO": "tiny:causal-lm"}


def _load(config: Path) -> dict:
    return yaml.safe_load(config.read_text())


def _method(config: Path) -> str:
    return _load(config)["model"]["class_path"]


def _train_dataset(config: Path) -> str | None:
    return (_load(config)["data"].get("train") or {}).get("init_args", {}).get("name")


def _exports(config: dict) -> list[str]:
    callbacks = config["trainer"].get("callbacks", [])
    return [c["init_args"]["dirpath"] for c in callbacks if c["class_path"] == HFEXPORT]


def _verifier_eval(config: dict) -> dict:
    """The init_args of a config's VerifierEval callback (a reference: edits change ``config``)."""
    return next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("VerifierEval"))["init_args"]


ALL_CONFIGS = sorted(PAPER.glob("*.yaml"))
PREFERENCE_CONFIGS = [p for p in ALL_CONFIGS if _method(p) in TINY_MODEL]
SMOLTALK_CONFIGS = [p for p in ALL_CONFIGS if _train_dataset(p) == SMOLTALK]


def _id(path: Path) -> str:
    return path.name


def _fit_one_step(config: Path, model: str, *overrides: str):
    """One fast_dev_run step on CPU in float32, with a tiny model and no logger."""
    return main([
        "fit", "--config", str(config), "--config", str(CPU),
        "--model.init_args.model", model,
        "--trainer.fast_dev_run", "1", "--trainer.logger", "false",
        "--data.num_workers", "0",  # a handful of records: worker processes would only add start-up time
        *overrides,
    ])


def _assert_ran_on_cpu_and_exported(cli, config: dict, tmp_path: Path) -> None:
    assert cli.trainer.global_step == 1
    assert cli.trainer.precision == "32-true"  # cpu.yaml replaced the paper's bf16-mixed
    for export in _exports(config):
        assert (tmp_path / export / "config.json").is_file()  # the export ran, and landed in tmp_path


def _swap_in(sample: Path) -> list[str]:
    """CLI arguments that read both train and val records from a local file."""
    return [
        "--data.train", LOCAL_FILE, "--data.train.path", str(sample),
        "--data.val", LOCAL_FILE, "--data.val.path", str(sample),
    ]


def test_paper_configs_exist():
    assert {p.name for p in PREFERENCE_CONFIGS} >= {
        "rm_deberta_ultrafeedback.yaml",
        "rm_distilbert_ultrafeedback.yaml",
        "rm_distilbert_ultrafeedback_regression.yaml",
        "dpo_qwen2.5-0.5b_ultrafeedback.yaml",
        "dpo_qwen2.5-0.5b_ultrafeedback_lora.yaml",
    }
    smoltalk = {"sft_qwen2.5-0.5b_smoltalk.yaml", "sft_qwen2.5-0.5b_smoltalk_lora.yaml"}
    assert {p.name for p in SMOLTALK_CONFIGS} == smoltalk
    assert WARMSTART.is_file()


@pytest.mark.parametrize("config", PREFERENCE_CONFIGS, ids=_id)
def test_paper_config_runs_one_step_on_local_ultrafeedback_schema(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # logs, exports and caches the config names land in tmp
    cli = _fit_one_step(config, TINY_MODEL[_method(config)], *_swap_in(ULTRAFEEDBACK_SAMPLE))
    _assert_ran_on_cpu_and_exported(cli, _load(config), tmp_path)
    assert {type(cli.datamodule.train_source).__name__, type(cli.datamodule.val_source).__name__} == {"LocalFile"}
    assert len(cli.datamodule.train_items) == len(ULTRAFEEDBACK_SAMPLE.read_text().splitlines())


@pytest.mark.parametrize("config", SMOLTALK_CONFIGS, ids=_id)
def test_paper_sft_config_runs_one_step_on_local_smoltalk_schema(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = _fit_one_step(config, "tiny:causal-lm", *_swap_in(SMOLTALK_SAMPLE))
    _assert_ran_on_cpu_and_exported(cli, _load(config), tmp_path)
    assert {type(cli.datamodule.train_source).__name__, type(cli.datamodule.val_source).__name__} == {"LocalFile"}
    # every record (system turns and multi-turn chats included) was tokenized, none dropped
    assert len(cli.datamodule.train_items) == len(SMOLTALK_SAMPLE.read_text().splitlines())
    assert all(item.num_loss_tokens > 0 for item in cli.datamodule.train_items)


def test_countdown_warmstart_runs_one_step_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _load(WARMSTART)
    # Fewer and shorter held-out generations: the check is that the before/after evaluation runs.
    evaluation = _verifier_eval(config)
    evaluation["num_prompts"] = 2
    evaluation["generation"]["max_new_tokens"] = 8
    evaluation["source"]["init_args"]["num_problems"] = 2
    small = tmp_path / WARMSTART.name
    small.write_text(yaml.safe_dump(config))
    cli = _fit_one_step(
        small, "tiny:causal-lm", "--data.train.init_args.num_problems", "16", "--data.val.init_args.num_problems", "4"
    )
    _assert_ran_on_cpu_and_exported(cli, config, tmp_path)
    assert len(cli.datamodule.train_items) == 16
    results = json.loads((tmp_path / evaluation["output"]).read_text())
    assert set(results) == {"before", "after"}
    assert all(r["num_completions"] == 2 for r in results.values())


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=_id)
def test_paper_config_targets_one_bf16_gpu_and_exports_under_its_name(config):
    parsed = _load(config)
    assert parsed["trainer"]["accelerator"] == "gpu"
    assert parsed["trainer"]["devices"] == 1
    assert parsed["trainer"]["precision"] == "bf16-mixed"
    if config.stem.startswith("eval_"):  # evaluations export nothing; they write into their own folder
        assert _exports(parsed) == []
        assert parsed["model"]["init_args"]["output_dir"] == f"outputs/paper/{config.stem}"
    else:
        assert _exports(parsed) == [f"outputs/paper/{config.stem}/export"]


@pytest.mark.parametrize(
    "name, model",
    [
        ("rm_deberta_ultrafeedback.yaml", "microsoft/deberta-v3-large"),
        ("rm_distilbert_ultrafeedback.yaml", DISTILBERT),
        ("rm_distilbert_ultrafeedback_regression.yaml", DISTILBERT),
        ("dpo_qwen2.5-0.5b_ultrafeedback.yaml", QWEN),
        ("dpo_qwen2.5-0.5b_ultrafeedback_lora.yaml", QWEN),
    ],
)
def test_paper_configs_name_the_study_hub_ids(name, model):
    config = yaml.safe_load((PAPER / name).read_text())
    assert config["model"]["init_args"]["model"] == model
    for split, expected in (("train", "train_prefs"), ("val", "test_prefs")):
        source = config["data"][split]
        assert source["class_path"] == "lit_align.data.sources.HubDataset"
        assert source["init_args"] == {"name": ULTRAFEEDBACK, "split": expected}
    assert config["trainer"]["accelerator"] == "gpu"
    assert config["trainer"]["precision"] == "bf16-mixed"


@pytest.mark.parametrize(
    "name, loss",
    [
        ("rm_distilbert_ultrafeedback.yaml", "BradleyTerry"),
        ("rm_distilbert_ultrafeedback_regression.yaml", "ScoreRegression"),
    ],
)
def test_distilbert_reward_models_use_their_losses(name, loss):
    assert _load(PAPER / name)["model"]["init_args"]["loss"]["class_path"] == f"lit_align.methods.reward.{loss}"


@pytest.mark.parametrize("config", SMOLTALK_CONFIGS, ids=_id)
def test_smoltalk_sft_configs_name_the_study_hub_ids(config):
    parsed = _load(config)
    assert parsed["model"]["class_path"] == "lit_align.methods.SFT"
    assert parsed["model"]["init_args"]["model"] == QWEN
    for split, expected in (("train", "train"), ("val", "test")):
        source = parsed["data"][split]
        assert source["class_path"] == "lit_align.data.sources.HubDataset"
        assert source["init_args"] == {"name": SMOLTALK, "split": expected}
    assert parsed["data"]["max_length"] == 1024
    assert parsed["data"]["batch_size"] * parsed["trainer"]["accumulate_grad_batches"] == 32
    assert parsed["trainer"]["gradient_clip_val"] == 1.0


def test_smoltalk_lora_config_uses_r8_alpha32():
    init = _load(PAPER / "sft_qwen2.5-0.5b_smoltalk_lora.yaml")["model"]["init_args"]
    assert init["lora"]["r"] == 8
    assert init["lora"]["alpha"] == 32
    assert "lora" not in _load(PAPER / "sft_qwen2.5-0.5b_smoltalk.yaml")["model"]["init_args"]  # full fine-tuning


def test_countdown_warmstart_trains_qwen_on_generated_traces():
    parsed = _load(WARMSTART)
    assert parsed["model"]["class_path"] == "lit_align.methods.SFT"
    assert parsed["model"]["init_args"]["model"] == QWEN
    train = parsed["data"]["train"]
    assert train["class_path"] == "lit_align.tasks.countdown.CountdownSource"
    assert train["init_args"]["with_traces"] is True
    assert train["init_args"]["num_problems"] >= 10_000
    assert (train["init_args"]["min_numbers"], train["init_args"]["max_numbers"]) == (3, 4)
    held_out = _verifier_eval(parsed)["source"]["init_args"]
    assert held_out["with_traces"] is False
    assert held_out["seed"] not in (train["init_args"]["seed"], parsed["data"]["val"]["init_args"]["seed"])


def test_countdown_rloo_starts_from_the_warmstart_export():
    rloo = _load(PAPER / "rloo_qwen2.5-0.5b_countdown.yaml")
    assert [rloo["model"]["init_args"]["model"]] == _exports(_load(WARMSTART))


def test_countdown_rloo_turns_the_hub_problems_into_prompts():
    """The hub records are bare ``{target, nums}``; read directly they would have no prompt."""
    train = _load(PAPER / "rloo_qwen2.5-0.5b_countdown.yaml")["data"]["train"]
    assert train["class_path"] == "lit_align.tasks.countdown.CountdownSource"
    assert train["init_args"]["with_traces"] is False
    problems = train["init_args"]["problems"]
    assert problems["class_path"] == "lit_align.data.sources.HubDataset"
    assert problems["init_args"] == {"name": "Jiayi-Pan/Countdown-Tasks-3to4", "split": "train"}
