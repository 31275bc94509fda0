import json
from pathlib import Path

import pytest
import torch

from lit_align.pairs import main, make_preference_pairs
from lit_align.rewards.base import Reward, RewardError, checked_rewards

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
    counts = make_preference_pairs(Prompts(), LengthReward(), "tiny:causal-lm", str(out), num_samples=4, max_new_tokens=8, batch_size=2)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert counts["prompts"] == 5 and counts["completions"] == 20
    assert counts["pairs"] + counts["skipped_equal_scores"] == 5 and counts["pairs"] == len(rows) > 0
    for row in rows:
        assert row["score_chosen"] == len(row["chosen"][0]["content"]) > row["score_rejected"] == len(row["rejected"][0]["content"])
        assert row["prompt"][0]["role"] == "user" and "target" in row


def test_pairs_cli_reads_a_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    counts = main(["--config", str(ROOT / "configs/pairs/countdown_embedded.yaml"), "--model", "tiny:causal-lm",
                   "--limit", "4", "--max_new_tokens", "6", "--num_samples", "2"])
    assert counts["prompts"] == 4 and (tmp_path / "outputs/pairs/countdown_sft_pairs.jsonl").is_file()


@pytest.mark.parametrize("values, fragment", [
    (torch.tensor([1.0, float("nan")]), "NaN"),
    (torch.tensor([1.0]), "shape"),
    ([1.0, 2.0], "expected a tensor"),
])
def test_bad_reward_sources_raise_clear_errors(values, fragment):
    with pytest.raises(RewardError, match=fragment):
        checked_rewards(lambda p, c, r: values, ["a", "b"], ["x", "y"], [{}, {}])
