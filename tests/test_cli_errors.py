"""Mistakes in a user's data or config reach them as one message naming file, line and field: no
traceback unless LIT_ALIGN_TRACEBACK is set, and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lit_align.cli import TRACEBACK_ENV, run
from lit_align.data.sources import DataError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "sft" / "local_chat_lora.yaml"
GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _args(path: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(CONFIG), "--model.init_args.model", "tiny:causal-lm", "--trainer.logger", "false",
            "--trainer.callbacks", "[]", "--trainer.max_steps", "1", "--data.train.init_args.path", str(path), *extra]


def _error(capsys, monkeypatch, tmp_path, args: list[str]) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run(args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("lit_align: error: ")
    return err


def test_undecodable_file_names_file_line_and_column(tmp_path, capsys, monkeypatch):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"prompt": "café"}'.encode("latin-1") + b"\n")
    err = _error(capsys, monkeypatch, tmp_path, _args(path))
    assert f"{path}:line 2: not UTF-8 text (byte b'\\xe9' at column 16)" in err


def test_empty_file_names_the_file(tmp_path, capsys, monkeypatch):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    assert f"{path}: holds no records" in _error(capsys, monkeypatch, tmp_path, _args(path))


def test_missing_file_names_the_file(tmp_path, capsys, monkeypatch):
    path = tmp_path / "nowhere.jsonl"
    assert f"{path}: no such file" in _error(capsys, monkeypatch, tmp_path, _args(path))


def test_malformed_record_names_file_line_and_field(tmp_path, capsys, monkeypatch):
    path = tmp_path / "chat.jsonl"
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]}
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(bad) + "\n")
    err = _error(capsys, monkeypatch, tmp_path, _args(path))
    assert f"{path}:line 2: field 'messages[1].role' has unknown role 'robot'" in err


def test_records_all_filtered_out_names_the_source(tmp_path, capsys, monkeypatch):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps(GOOD) + "\n")
    err = _error(capsys, monkeypatch, tmp_path, _args(path, "--data.max_length", "4", "--data.truncation", "drop",
                                                      "--data.val_fraction", "0"))
    assert f"{path}: no training records left" in err


def test_traceback_on_request_and_from_python(tmp_path, monkeypatch):
    path = tmp_path / "nowhere.jsonl"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(DataError, match="no such file"):
        run(_args(path))


def test_the_real_command_line_prints_one_message(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    done = subprocess.run([sys.executable, "-m", "lit_align", *_args(path)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"lit_align: error: {path}: holds no records" in done.stderr
