import math

import pytest
import torch

from lit_align.objectives import losses


def test_sft_loss_hand_computed():
    token_logps = torch.tensor([[math.log(0.5), math.log(0.25)], [math.log(0.8), math.log(0.1)]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    # Three loss tokens: -(log .5 + log .25 + log .1) / 3
    expected = -(math.log(0.5) + math.log(0.25) + math.log(0.1)) / 3
    assert math.isclose(losses.sft_loss(token_logps, mask, 3).item(), expected, rel_tol=1e-6)
    # A window-wide normalizer (6 tokens in the whole global batch) halves it.
    assert math.isclose(losses.sft_loss(token_logps, mask, 6).item(), expected / 2, rel_tol=1e-6)


def test_bradley_terry_hand_values():
    rc, rr = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    # -log sigmoid(1) = log(1 + e^-1); -log sigmoid(0) = log 2
    expected = (math.log(1 + math.exp(-1)) + math.log(2)) / 2
    assert math.isclose(losses.bradley_terry_loss(rc, rr).item(), expected, rel_tol=1e-6)
    # a margin of 1 turns the first pair's difference into 0
    assert math.isclose(losses.bradley_terry_loss(rc, rr, margin=1.0).item(),
                        (math.log(2) + math.log(1 + math.e)) / 2, rel_tol=1e-6)


def test_reward_regression_hand_values():
    got = losses.reward_regression_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([1.0]))
    assert math.isclose(got.item(), ((1 - 3) ** 2 + (0 - 1) ** 2) / 2)


def _logps():
    # policy chosen/rejected, reference chosen/rejected. The two reference values differ, so a loss that
    # mixes them up gets another h:
    #   h = (pc - rc) - (pr - rr) = (-1 - -2) - (-4 - -3) = 1 - (-1) = 2
    #   with rc and rr swapped:     (-1 - -3) - (-4 - -2) = 2 - (-2) = 4
    #   with the reference left out: pc - pr = -1 - -4 = 3
    return losses.PreferenceLogps(policy_chosen=torch.tensor([-1.0]), policy_rejected=torch.tensor([-4.0]),
                                  reference_chosen=torch.tensor([-2.0]), reference_rejected=torch.tensor([-3.0]))


def test_dpo_hand_values_and_log2_at_start():
    # beta 0.5, h = 2: -log sigmoid(0.5 * 2) = log(1 + e^-1) = 0.3133 (swapped references: log(1 + e^-2) = 0.1269)
    out = losses.dpo_loss(_logps(), beta=0.5)
    assert math.isclose(out.loss.item(), math.log(1 + math.exp(-1)), rel_tol=1e-6)
    # implicit rewards beta * (policy - reference): 0.5 * (-1 - -2) = 0.5 and 0.5 * (-4 - -3) = -0.5
    assert out.chosen_rewards.tolist() == [0.5] and out.rejected_rewards.tolist() == [-0.5]
    same = torch.tensor([-4.0, -7.5])
    at_start = losses.dpo_loss(losses.PreferenceLogps(same, same + 1, same, same + 1), beta=0.1)
    assert math.isclose(at_start.loss.item(), math.log(2), rel_tol=1e-6)
    assert at_start.chosen_rewards.tolist() == [0.0, 0.0] and at_start.rejected_rewards.tolist() == [0.0, 0.0]


def test_cdpo_hand_values():
    logps, eps = _logps(), 0.2
    # beta 0.5, h = 2, so beta h = 1: -(0.8) log sigmoid(1) - 0.2 log sigmoid(-1)
    #   = 0.8 log(1 + e^-1) + 0.2 log(1 + e) = 0.8 * 0.31326 + 0.2 * 1.31326 = 0.51326
    # (swapped references, beta h = 2: 0.8 log(1 + e^-2) + 0.2 log(1 + e^2) = 0.8 * 0.12693 + 0.2 * 2.12693 = 0.52693)
    expected = 0.8 * math.log(1 + math.exp(-1)) + 0.2 * math.log(1 + math.e)
    assert math.isclose(expected, 0.51326, abs_tol=1e-5)
    out = losses.cdpo_loss(logps, 0.5, eps)
    assert math.isclose(out.loss.item(), expected, rel_tol=1e-6)
    assert out.chosen_rewards.tolist() == [0.5] and out.rejected_rewards.tolist() == [-0.5]  # as for dpo_loss
    assert math.isclose(losses.cdpo_loss(logps, 0.5, 0.0).loss.item(), losses.dpo_loss(logps, 0.5).loss.item())


def test_ipo_hand_values():
    logps = _logps()
    # (h - 1/(2 beta))^2 with h = 2, beta = 0.25 -> (2 - 2)^2 = 0; beta = 0.5 -> (2 - 1)^2 = 1
    # (swapped references, h = 4: (4 - 2)^2 = 4 and (4 - 1)^2 = 9)
    assert losses.ipo_loss(logps, beta=0.25).loss.item() == 0.0
    out = losses.ipo_loss(logps, beta=0.5)
    assert math.isclose(out.loss.item(), 1.0)
    assert out.chosen_rewards.tolist() == [0.5] and out.rejected_rewards.tolist() == [-0.5]


def test_per_token_log_probs_divide_each_response_by_its_own_length():
    # chosen 2 tokens, rejected 4: policy (-1, -4) -> (-0.5, -1); reference (-2, -3) -> (-1, -0.75),
    # so h = (-0.5 - -1) - (-1 - -0.75) = 0.5 + 0.25 = 0.75 (dividing both by one length would give 1 or 0.5)
    logps = _logps()
    logps.chosen_tokens, logps.rejected_tokens = torch.tensor([2.0]), torch.tensor([4.0])
    mean = logps.per_token()
    assert [mean.policy_chosen.item(), mean.policy_rejected.item()] == [-0.5, -1.0]
    assert [mean.reference_chosen.item(), mean.reference_rejected.item()] == [-1.0, -0.75]
    assert mean.margin().item() == 0.75
    # IPO on the means, beta 0.5: (0.75 - 1)^2 = 0.0625
    assert math.isclose(losses.ipo_loss(mean, beta=0.5).loss.item(), 0.0625)
    with pytest.raises(ValueError, match="chosen_tokens"):
        _logps().per_token()
