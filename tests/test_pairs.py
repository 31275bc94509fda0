import json
from pathlib import Path

import pytest
import torch
import yaml

from lit_align.pairs import main, make_preference_pairs
from lit_align.rewards.base import Reward, RewardError, checked_rewards
from lit_align.sampling.engines import HFGenerate
from lit_align.sampling.generate import SamplingParams

ROOT = Path(__file__).resolve().parents[1]


class Prompts:
    def records(self):
        for i in range(5):
            yield f"p:{i}", {"prompt": [{"role": "user", "content": f"hello {i}"}], "target": i}


class LengthReward(Reward):
    """Longer completions are better; ties when every sample has the same length."""

    def __call__(self, prompts, completions, records):
        return torch.tensor([float(len(c)) for c in completions])


def test_pairs_keep_best_and_worst_and_count_everything(tmp_path):
    out = tmp_path / "pairs.jsonl"
    counts = make_preference_pairs(Prompts(), LengthReward(), "tiny:causal-lm", str(out),
                                   SamplingParams(max_new_tokens=8, n=4), batch_size=2)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert counts["prompts"] == 5 and counts["completions"] == 20
    assert counts["pairs"] + counts["skipped_equal_scores"] == 5 and counts["pairs"] == len(rows) > 0
    for row in rows:
        assert row["score_chosen"] == len(row["chosen"][0]["content"]) > row["score_rejected"] == len(row["rejected"][0]["content"])
        assert row["prompt"][0]["role"] == "user" and "target" in row


class ClosingEngine(HFGenerate):
    """HF generate that records its close, and fails its sampling after ``fail_after`` calls when set."""

    def __init__(self, fail_after=None):
        super().__init__()
        self.closed, self.calls, self.fail_after = 0, 0, fail_after

    def sample(self, *args, **kwargs):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("sampling broke")
        return super().sample(*args, **kwargs)

    def close(self):
        self.closed += 1


@pytest.mark.parametrize("fail_after", [None, 1])
def test_the_engine_is_closed_when_pairs_are_written_and_when_sampling_fails(tmp_path, fail_after):
    """vLLM's engine holds its KV cache until closed: the tool closes it, also when a batch fails."""
    engine = ClosingEngine(fail_after)
    call = lambda: make_preference_pairs(Prompts(), LengthReward(), "tiny:causal-lm", str(tmp_path / "p.jsonl"),  # noqa: E731
                                         SamplingParams(max_new_tokens=4, n=2), batch_size=2, rollout=engine)
    if fail_after is None:
        assert call()["prompts"] == 5 and engine.calls == 3
    else:
        with pytest.raises(RuntimeError, match="sampling broke"):
            call()
    assert engine.closed == 1


@pytest.mark.parametrize("config", sorted((ROOT / "configs/pairs").glob("*.yaml")), ids=lambda p: p.name)
def test_pairs_cli_reads_a_config(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    counts = main(["--config", str(config), "--model", "tiny:causal-lm",
                   "--limit", "4", "--generation.max_new_tokens", "6", "--generation.n", "2"])
    settings = yaml.safe_load(config.read_text())
    assert counts["prompts"] == 4 and counts["completions"] == 4 * 2 and (tmp_path / settings["output"]).is_file()
    assert json.loads((tmp_path / settings["output"]).with_suffix(".counts.json").read_text()) == counts
    if settings.get("sft_output"):
        lines = (tmp_path / settings["sft_output"]).read_text().splitlines()
        assert counts["sft_records"] == len(lines) and counts["sft_records"] + counts["sft_below_min_score"] == 4


def test_sampling_settings_a_config_leaves_out_keep_the_tools_defaults(tmp_path, capsys):
    config = tmp_path / "pairs.yaml"
    config.write_text("source: {class_path: lit_align.tasks.countdown.CountdownSource}\n"
                      "reward: {class_path: lit_align.tasks.countdown.CountdownVerifier}\n"
                      "generation: {max_new_tokens: 12}\n")
    with pytest.raises(SystemExit):
        main(["--config", str(config), "--print_config"])
    # still four samples a prompt at temperature 1: SamplingParams()'s own defaults would give one
    assert yaml.safe_load(capsys.readouterr().out)["generation"] == {"max_new_tokens": 12, "temperature": 1.0,
                                                                     "top_p": 1.0, "n": 4}


def test_sft_output_keeps_each_prompts_best_sample_at_or_above_the_minimum(tmp_path):
    out, sft = tmp_path / "pairs.jsonl", tmp_path / "sft.jsonl"
    three = SamplingParams(max_new_tokens=8, n=3)
    counts = make_preference_pairs(Prompts(), LengthReward(), "tiny:causal-lm", str(out), three, batch_size=5,
                                   sft_output=str(sft), sft_min_score=20.0)
    rows = [json.loads(line) for line in sft.read_text().splitlines()]
    assert counts["sft_records"] == len(rows) and counts["sft_records"] + counts["sft_below_min_score"] == 5
    for row in rows:
        text = row["completion"][0]["content"]
        assert row["completion"][0]["role"] == "assistant" and row["score"] == len(text) >= 20.0
        assert row["prompt"][0]["role"] == "user" and "target" in row
    # With no minimum every prompt gives one record: its longest sample.
    counts = make_preference_pairs(Prompts(), LengthReward(), "tiny:causal-lm", str(out), three, batch_size=5,
                                   sft_output=str(sft), sft_min_score=float("-inf"))
    assert counts["sft_records"] == 5 == len(sft.read_text().splitlines())


@pytest.mark.parametrize("values, fragment", [
    (torch.tensor([1.0, float("nan")]), "NaN"),
    (torch.tensor([1.0]), "shape"),
    ([1.0, 2.0], "expected a tensor"),
])
def test_bad_reward_sources_raise_clear_errors(values, fragment):
    with pytest.raises(RewardError, match=fragment):
        checked_rewards(lambda p, c, r: values, ["a", "b"], ["x", "y"], [{}, {}])
