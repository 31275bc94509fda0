"""The policy-gradient pieces (``objectives.policy_gradient``) against values worked out by hand; the
estimators' expected gradients on an enumerable toy policy are in ``tests/methods/test_rloo_objective.py``."""

from __future__ import annotations

import math

import pytest
import torch

from lit_align.objectives import policy_gradient as pg


def test_grpo_advantages_by_hand_for_each_scaling():
    rewards = torch.tensor([1.0, 3.0, 2.0, 2.0])
    # group 1: mean 2, unbiased std sqrt(2); group 2: all equal, advantages 0 whatever the scaling
    group = pg.group_advantages(rewards, 2, "grpo", "group")
    assert group.tolist() == pytest.approx([-1 / (math.sqrt(2) + 1e-4), 1 / (math.sqrt(2) + 1e-4), 0.0, 0.0])
    # the batch's unbiased std: mean 2, variance (1 + 1 + 0 + 0) / 3
    batch = pg.group_advantages(rewards, 2, "grpo", "batch")
    assert batch.tolist() == pytest.approx([-1 / (math.sqrt(2 / 3) + 1e-4), 1 / (math.sqrt(2 / 3) + 1e-4), 0.0, 0.0])
    # under data parallelism the std is every rank's rewards': here the other rank's are 0, 4 (all six:
    # mean 2, variance (1 + 1 + 0 + 0 + 4 + 4) / 5 = 2), and only the std changes, not the centring
    everyone = pg.group_advantages(rewards, 2, "grpo", "batch", torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, 4.0]))
    assert everyone.tolist() == pytest.approx([-1 / (math.sqrt(2) + 1e-4), 1 / (math.sqrt(2) + 1e-4), 0.0, 0.0])
    assert pg.group_advantages(rewards, 2, "grpo", "none").tolist() == [-1.0, 1.0, 0.0, 0.0]
    assert pg.group_advantages(rewards, 2, "dr_grpo", "group").tolist() == [-1.0, 1.0, 0.0, 0.0]  # never scaled
    with pytest.raises(ValueError, match="rloo, grpo or dr_grpo"):
        pg.group_advantages(rewards, 2, "ppo")
    with pytest.raises(ValueError, match="scale_rewards"):
        pg.group_advantages(rewards, 2, "grpo", "std")


def test_aggregation_weights_by_hand():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # lengths 2 and 1
    weights = {how: pg.aggregation_weights(mask, how, num_sequences=2, num_tokens=3, max_new_tokens=3).tolist()
               for how in pg.AGGREGATIONS}
    assert weights["sequence"] == pytest.approx([1 / 2, 1 / 2])
    assert weights["sequence_mean"] == pytest.approx([1 / 4, 1 / 2])
    assert weights["token"] == pytest.approx([1 / 3, 1 / 3])
    assert weights["dr_grpo"] == pytest.approx([1 / 6, 1 / 6])
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        pg.aggregation_weights(mask, "mean", 2, 3, 3)


def test_tis_weights_are_the_ratio_to_the_engine_capped():
    old, engine = torch.tensor([[-1.0, -0.5]]), torch.tensor([[-1.2, -2.5]])
    weights = pg.tis_weights(old, engine, cap=2.0)
    assert weights.tolist()[0] == pytest.approx([math.exp(0.2), 2.0])  # e^0.2 below the cap; e^2 capped


def test_overlong_penalty_and_uniform_groups_by_hand():
    assert pg.overlong_penalty(torch.tensor([0, 12, 14, 16, 20]), 16, 4, factor=0.5).tolist() == [0.0, 0.0, -0.25, -0.5, -0.5]
    with pytest.raises(ValueError, match="overlong buffer"):
        pg.overlong_penalty(torch.tensor([1]), 16, 0)
    assert pg.uniform_groups(torch.tensor([0.0, 0.0, 1.0, 0.0, 2.0, 2.0]), 2).tolist() == [True, False, True]
