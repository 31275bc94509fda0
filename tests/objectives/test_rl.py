"""The online-RL objectives (``objectives.rl``): each surrogate by hand, the on-policy forms, TIS, and the
settings each refuses when built."""

from __future__ import annotations

import math

import pytest
import torch

from lit_align.objectives import rl


def _batch(logps, advantages, mask=None, **fields):
    mask = torch.ones_like(logps) if mask is None else mask
    return rl.PolicyGradientBatch(logps=logps, mask=mask, advantages=advantages, step_sequences=float(logps.size(0)),
                                  step_tokens=float(mask.sum()), max_new_tokens=logps.size(1), **fields)


# one token per row; ratios 1.5, 0.5, 0.5, 1.5, 1.25 against advantages +1, +1, -1, -1, +1
RATIO = torch.tensor([1.5, 0.5, 0.5, 1.5, 1.25])
ADV = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0])


def test_clipped_ratio_on_both_sides_of_the_clip_with_its_gradients():
    logps = RATIO.log()[:, None].clone().requires_grad_(True)
    loss, clipped = rl.ClippedRatio(epsilon=0.2, epsilon_high=0.28).surrogate(logps, torch.zeros(5, 1), ADV,
                                                                              torch.ones(5, 1))
    # A > 0: min(1.5, 1.28) -> 1.28 (clipped); min(0.5, 0.8) -> 0.5; ratio 1.25 < 1.28 -> 1.25 unclipped
    # A < 0: min(-0.5, -0.8) -> -0.8 (clipped); min(-1.5, -1.28) -> -1.5
    assert loss.flatten().tolist() == pytest.approx([-1.28, -0.5, 0.8, 1.5, -1.25])
    assert clipped.flatten().tolist() == [True, False, True, False, False]
    loss.sum().backward()
    # d(-rho A)/d log pi = -rho A where unclipped; exactly zero where the clip holds
    assert logps.grad.flatten().tolist() == pytest.approx([0.0, -0.5, 0.0, 1.5, -1.25])


def test_two_sided_clip_caps_the_ratio_of_negative_advantages_at_delta():
    # A < 0 and ratio 1.5: min(-1.5, -1.28) = -1.5 unclipped; with delta 1.4 the unclipped ratio is 1.4
    logps = RATIO.log()[:, None]
    loss, _ = rl.ClippedRatio(epsilon=0.2, epsilon_high=0.28, delta=1.4).surrogate(logps, torch.zeros(5, 1), ADV,
                                                                                   torch.ones(5, 1))
    assert loss.flatten().tolist() == pytest.approx([-1.28, -0.5, 0.8, 1.4, -1.25])


