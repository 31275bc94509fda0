"""GRPO on the shared online loop: it learns off the sampling weights (several passes, clipped ratio),
dynamic sampling keeps only groups with signal and counts its draws, completions reach the logger, and
settings that would bias the gradient are refused."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from lit_align.data.datamodule import AlignDataModule
from lit_align.methods import GRPO
from lit_align.methods.grpo import LOSS_TYPES
from lit_align.rewards.base import Reward
from lit_align.sampling.generate import SamplingParams

from conftest import trainer


class TokenShare(Reward):
    """Trivially learnable: the share of completion characters that are the letter 'a'."""

    def __call__(self, prompts, completions, records):
        return torch.tensor([c.count("a") / max(1, len(c)) for c in completions])


class Prompts:
    def __init__(self, n, kinds=("vary",)):
        self.n, self.kinds = n, kinds

    def records(self):
        for i in range(self.n):
            yield f"p:{i}", {"prompt": "say something", "kind": self.kinds[i % len(self.kinds)]}


def _fit(module, prompts, steps, batch_size, **settings):
    t = trainer(max_steps=steps, limit_val_batches=0, **settings)
    t.fit(module, AlignDataModule(prompts, batch_size=batch_size).connect(module.tokenizer, module.batch_kind))
    return t


def _mean_reward(module):
    from lit_align.data.collate import collate_prompts
    from lit_align.data.formats import prompt_ids

    records = list(Prompts(16).records())
    batch = collate_prompts([prompt_ids(r, o, module.tokenizer) for o, r in records], [r for _, r in records],
                            module.tokenizer.pad_token_id)
    out = module.rollout.sample(module.policy, module.tokenizer, batch.input_ids, batch.attention_mask, module.sampling, seed=7)
    return TokenShare()(None, out.texts, None).mean().item()


def test_grpo_learns_over_several_passes_with_the_clipped_ratio_in_micro_batches(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    module = GRPO(model="tiny:causal-lm", reward=TokenShare(), num_generations=4, num_iterations=2,
                  steps_per_generation=2, micro_batch_size=4, loss_type="grpo",
                  generation=SamplingParams(max_new_tokens=12, temperature=1.0),
                  optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    module.configure_model()
    before = _mean_reward(module)
    t = _fit(module, Prompts(8 * 6), steps=24, batch_size=8, logger=CSVLogger(tmp_path, name="logs"))
    after = _mean_reward(module)
    assert after > before + 0.05, (before, after)
    # 6 generation batches x 2 passes x 2 steps; 8 prompts x 4 samples each
    assert t.global_step == 24 and t.callback_metrics["train/completions_seen"] == 6 * 8 * 4
    rows = list(csv.DictReader((tmp_path / "logs" / "version_0" / "metrics.csv").open()))
    assert max(float(r["train/clipped_share"]) for r in rows) > 0, "later passes move the ratio out of the clip range"
    assert module.reference_model is None, "beta 0: no reference copy is loaded"


class HalfConstant(Reward):
    """Prompts of kind "same" score 1 for every completion (no signal); the others score their place in the
    call, so two completions of one group always differ (their lengths could tie on some draw)."""

    def __call__(self, prompts, completions, records):
        return torch.tensor([1.0 if r["kind"] == "same" else float(i) for i, r in enumerate(records)])


def test_dynamic_sampling_keeps_only_groups_with_signal_and_counts_its_draws(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    module = GRPO(model="tiny:causal-lm", reward=HalfConstant(), num_generations=2, dynamic_sampling=True, max_draws=4,
                  generation=SamplingParams(max_new_tokens=8))
    # every batch of 2 prompts holds one "same" and one "vary" group: two draws fill a batch of 2 groups
    logger = CSVLogger(tmp_path, name="logs")
    t = _fit(module, Prompts(2 * 6, kinds=("same", "vary")), steps=3, batch_size=2, logger=logger)
    metrics = t.callback_metrics
    rows = list(csv.DictReader((tmp_path / "logs" / "version_0" / "metrics.csv").open()))
    # one row per optimiser step, at that step: batches that only drew write nothing
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and [float(r["train/optimizer_steps"]) for r in rows] == [1, 2, 3]
    assert t.global_step == 3
    assert metrics["train/zero_variance_groups"] == 0.0
    assert metrics["train/draws"] == 2 and metrics["train/groups_drawn"] == 4 and metrics["train/groups_dropped"] == 2
    assert metrics["train/prompts_seen"] == 12
    # each step learns from the 2 "vary" groups of 2 draws; the policy's reward is over all 4 groups drawn,
    # the 2 "same" groups (reward 1 each) included
    assert metrics["train/drawn_reward_mean"] == pytest.approx((4 * float(metrics["train/reward_mean"]) + 4 * 1.0) / 8)


def test_completions_go_to_a_jsonl_file_beside_the_csv_logs(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    module = GRPO(model="tiny:causal-lm", reward=TokenShare(), num_generations=2, log_completions_every_n_steps=2,
                  log_completions_count=3, generation=SamplingParams(max_new_tokens=6))
    logger = CSVLogger(tmp_path, name="logs")
    _fit(module, Prompts(8), steps=4, batch_size=2, logger=logger)
    rows = [json.loads(line) for line in (tmp_path / "logs" / "version_0" / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 2, 2, 4, 4, 4]
    assert set(rows[0]) == {"step", "prompt", "completion", "reward", "advantage"}


@pytest.mark.parametrize("settings, message", [
    (dict(generation=SamplingParams(top_p=0.9)), "top_p 0.9 is refused"),
    (dict(num_generations=1), "num_generations must be at least 2"),
    (dict(loss_type="mean"), "unknown loss_type"),
    (dict(micro_batch_size=0), "micro_batch_size must be at least 1"),
    (dict(tis_cap=0.0), "tis_cap must be > 0"),
    (dict(epsilon=1.5), "epsilon must be in"),
    (dict(delta=1.1, epsilon_high=0.28), "delta must be above"),
    (dict(loss_type="cispo", delta=2.0), "delta .* applies to the clipped-ratio loss types"),
    (dict(overlong_buffer=500, generation=SamplingParams(max_new_tokens=100)), "overlong buffer"),
])
def test_settings_that_cannot_work_are_refused_with_a_reason(settings, message):
    with pytest.raises(ValueError, match=message):
        GRPO(model="tiny:causal-lm", reward=TokenShare(), **settings)


def test_loss_types_map_to_the_objectives_and_aggregations_they_name():
    got = {t: (type(o).__name__, o.aggregation, o.importance_sampling_level) for t in LOSS_TYPES
           for o in [GRPO(model="tiny:causal-lm", reward=TokenShare(), loss_type=t).objective]}
    assert got == {"grpo": ("ClippedRatio", "sequence_mean", "token"), "bnpo": ("ClippedRatio", "token", "token"),
                   "dapo": ("ClippedRatio", "token", "token"), "dr_grpo": ("ClippedRatio", "dr_grpo", "token"),
                   "sequence": ("ClippedRatio", "sequence", "token"), "luspo": ("ClippedRatio", "sequence", "token"),
                   "cispo": ("CISPO", "token", "token"), "sapo": ("SAPO", "sequence_mean", "token"),
                   "vespo": ("VESPO", "token", "token")}
    gspo = GRPO(model="tiny:causal-lm", reward=TokenShare(), loss_type="grpo", importance_sampling_level="sequence")
    assert gspo.objective.importance_sampling_level == "sequence"
