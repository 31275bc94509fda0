"""RLOO's objective (``objectives.rl.ClippedRatio`` with leave-one-out advantages, one batch: ``oracles.rloo_loss``): hand-worked values, and on a toy policy small enough to
enumerate, its expected gradient against the exact gradient of what it claims to optimise."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lit_align.objectives import policy_gradient
from lit_align.objectives.rl import ClippedRatio, PolicyGradientBatch

from oracles import rloo_loss

T, BETA, K = 0.7, 0.3, 3
VOCAB, EOS = 4, 3  # tokens 0..2 and EOS; completions of at most two tokens


# --- hand-worked values --------------------------------------------------------------------------
LOGPS = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
REF = torch.tensor([[-1.5, -2.0], [-0.5, 0.0]])
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
REWARDS = torch.tensor([1.0, 0.0])


def test_k1_in_the_reward_sequence_and_token_normalisation_by_hand():
    # KL_k1: row 0 (-1 + 1.5) + (-2 + 2) = 0.5; row 1: 0.  R = [1 - 0.1 * 0.5, 0] = [0.95, 0]; A = [0.95, -0.95]
    # summed token log-probs: row 0 -3, row 1 -0.5 (its second token is masked)
    # sequence: -(0.95 * -3 + -0.95 * -0.5) / 2 = 1.1875;  token (3 loss tokens): 2.375 / 3
    out = rloo_loss(LOGPS, REF, MASK, REWARDS, k=2, kl_coef=0.1)
    assert out.loss.item() == pytest.approx(1.1875)
    assert out.advantages.tolist() == pytest.approx([0.95, -0.95])
    assert out.kl.tolist() == pytest.approx([0.5, 0.0]) and out.kl_loss.item() == 0.0
    token = rloo_loss(LOGPS, REF, MASK, REWARDS, k=2, kl_coef=0.1, normalization="token")
    assert token.loss.item() == pytest.approx(2.375 / 3)


def test_k3_in_the_loss_and_the_entropy_bonus_by_hand():
    # rewards unshaped: A = [1, -1]; policy term -(1 * -3 + -1 * -0.5) / 2 = 1.25
    # k3 per token with log-ratio l = log pi - log ref: exp(-l) + l - 1; row 0 token 1: l = 0.5
    k3 = math.exp(-0.5) + 0.5 - 1
    entropy = torch.tensor([[1.0, 2.0], [3.0, 9.0]])  # the masked 9 must not count: mean (1 + 2 + 3) / 3 = 2
    out = rloo_loss(LOGPS, REF, MASK, REWARDS, k=2, kl_coef=0.1, kl_estimator="k3", kl_in_reward=False,
                           entropy=entropy, entropy_coef=0.05)
    assert out.policy_loss.item() == pytest.approx(1.25)
    assert out.kl_loss.item() == pytest.approx(0.1 * k3 / 2)
    assert out.loss.item() == pytest.approx(1.25 + 0.1 * k3 / 2 - 0.05 * 2.0)
    k2 = rloo_loss(LOGPS, REF, MASK, REWARDS, k=2, kl_coef=0.1, kl_estimator="k2", kl_in_reward=False)
    assert k2.kl_loss.item() == pytest.approx(0.1 * (0.5 * 0.5**2) / 2)  # half the squared sequence log-ratio


def test_rows_kept_out_carry_no_loss_but_stay_in_the_baselines():
    logps = LOGPS.clone().requires_grad_(True)
    out = rloo_loss(logps, REF, MASK, REWARDS, k=2, kl_coef=0.1, keep=torch.tensor([True, False]))
    out.loss.backward()
    assert (logps.grad[1] == 0).all() and (logps.grad[0] != 0).all()
    assert out.advantages.tolist() == pytest.approx([0.95, -0.95])  # row 1's reward still sets row 0's baseline
    assert out.loss.item() == pytest.approx(-(0.95 * -3) / 2)


@pytest.mark.parametrize("estimator, in_reward", [("k1", False), ("k2", True), ("k3", True)])
def test_unsound_kl_settings_are_refused_naming_the_valid_ones(estimator, in_reward):
    with pytest.raises(ValueError, match="k1 in the reward.*k2 in the loss.*k3 in the loss"):
        rloo_loss(LOGPS, REF, MASK, REWARDS, k=2, kl_coef=0.1, kl_estimator=estimator, kl_in_reward=in_reward)


# --- exact expectations on an enumerable toy policy ----------------------------------------------
def _toy():
    """Policy logits z (first token; second token given the first) as parameters, a fixed reference."""
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(VOCAB, generator=g), torch.randn(EOS, VOCAB, generator=g)
    r1, r2 = torch.randn(VOCAB, generator=g), torch.randn(EOS, VOCAB, generator=g)
    return z1.requires_grad_(True), z2.requires_grad_(True), r1, r2


# every completion: EOS alone, or a token then any second token (EOS or not: two tokens is the limit)
SEQUENCES = [(EOS, None)] + [(a, b) for a in range(EOS) for b in range(VOCAB)]
SEQ_REWARDS = torch.tensor([0.5 * (a == EOS) + (b is not None) * (0.3 * a - 0.7 * (b == 1)) for a, b in SEQUENCES])


def _token_logps(l1: torch.Tensor, l2: torch.Tensor):
    """(S, 2) log-probs of every sequence's tokens and its (S, 2) mask, from per-step log-softmaxes."""
    rows, mask = [], []
    for a, b in SEQUENCES:
        rows.append(torch.stack([l1[a], l2[a, b] if b is not None else l1.new_zeros(())]))
        mask.append([1.0, float(b is not None)])
    return torch.stack(rows), torch.tensor(mask)


