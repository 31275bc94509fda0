import random

import pytest
import torch

from lit_align.cli import connect
from lit_align.data.collate import collate_preference
from lit_align.data.datamodule import AlignDataModule
from lit_align.methods.reward import BradleyTerry, RewardModel, ScoreRegression
from lit_align.rewards.model import RewardModelScorer, reward_scores

from in_memory import InMemory
from conftest import trainer

FILLER = "the quick brown fox jumps over lazy dog hello world".split()


def good_bad_pairs(n, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choices(FILLER, k=4))
        body = " ".join(rng.choices(FILLER, k=rng.randint(2, 6)))
        rows.append({"prompt": prompt, "chosen": f"{body} good", "rejected": f"{body} bad", "score_chosen": 1.0, "score_rejected": 0.0})
    return rows


@pytest.mark.parametrize("backbone", ["tiny:classifier", "tiny:causal-lm"])
def test_reward_model_learns_held_out_preferences_and_exports(backbone, tmp_path):
    torch.manual_seed(0)
    rm = RewardModel(model=backbone, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    data = AlignDataModule(InMemory(good_bad_pairs(64, 0)), val=InMemory(good_bad_pairs(32, 1)), batch_size=8, max_length=64)
    connect(data, rm)  # the data is told the RM's tokenizer; the RM is handed the length it exports
    before = trainer().validate(rm, data, verbose=False)[0]["val/accuracy"]
    trainer(max_steps=40, limit_val_batches=0).fit(rm, data)
    after = trainer().validate(rm, data, verbose=False)[0]["val/accuracy"]
    assert after >= 0.9 and after > before, (before, after)

    rm.export(tmp_path / "rm")
    scorer = RewardModelScorer(str(tmp_path / "rm"))
    assert scorer.max_length == 64
    rows = good_bad_pairs(4, 2)
    rm.eval()
    batch = collate_preference([data._prepare([("x", r)], "x")[0] for r in rows], rm.tokenizer.pad_token_id)
    with torch.no_grad():
        chosen, rejected = rm(batch)
    got = scorer.score([r["prompt"] for r in rows] * 2, [r["chosen"] for r in rows] + [r["rejected"] for r in rows])
    assert torch.allclose(got, torch.cat([chosen, rejected]), atol=1e-5)


def test_causal_reward_reads_the_last_attended_token():
    rm = RewardModel(model="tiny:causal-lm")
    rm.configure_model()
    ids = torch.tensor([[1, 40, 41, 42]])
    alone = reward_scores(rm.model, ids, torch.ones_like(ids))
    padded = reward_scores(rm.model, torch.tensor([[1, 40, 41, 42, 0, 0]]), torch.tensor([[1, 1, 1, 1, 0, 0]]))
    assert torch.allclose(alone, padded, atol=1e-6)


def test_reward_losses_need_scores_when_they_use_them():
    r = torch.tensor([1.0])
    nan = torch.tensor([float("nan")])
    with pytest.raises(ValueError, match="score"):
        ScoreRegression()(r, r, nan, nan)
    with pytest.raises(ValueError, match="score"):
        BradleyTerry(score_margin=True)(r, r, nan, nan)
    assert BradleyTerry()(r, r, nan, nan).item() == pytest.approx(0.6931, abs=1e-4)


@pytest.mark.parametrize("backbone", ["tiny:classifier", "tiny:causal-lm"])
def test_unpadded_reward_scores_equal_the_padded_batch_with_gradients(backbone):
    rm = RewardModel(model=backbone)
    rm.configure_model()
    rm.model.eval()
    torch.manual_seed(0)
    ids = torch.randint(5, 200, (5, 30))
    mask = torch.zeros_like(ids)
    for row, n in enumerate([30, 4, 17, 9, 28]):
        mask[row, :n] = 1
    ids = ids.masked_fill(mask == 0, 0)
    dense = reward_scores(rm.model, ids, mask, unpad=False)
    params = [p for p in rm.model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(dense.sum(), params)
    for overhead in (0, 8, 1000):
        fast = reward_scores(rm.model, ids, mask, group_overhead=overhead)
        assert torch.allclose(dense, fast, atol=1e-5)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, torch.autograd.grad(fast.sum(), params)))


def test_exported_length_is_handed_over_by_connect_and_required(tmp_path):
    rm = RewardModel(model="tiny:classifier")
    rm.configure_model()
    with pytest.raises(ValueError, match=r"connect\(data, rm\)"):
        rm.export(tmp_path / "unconnected")  # no length to record: refused, not a silent default
    data = AlignDataModule(InMemory(good_bad_pairs(4, 0)), max_length=40)
    data.connect(rm.tokenizer, rm.batch_kind)
    assert rm.max_length is None, "the data's own connect tells the data only"
    assert connect(data, rm) is data and rm.max_length == 40
    assert RewardModelScorer(str(rm.export(tmp_path / "rm"))).max_length == 40


def test_gradient_checkpointing_gives_the_same_reward_model_step():
    """The switch recomputes activations in backward (the encoder reports it on) and changes no weight update."""
    weights = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        rm = RewardModel(model="tiny:classifier", gradient_checkpointing=checkpointing,
                         optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
        data = connect(AlignDataModule(InMemory(good_bad_pairs(8, 0)), batch_size=8, max_length=64), rm)
        trainer(max_steps=1, limit_val_batches=0).fit(rm, data)
        assert rm.model.is_gradient_checkpointing == checkpointing
        weights[checkpointing] = {k: v.detach().clone() for k, v in rm.model.state_dict().items()}
    assert all(torch.allclose(weights[False][k], weights[True][k], atol=1e-6) for k in weights[False])
