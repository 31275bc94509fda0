import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lit_align.cli import main

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
TINY = ["--config", str(QUICKSTART), "--model.init_args.model", "tiny:causal-lm", "--trainer.logger", "false",
        "--data.limit", "8", "--data.val.init_args.num_problems", "4"]


# the test split: held-out problems of another seed than the quickstart's train and val problems
TEST_SPLIT = ["--data.test", "lit_align.tasks.countdown.CountdownSource", "--data.test.num_problems", "3",
              "--data.test.seed", "7"]


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_validate_and_test_report_loss(subcommand, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = main([subcommand, *TINY, *TEST_SPLIT, "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"])
    key = "val/loss" if subcommand == "validate" else "test/loss"
    assert cli.trainer.callback_metrics[key] > 0
    if subcommand == "test":
        assert len(cli.datamodule.test_items) == 3 and cli.datamodule.val_items == []  # its own split, nothing else


def test_test_without_a_test_split_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="no test split: set data.test"):
        main(["test", *TINY])


def test_predict_writes_completions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main([
        "predict", *TINY, "--trainer.callbacks+=lit_align.lightning.callbacks.JsonlPredictionWriter",
        "--trainer.callbacks.path", "preds.jsonl", "--model.init_args.generation", '{"max_new_tokens": 4, "n": 2}',
    ])
    rows = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert len(rows) == 8  # 4 prompts x 2 samples
    assert {"record", "completion"} <= set(rows[0]) and "nums" in rows[0]["record"]


def test_help_describes_every_method_argument(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--model.help", "lit_align.methods.SFT"])
    out = capsys.readouterr().out
    for arg, words in [("--model.lora", "LoRA adapters"), ("--model.dtype", "weight dtype"),
                       ("--model.gradient_checkpointing", "recompute"), ("--model.trust_remote_code", "remote")]:
        assert arg in out and words in out, arg


def test_console_script_is_the_same_entry_point():
    exe = shutil.which("lit-align")
    if exe is None:
        pytest.skip("package not installed with its console script (pip install -e .)")
    out = subprocess.run([exe, "fit", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--trainer.strategy" in out.stdout