def _distributions(z1, z2, r1, r2):
    pl1, pl2 = torch.log_softmax(z1 / T, -1), torch.log_softmax(z2 / T, -1)  # pi_T
    rl1, rl2 = torch.log_softmax(r1 / T, -1), torch.log_softmax(r2 / T, -1)  # ref_T
    return pl1, pl2, rl1, rl2


def _expected_rloo_gradient(estimator: str, in_reward: bool):
    """E over all k-tuples of completions of grad rloo_loss: each tuple's loss weighted by its probability."""
    z1, z2, r1, r2 = _toy()
    pl1, pl2, rl1, rl2 = _distributions(z1, z2, r1, r2)
    logps, mask = _token_logps(pl1, pl2)
    ref, _ = _token_logps(rl1, rl2)
    seq_prob = (logps * mask).sum(-1).exp().detach()
    total = 0.0
    for tup in itertools.product(range(len(SEQUENCES)), repeat=K):
        idx = torch.tensor(tup)
        out = rloo_loss(logps[idx], ref[idx], mask[idx], SEQ_REWARDS[idx], K, BETA, estimator, in_reward)
        total = total + seq_prob[idx].prod() * out.loss
    total.backward()
    return z1.grad, z2.grad


def _exact_gradient(kl_form: str):
    """grad of -(E[r] - beta * KL) computed exactly by enumeration; ``kl_form`` names the KL."""
    z1, z2, r1, r2 = _toy()
    pl1, pl2, rl1, rl2 = _distributions(z1, z2, r1, r2)
    logps, mask = _token_logps(pl1, pl2)
    ref, _ = _token_logps(rl1, rl2)
    seq_logp, seq_ref = (logps * mask).sum(-1), (ref * mask).sum(-1)
    prob = seq_logp.exp()
    if kl_form == "forward":  # KL(pi_T || ref_T) of whole completions
        kl = (prob * (seq_logp - seq_ref)).sum()
    else:  # per token, KL(ref_t || pi_t) on the policy's own (not differentiated) prefixes
        first = (rl1.exp() * (rl1 - pl1)).sum()
        second = (pl1[:EOS].exp().detach() * (rl2.exp() * (rl2 - pl2)).sum(-1)).sum()
        kl = first + second
    objective = (prob * SEQ_REWARDS).sum() - BETA * kl
    (-objective).backward()
    return z1.grad, z2.grad


@pytest.mark.parametrize("estimator, in_reward, kl_form", [
    ("k1", True, "forward"),  # the default: exactly grad(E[r] - beta KL(pi_T || ref_T))
    ("k2", False, "forward"),  # also exact for the forward KL
    ("k3", False, "reverse per token"),  # GRPO's form: what it really differentiates
])
def test_expected_rloo_gradient_equals_the_exact_objective_gradient(estimator, in_reward, kl_form):
    expected = _exact_gradient(kl_form)
    got = _expected_rloo_gradient(estimator, in_reward)
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-6), (g - e).abs().max()
    assert expected[0].abs().max() > 1e-2  # a gradient that says something


def test_k3_in_the_loss_is_not_the_forward_kl_gradient():
    """Documented, not hidden: k3 in the loss differs from grad KL(pi || ref) away from the reference."""
    got, forward = _expected_rloo_gradient("k3", False), _exact_gradient("forward")
    assert max((g - f).abs().max() for g, f in zip(got, forward)) > 1e-3


# --- Dr. GRPO on the enumerable toy policy --------------------------------------------------------
def test_dr_grpo_expected_gradient_is_k_minus_one_over_k_of_the_objective_gradient():
    """The group mean includes the sample itself, so E[(R_i - mean R) grad log pi(y_i)] = (k-1)/k grad E[R]:
    with the k1 KL in the reward, Dr. GRPO's expected gradient is that share of grad(E[r] - beta KL)."""
    z1, z2, r1, r2 = _toy()
    pl1, pl2, rl1, rl2 = _distributions(z1, z2, r1, r2)
    logps, mask = _token_logps(pl1, pl2)
    ref, _ = _token_logps(rl1, rl2)
    seq_prob = (logps * mask).sum(-1).exp().detach()
    k, total = K, 0.0
    for tup in itertools.product(range(len(SEQUENCES)), repeat=k):
        idx = torch.tensor(tup)
        shaped = SEQ_REWARDS[idx] - BETA * policy_gradient.sequence_kl(logps[idx].detach(), ref[idx], mask[idx])
        advantages = policy_gradient.group_advantages(shaped, k, "dr_grpo")
        out = ClippedRatio(estimator="grpo", scale_rewards="none")(PolicyGradientBatch(
            logps=logps[idx], mask=mask[idx], advantages=advantages, step_sequences=k, step_tokens=0.0, max_new_tokens=2))
        total = total + seq_prob[idx].prod() * out.loss
    total.backward()
    exact = _exact_gradient("forward")
    for got, e in zip((z1.grad, z2.grad), exact):
        assert torch.allclose(got, (k - 1) / k * e, atol=1e-6), (got - (k - 1) / k * e).abs().max()
    assert exact[0].abs().max() > 1e-2
