"""Instruction-following evaluation: win rate maths, reference answers, and a run on the tiny model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from lit_align.cli import main
from lit_align.data.sources import DataError
from lit_align.evaluation.instruction import InstructionEval, read_responses, win_outcomes
from lit_align.evaluation.stats import bootstrap_interval, wilson_interval
from lit_align.rewards.base import Reward
from lit_align.sampling.generate import SamplingParams
from lit_align.tasks.constraints import FOUR, adherence


def test_win_outcomes_count_ties_as_half():
    # wins: 1, tie: 0.5, loss: 0, win: 1 -> a win rate of 2.5 / 4
    wins = win_outcomes(torch.tensor([2.0, 1.0, 0.0, 3.0]), torch.tensor([1.0, 1.0, 5.0, 0.0]))
    assert wins.tolist() == [1, 0.5, 0, 1] and float(wins.mean()) == 0.625
    assert win_outcomes(torch.zeros(3), torch.zeros(3)).tolist() == [0.5] * 3
    with pytest.raises(ValueError, match="equal, non-empty"):
        win_outcomes(torch.zeros(2), torch.zeros(3))


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
        "--data.test", "lit_align.tasks.constraints.ConstraintSource", "--data.test.num_prompts", "6",
        "--data.test.seed", "3", "--data.val_batch_size", "4", "--trainer.logger", "false",
        "--trainer.accelerator", "cpu", *extra,
    ])


def test_policy_against_itself_ties_everywhere_and_the_four_numbers_match_the_reference(tmp_path):
    cli = _evaluate(tmp_path, "self", "--model.reference_model", "tiny:causal-lm")
    metrics = json.loads((tmp_path / "self" / "metrics.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "self" / "responses.jsonl").read_text().splitlines()]
    assert metrics["num_prompts"] == len(rows) == 6
    assert all(r["response"] == r["reference"] for r in rows)  # same weights, greedy: the same answers
    assert metrics["win_rate"] == 0.5 and metrics["reward_mean"] == pytest.approx(metrics["reference_reward_mean"])
    records = [r for _, r in cli.datamodule.test_source.records()]
    expected = adherence([r["response"] for r in rows], records)
    for key in FOUR:
        assert metrics[f"ifeval_{key}"] == expected[key]
        assert metrics[f"ifeval_{key}_low"] <= metrics[f"ifeval_{key}"] <= metrics[f"ifeval_{key}_high"], key
    assert [len(r["strict"]) for r in rows] == [len(rec["instruction_id_list"]) for rec in records]
    assert [r["prompt_ok"] for r in rows] == [all(r["strict"]) for r in rows] and {r["win"] for r in rows} == {0.5}
    for key in ("win_rate", "reward_mean", "reference_reward_mean"):
        assert metrics[f"{key}_low"] <= metrics[key] <= metrics[f"{key}_high"], key
    low, high = wilson_interval(sum(r["prompt_ok"] for r in rows), 6)
    assert (metrics["ifeval_prompt_level_strict_low"], metrics["ifeval_prompt_level_strict_high"]) == pytest.approx((low, high))


def test_reference_responses_are_reused_and_must_answer_the_same_prompts(tmp_path):
    _evaluate(tmp_path, "base")
    base = json.loads((tmp_path / "base" / "metrics.json").read_text())
    assert "win_rate" not in base
    _evaluate(tmp_path, "again", "--model.reference_responses", str(tmp_path / "base" / "responses.jsonl"))
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["win_rate"] == 0.5 and again["reference_reward_mean"] == pytest.approx(base["reward_mean"])
    with pytest.raises(DataError, match="answers a different prompt"):
        _evaluate(tmp_path, "other", "--model.reference_responses", str(tmp_path / "base" / "responses.jsonl"),
                  "--data.test.seed", "4")


class WordCountJudge(Reward):
    """A toy judge: the number of words of a response."""

    def __call__(self, prompts, completions, records):
        return torch.tensor([float(len(c.split())) for c in completions])


# Five prompts with hand-checked outcomes; the judge counts words, so wins and ties are known too.
LOWER, NO_COMMA = ("change_case:english_lowercase", {}), ("punctuation:no_comma", {})
HAND_MADE = [  # (IFEval instructions, response, reference)
    ([LOWER, NO_COMMA], "hello there", "x"),  # 2 of 2 met; 2 words vs 1: win
    ([("keywords:existence", {"keywords": ["cat"]})], "a dog", "a b"),  # 0 of 1; 2 vs 2: tie
    ([NO_COMMA, ("detectable_format:number_bullet_lists", {"num_bullets": 2})], "* a, b\n* c", "one two three four five six"),  # 1 of 2; 5 vs 6: loss
    ([LOWER], "Upper", "z"),  # 0 of 1; 1 vs 1: tie
    # 3 of 3 (IFEval's lowercase check also asks langdetect for English, which "a dog" alone is not); 8 vs 1: win
    ([NO_COMMA, LOWER, ("keywords:existence", {"keywords": ["dog"]})], "my dog likes to run in the park", "q"),
]
PROMPT_OK = [True, False, False, False, True]
SHARES, LOOSE_SHARES, SIZES = [1.0, 0.0, 0.5, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0, 1.0], [2, 1, 2, 1, 3]
WINS = [1.0, 0.5, 0.0, 0.5, 1.0]
REWARDS, REFERENCE_REWARDS = [2.0, 2.0, 5.0, 1.0, 8.0], [1.0, 2.0, 6.0, 1.0, 1.0]


def test_epoch_end_reports_intervals_of_the_per_prompt_values_and_leaves_the_figures_alone(tmp_path, monkeypatch, capsys):
    module = InstructionEval(model="tiny:causal-lm", judge=WordCountJudge(), output_dir=str(tmp_path / "hand"))
    monkeypatch.setattr(module, "log_dict", lambda *args, **kwargs: None)
    module._trainer = SimpleNamespace(is_global_zero=True)
    records = [{"prompt": f"prompt {i}", "instruction_id_list": [k for k, _ in c], "kwargs": [a for _, a in c]}
               for i, (c, _, _) in enumerate(HAND_MADE)]
    module._rows = [{"prompt": f"prompt {i}", "response": response, "tokens": 3, "reference": reference, "record": record}
                    for i, ((_, response, reference), record) in enumerate(zip(HAND_MADE, records))]
    module.on_test_epoch_end()
    metrics = json.loads((tmp_path / "hand" / "metrics.json").read_text())

    # the figures: from adherence(), the per-prompt win outcomes and the mean of the judge's scores
    expected = adherence([r for _, r, _ in HAND_MADE], records)
    # loose: the third response without its first line has no comma, and with it two bullets: both met
    for mode, prompts, instructions in (("strict", 2 / 5, 6 / 9), ("loose", 3 / 5, 7 / 9)):
        assert metrics[f"ifeval_prompt_level_{mode}"] == expected[f"prompt_level_{mode}"] == pytest.approx(prompts)
        assert metrics[f"ifeval_instruction_level_{mode}"] == expected[f"instruction_level_{mode}"] == pytest.approx(instructions)
    assert metrics["win_rate"] == sum(WINS) / 5 == pytest.approx(0.6)
    assert metrics["reward_mean"] == pytest.approx(3.6) and metrics["reference_reward_mean"] == pytest.approx(2.2)
    figures = {"num_prompts", "mean_tokens", "mean_words", "reward_mean", "reference_reward_mean", "win_rate",
               *(f"ifeval_{k}" for k in expected if k != "judgements")}
    bounds = {*(f"ifeval_{k}" for k in FOUR), "win_rate", "reward_mean", "reference_reward_mean"}
    assert set(metrics) == figures | {f"{k}_{end}" for k in bounds for end in ("low", "high")}

    # the intervals: Wilson for prompt level, the bootstrap over prompts (weighted by constraints) for the rest
    def interval(key):
        return metrics[f"{key}_low"], metrics[f"{key}_high"]

    for mode, hits, shares in (("strict", 2, SHARES), ("loose", 3, LOOSE_SHARES)):
        assert interval(f"ifeval_prompt_level_{mode}") == wilson_interval(hits, 5)
        assert interval(f"ifeval_instruction_level_{mode}") == pytest.approx(bootstrap_interval(shares, weights=SIZES), abs=1e-12)
    assert interval("win_rate") == pytest.approx(bootstrap_interval(WINS), abs=1e-12)
    assert interval("reward_mean") == pytest.approx(bootstrap_interval(REWARDS), abs=1e-12)
    assert interval("reference_reward_mean") == pytest.approx(bootstrap_interval(REFERENCE_REWARDS), abs=1e-12)
    # weighting matters here: the unweighted bootstrap is centred on 0.5, not 6/9
    assert interval("ifeval_instruction_level_strict") != pytest.approx(bootstrap_interval(SHARES), abs=1e-6)

    rows = [json.loads(line) for line in (tmp_path / "hand" / "responses.jsonl").read_text().splitlines()]
    assert [r["prompt_ok"] for r in rows] == PROMPT_OK and [r["win"] for r in rows] == WINS
    assert [r["reward"] for r in rows] == REWARDS and [r["reference_reward"] for r in rows] == REFERENCE_REWARDS

    out = capsys.readouterr().out
    low, high = wilson_interval(2, 5)
    assert f"ifeval_prompt_level_strict: 0.400 [{low:.3f}, {high:.3f}] (n=5, Wilson)" in out
    assert "win_rate: 0.600 [" in out and "_low" not in out


def test_the_reference_model_samples_through_a_rollout_engine_of_its_own():
    from test_verifier_eval import Recording

    from lit_align.data.collate import collate_prompts
    from lit_align.data.formats import prompt_ids

    module = InstructionEval(model="tiny:causal-lm", reference_model="tiny:causal-lm", rollout=Recording(),
                             generation=SamplingParams(max_new_tokens=4, temperature=0.0))
    module.configure_model()
    module.reference_engine = Recording()
    records = [{"prompt": "Say hi."}, {"prompt": "Say bye."}]
    ids = [prompt_ids(r, "r", module.tokenizer) for r in records]
    module.test_step(collate_prompts(ids, records, module.tokenizer.pad_token_id, ["Say hi.", "Say bye."]), 0)
    assert [model for model, _ in module.rollout.calls] == [module.policy]
    assert [model for model, _ in module.reference_engine.calls] == [module.reference_policy]
    assert [r["prompt"] for r in module._rows] == ["Say hi.", "Say bye."]  # the prompts the batch carries
    # the same weights, greedy: the reference's answers are the policy's
    assert [r["reference"] for r in module._rows] == [r["response"] for r in module._rows]
