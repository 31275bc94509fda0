"""The paper setups (configs/paper/) run their data path offline, and name the study's hub ids unchanged.

The hub cannot be reached in tests, so each preference setup runs one CPU step with a tiny model
and its hub dataset swapped for a local file of the same UltraFeedback schema.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lit_align.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "paper"
CPU = ROOT / "configs" / "trainer" / "cpu.yaml"
ULTRAFEEDBACK_SAMPLE = ROOT / "tests" / "fixtures" / "ultrafeedback_binarized_sample.jsonl"
ULTRAFEEDBACK = "HuggingFaceH4/ultrafeedback_binarized"

# The tiny stand-in for each method's hub model (the tokenizer is loaded from it in __init__).
TINY_MODEL = {"lit_align.methods.RewardModel": "tiny:classifier", "lit_align.methods.DPO": "tiny:causal-lm"}


def _method(config: Path) -> str:
    return yaml.safe_load(config.read_text())["model"]["class_path"]


PREFERENCE_CONFIGS = sorted(p for p in PAPER.glob("*.yaml") if _method(p) in TINY_MODEL)


def _id(path: Path) -> str:
    return path.name


def test_paper_preference_configs_exist():
    names = {p.name for p in PREFERENCE_CONFIGS}
    assert {
        "rm_deberta_ultrafeedback.yaml",
        "dpo_qwen2.5-0.5b_ultrafeedback.yaml",
        "dpo_qwen2.5-0.5b_ultrafeedback_lora.yaml",
    } <= names


@pytest.mark.parametrize("config", PREFERENCE_CONFIGS, ids=_id)
def test_paper_config_runs_one_step_on_local_ultrafeedback_schema(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # logs, exports and caches the config names land in tmp
    local = ["lit_align.data.sources.LocalFile", str(ULTRAFEEDBACK_SAMPLE)]
    cli = main([
        "fit", "--config", str(config), "--config", str(CPU),
        "--model.init_args.model", TINY_MODEL[_method(config)],
        "--trainer.fast_dev_run", "1", "--trainer.logger", "false",
        "--data.train", local[0], "--data.train.path", local[1],
        "--data.val", local[0], "--data.val.path", local[1],
        "--data.num_workers", "0",  # twelve records: worker processes would only add start-up time
    ])
    assert cli.trainer.global_step == 1
    assert cli.trainer.precision == "32-true"  # cpu.yaml replaced the paper's bf16-mixed
    assert {type(cli.datamodule.train_source).__name__, type(cli.datamodule.val_source).__name__} == {"LocalFile"}
    assert len(cli.datamodule.train_items) == len(ULTRAFEEDBACK_SAMPLE.read_text().splitlines())
    callbacks = yaml.safe_load(config.read_text())["trainer"].get("callbacks", [])
    for export in [c["init_args"]["dirpath"] for c in callbacks if c["class_path"] == "lit_align.callbacks.HFExport"]:
        assert (tmp_path / export / "config.json").is_file()  # the export ran, and landed in tmp_path


@pytest.mark.parametrize(
    "name, model",
    [
        ("rm_deberta_ultrafeedback.yaml", "microsoft/deberta-v3-large"),
        ("dpo_qwen2.5-0.5b_ultrafeedback.yaml", "Qwen/Qwen2.5-0.5B"),
        ("dpo_qwen2.5-0.5b_ultrafeedback_lora.yaml", "Qwen/Qwen2.5-0.5B"),
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