def test_sequence_level_ratio_is_the_exp_of_the_mean_token_log_ratio():
    # row 0: token log-ratios 0.2 and 0.4 (a third token masked): rho = e^0.3 for both tokens
    logps = torch.tensor([[0.2, 0.4, 9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    gspo = rl.GSPO(epsilon=0.5, epsilon_high=0.5)
    loss, clipped = gspo.surrogate(logps, torch.zeros(1, 3), torch.tensor([1.0]), mask)
    assert loss.shape == (1, 1) and loss.item() == pytest.approx(-math.exp(0.3)) and not clipped.any()
    out = gspo(_batch(logps, torch.tensor([1.0]), mask, old_logps=torch.zeros(1, 3)))
    # sequence_mean aggregation: each completion's token mean of its (equal) token terms
    assert out.loss.item() == pytest.approx(-math.exp(0.3))
    out.loss.backward()
    assert logps.grad[0].tolist() == pytest.approx([-math.exp(0.3) / 2, -math.exp(0.3) / 2, 0.0])


def test_cispo_weights_every_token_by_its_capped_ratio_detached():
    logps = RATIO.log()[:, None].clone().requires_grad_(True)
    loss, clipped = rl.CISPO(epsilon_max=1.3).surrogate(logps, torch.zeros(5, 1), ADV, torch.ones(5, 1))
    weights = torch.tensor([1.3, 0.5, 0.5, 1.3, 1.25])
    assert loss.flatten().tolist() == pytest.approx((-weights * ADV * RATIO.log()).tolist())
    assert clipped.flatten().tolist() == [True, False, False, False, False]  # capped with A > 0
    loss.sum().backward()
    assert logps.grad.flatten().tolist() == pytest.approx((-weights * ADV).tolist())  # the weight is a constant


def test_sapo_soft_gate_by_hand():
    logps = torch.tensor([[math.log(1.5)], [math.log(1.5)]])
    loss, _ = rl.SAPO(temperature_pos=1.0, temperature_neg=2.0).surrogate(logps, torch.zeros(2, 1),
                                                                         torch.tensor([1.0, -1.0]), torch.ones(2, 1))
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert loss.flatten().tolist() == pytest.approx([-4 * sigmoid(0.5), 4 / 2 * sigmoid(1.0)])


def test_vespo_gamma_weight_by_hand_and_one_on_the_sampling_weights():
    # sequence log-ratio 0.1 + 0.2 = 0.3, A > 0: phi = exp(3 + 2 * 0.3 - 3 e^0.3)
    logps = torch.tensor([[0.1, 0.2]], requires_grad=True)
    vespo = rl.VESPO()
    loss, _ = vespo.surrogate(logps, torch.zeros(1, 2), torch.tensor([2.0]), torch.ones(1, 2))
    phi = math.exp(3 + 2 * 0.3 - 3 * math.exp(0.3))
    assert loss.flatten().tolist() == pytest.approx([-phi * 2 * 0.1, -phi * 2 * 0.2])
    on_policy = vespo(_batch(logps, torch.tensor([2.0])))  # phi(1) = 1: REINFORCE
    on_policy.loss.backward()
    assert logps.grad.flatten().tolist() == pytest.approx([-2 / 2, -2 / 2])  # token mean over 2 tokens


def test_on_policy_clipped_ratio_is_reinforce_in_value_and_gradient():
    torch.manual_seed(0)
    logps = (-torch.rand(4, 3)).requires_grad_(True)
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    advantages = torch.tensor([0.5, -1.0, 2.0, -1.5])
    objective = rl.ClippedRatio()
    out = objective(_batch(logps, advantages, mask))
    assert out.loss.item() == pytest.approx(float(-(advantages * (logps.detach() * mask).sum(-1)).sum() / 4))
    out.loss.backward()
    reinforce = logps.grad.clone()
    logps.grad = None
    off = objective(_batch(logps, advantages, mask, old_logps=logps.detach().clone()))  # ratio 1, off-policy form
    off.loss.backward()
    assert torch.allclose(logps.grad, reinforce, atol=1e-7) and off.clipped == 0


def test_tis_weights_scale_the_token_loss():
    logps = torch.tensor([[-1.0, -0.5]], requires_grad=True)
    weights = torch.tensor([[math.exp(0.2), 2.0]])
    out = rl.ClippedRatio(aggregation="sequence")(_batch(logps, torch.tensor([1.0]), is_weights=weights))
    assert out.loss.item() == pytest.approx(-(-1.0 * math.exp(0.2) + -0.5 * 2.0))


def test_kl_in_the_loss_and_the_entropy_bonus_by_hand():
    logps, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -2.0]])
    entropy = torch.tensor([[1.0, 3.0]])
    objective = rl.ClippedRatio(aggregation="sequence", kl_coef=0.1, kl_estimator="k3", kl_in_reward=False,
                                entropy_coef=0.05)
    out = objective(_batch(logps, torch.tensor([0.0]), ref_logps=ref, entropy=entropy))
    k3 = math.exp(-0.5) + 0.5 - 1
    assert out.kl_loss.item() == pytest.approx(0.1 * k3)
    assert out.loss.item() == pytest.approx(0.1 * k3 - 0.05 * 2.0)


@pytest.mark.parametrize("build, message", [
    (lambda: rl.ClippedRatio(estimator="ppo"), "estimator 'ppo' is not one of: rloo, grpo"),
    (lambda: rl.ClippedRatio(scale_rewards="std"), "scale_rewards 'std' is not one of: group, batch, none"),
    (lambda: rl.ClippedRatio(aggregation="mean"), "aggregation 'mean' is not one of"),
    (lambda: rl.ClippedRatio(importance_sampling_level="token_sequence"), "importance_sampling_level"),
    (lambda: rl.ClippedRatio(kl_estimator="k3", kl_in_reward=True), "does not give the gradient"),
    (lambda: rl.ClippedRatio(kl_coef=-0.1), "kl_coef must be a finite number >= 0"),
    (lambda: rl.ClippedRatio(epsilon=1.0), "epsilon must be in"),
    (lambda: rl.ClippedRatio(epsilon=0.2, epsilon_high=0.28, delta=1.2), "delta must be above 1 \\+ epsilon_high"),
    (lambda: rl.CISPO(epsilon_max=0.0), "epsilon_max must be > 0"),
    (lambda: rl.SAPO(temperature_neg=0.0), "temperatures must be > 0"),
    (lambda: rl.VESPO(importance_sampling_level="sequence"), "VESPO forms its sequence ratio itself"),
])
def test_settings_out_of_range_are_refused_when_built_naming_the_setting(build, message):
    with pytest.raises(ValueError, match=message):
        build()
