import math

import torch

from lit_align import losses, ops
from lit_align.data.formats import IGNORE_INDEX


def test_token_logprobs_matches_hand_values():
    # One row, vocab 2. Position 0 predicts token at 1, position 1 predicts token at 2.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, 5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    got = ops.token_logprobs(logits, labels)
    # log p(1 | uniform) = log 1/2; log p(0 | logits [log 3, 0]) = log 3/4
    assert torch.allclose(got, torch.tensor([[math.log(0.5), math.log(0.75)]]), atol=1e-6)


def test_token_logprobs_zero_on_ignored_and_chunking_is_exact():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    labels = torch.randint(0, 11, (3, 7))
    labels[0, :4] = IGNORE_INDEX
    full = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None]).squeeze(-1)
    full = full * (labels[:, 1:] != IGNORE_INDEX)
    for chunk in (1, 5, 1000):
        assert torch.allclose(ops.token_logprobs(logits, labels, chunk_size=chunk), full, atol=1e-6)
    assert ops.token_logprobs(logits, labels)[0, :3].abs().sum() == 0


def test_sft_loss_hand_computed():
    token_logps = torch.tensor([[math.log(0.5), math.log(0.25)], [math.log(0.8), math.log(0.1)]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    # Three loss tokens: -(log .5 + log .25 + log .1) / 3
    expected = -(math.log(0.5) + math.log(0.25) + math.log(0.1)) / 3
    assert math.isclose(losses.sft_loss(token_logps, mask, 3).item(), expected, rel_tol=1e-6)
    # A window-wide normalizer (6 tokens in the whole global batch) halves it.
    assert math.isclose(losses.sft_loss(token_logps, mask, 6).item(), expected / 2, rel_tol=1e-6)
