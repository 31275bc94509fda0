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


def test_clipped_ratio_on_both_sides_of_the_clip_with_its_gradients():
    # one token per row; ratios 1.5, 0.5, 0.5, 1.5, 1.25 against advantages +1, +1, -1, -1, +1
    ratio = torch.tensor([1.5, 0.5, 0.5, 1.5, 1.25])
    old = torch.zeros(5, 1)
    logps = ratio.log()[:, None].clone().requires_grad_(True)
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0])
    loss, clipped = pg.clipped_token_loss(logps, old, advantages, epsilon=0.2, epsilon_high=0.28)
    # A > 0: min(1.5, 1.28) -> 1.28 (clipped); min(0.5, 0.8) -> 0.5; ratio 1.25 < 1.28 -> 1.25 unclipped
    # A < 0: min(-0.5, -0.8) -> -0.8 (clipped); min(-1.5, -1.28) -> -1.5
    assert loss.flatten().tolist() == pytest.approx([-1.28, -0.5, 0.8, 1.5, -1.25])
    assert clipped.flatten().tolist() == [True, False, True, False, False]
    loss.sum().backward()
    # d(-rho A)/d log pi = -rho A where unclipped; exactly zero where the clip holds
    assert logps.grad.flatten().tolist() == pytest.approx([0.0, -0.5, 0.0, 1.5, -1.25])


def test_off_policy_form_at_ratio_one_has_the_reinforce_gradient():
    torch.manual_seed(0)
    logps = (-torch.rand(4, 3)).requires_grad_(True)
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    advantages, weights = torch.tensor([0.5, -1.0, 2.0, -1.5]), torch.full((4,), 0.25)
    pg.policy_gradient_loss(logps, mask, advantages, weights).loss.backward()
    reinforce = logps.grad.clone()
    logps.grad = None
    out = pg.policy_gradient_loss(logps, mask, advantages, weights, old_logps=logps.detach().clone())
    out.loss.backward()
    assert torch.allclose(logps.grad, reinforce, atol=1e-7) and out.clipped == 0


def test_tis_weights_are_the_ratio_to_the_engine_capped_and_scale_the_token_loss():
    old, engine = torch.tensor([[-1.0, -0.5]]), torch.tensor([[-1.2, -2.5]])
    weights = pg.tis_weights(old, engine, cap=2.0)
    assert weights.tolist()[0] == pytest.approx([math.exp(0.2), 2.0])  # e^0.2 below the cap; e^2 capped
    logps = torch.tensor([[-1.0, -0.5]], requires_grad=True)
    out = pg.policy_gradient_loss(logps, torch.ones(1, 2), torch.tensor([1.0]), torch.ones(1), is_weights=weights)
    assert out.loss.item() == pytest.approx(-(-1.0 * math.exp(0.2) + -0.5 * 2.0))


def test_overlong_penalty_and_uniform_groups_by_hand():
    assert pg.overlong_penalty(torch.tensor([0, 12, 14, 16, 20]), 16, 4, factor=0.5).tolist() == [0.0, 0.0, -0.25, -0.5, -0.5]
    with pytest.raises(ValueError, match="overlong buffer"):
        pg.overlong_penalty(torch.tensor([1]), 16, 0)
    assert pg.uniform_groups(torch.tensor([0.0, 0.0, 1.0, 0.0, 2.0, 2.0]), 2).tolist() == [True, False, True]
