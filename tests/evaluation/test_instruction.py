"""Instruction-following evaluation: win rate maths, reference answers, and a run on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from lit_align.cli import main
from lit_align.data.sources import DataError
from lit_align.evaluation.instruction import read_responses, win_rate
from lit_align.tasks.constraints import adherence


def test_win_rate_counts_ties_as_half():
    # wins: 1, tie: 0.5, loss: 0, win: 1 -> 2.5 / 4
    assert win_rate(torch.tensor([2.0, 1.0, 0.0, 3.0]), torch.tensor([1.0, 1.0, 5.0, 0.0])) == 0.625
    assert win_rate(torch.zeros(3), torch.zeros(3)) == 0.5
    with pytest.raises(ValueError, match="equal, non-empty"):
        win_rate(torch.zeros(2), torch.zeros(3))


def test_reference_responses_file_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "responses.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n')
    with pytest.raises(DataError, match=r"responses.jsonl:line 2: missing field 'response'"):
        read_responses(str(path))
    with pytest.raises(DataError, match="no such file"):
        read_responses(str(tmp_path / "missing.jsonl"))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the CLI saves its config.yaml in the working folder when there is no logger


def _evaluate(tmp_path, name: str, *extra: str):
    return main([
        "test", "--model", "lit_align.evaluation.instruction.InstructionEval",
        "--model.model", "tiny:causal-lm", "--model.judge", "lit_align.rewards.model.RewardModelScorer",
        "--model.judge.model", "tiny:classifier", "--model.generation.max_new_tokens", "8",
        "--model.generation.temperature", "0.0", "--model.output_dir", str(tmp_path / name),
        "--data.val", "lit_align.tasks.constraints.ConstraintSource", "--data.val.num_prompts", "6",
        "--data.val.seed", "3", "--data.val_batch_size", "4", "--trainer.logger", "false",
        "--trainer.accelerator", "cpu", *extra,
    ])


def test_policy_against_itself_ties_everywhere_and_adherence_matches_the_checkers(tmp_path):
    cli = _evaluate(tmp_path, "self", "--model.reference_model", "tiny:causal-lm")
    metrics = json.loads((tmp_path / "self" / "metrics.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "self" / "responses.jsonl").read_text().splitlines()]
    assert metrics["num_prompts"] == len(rows) == 6
    assert all(r["response"] == r["reference"] for r in rows)  # same weights, greedy: the same answers
    assert metrics["win_rate"] == 0.5 and metrics["reward_mean"] == pytest.approx(metrics["reference_reward_mean"])
    records = [r for _, r in cli.datamodule.val_source.records()]
    expected = adherence([r["response"] for r in rows], records)
    assert metrics["adherence_prompt_level"] == expected["prompt_level"]
    assert metrics["adherence_instruction_level"] == expected["instruction_level"]
    assert [len(r["checks"]) for r in rows] == [len(rec["constraints"]) for rec in records]


def test_reference_responses_are_reused_and_must_answer_the_same_prompts(tmp_path):
    _evaluate(tmp_path, "base")
    base = json.loads((tmp_path / "base" / "metrics.json").read_text())
    assert "win_rate" not in base
    _evaluate(tmp_path, "again", "--model.reference_responses", str(tmp_path / "base" / "responses.jsonl"))
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["win_rate"] == 0.5 and again["reference_reward_mean"] == pytest.approx(base["reward_mean"])
    with pytest.raises(DataError, match="answers a different prompt"):
        _evaluate(tmp_path, "other", "--model.reference_responses", str(tmp_path / "base" / "responses.jsonl"),
                  "--data.val.seed", "4")
