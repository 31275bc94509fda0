"""Token-budget micro-batches and the prompt forwarded once leave the update unchanged, for every GRPO
loss type, with and without LoRA; the budget cuts rows as documented and recomputes only above its
memory budget."""

from __future__ import annotations

import pytest
import torch

from lit_align.data.datamodule import AlignDataModule
from lit_align.methods import GRPO, micro_batches
from lit_align.methods.grpo import LOSS_TYPES
from lit_align.rewards.base import Reward

from conftest import largest_relative_difference, pinned_grpo, trainer

RECORDS = [{"prompt": "hello"}, {"prompt": "the quick brown fox jumps over the lazy dog"}, {"prompt": "say a"}]
K = 3


class CharSum(Reward):
    def __call__(self, prompts, completions, records):
        return torch.tensor([float(sum(map(ord, c)) % 7) for c in completions])


def _update(monkeypatch, tokenizer, loss_type: str, lora: bool, **loop) -> tuple[dict, list[range]]:
    """The weights' change after one plain-SGD step (lr 1) on pinned samples, and the micro-batches learnt."""
    module, start, pinned = pinned_grpo(monkeypatch, tokenizer, RECORDS, lora, reward=CharSum(), num_generations=K,
                                        loss_type=loss_type, beta=0.1, **loop)
    learnt: list[range] = []
    plan = micro_batches.plan_micro_batches
    monkeypatch.setattr(micro_batches, "plan_micro_batches", lambda *a, **k: learnt.append(plan(*a, **k)) or learnt[-1])

    class Once:
        def records(self):
            yield from (("m", r) for r in RECORDS)

    trainer(max_steps=1, limit_val_batches=0).fit(
        module, AlignDataModule(Once(), batch_size=len(RECORDS)).connect(module.tokenizer, module.batch_kind))
    assert CharSum()(None, pinned.texts, None).std() > 0, "rewards must vary for the check to mean something"
    return {n: start[n] - p.detach() for n, p in module.policy.named_parameters() if p.requires_grad}, learnt[-1], pinned


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
def test_token_budgets_and_the_shared_prompt_give_the_whole_batch_update(monkeypatch, tokenizer, loss_type, lora):
    expected, whole, pinned = _update(monkeypatch, tokenizer, loss_type, lora, share_prompt=False)
    assert len(whole) == 1 and any(float(t.abs().max()) > 1e-4 for t in expected.values())
    tokens = micro_batches.RowTokens.of(pinned)
    groups = [tokens.forwarded(range(g, g + K), True, K) for g in range(0, len(pinned), K)]
    for budget, whole_groups in ((max(groups), True), (min(groups) - 1, False)):
        got, learnt, _ = _update(monkeypatch, tokenizer, loss_type, lora, max_tokens_per_micro_batch=budget)
        assert all(tokens.forwarded(r, True, K) <= budget or len(r) == 1 for r in learnt)
        assert all(r.start % K == 0 and r.stop % K == 0 for r in learnt) == whole_groups, learnt
        assert len(learnt) > 1
        assert largest_relative_difference(got, expected) <= 1e-5, (budget, learnt)


def test_recompute_follows_the_memory_budget():
    config = type("C", (), dict(num_hidden_layers=30, hidden_size=576, intermediate_size=1536, vocab_size=100))
    layers, head = 30 * 6 * (576 + 1536) * 4, 100 * 4
    assert micro_batches.activation_bytes(config, 1) == layers + head
    assert micro_batches.activation_bytes(config, 1000, lora=True) == 1400 * layers + 1000 * head
    gib = 2**30
    assert micro_batches.needs_recompute(True, None, 1)  # no budget: every micro-batch recomputes
    assert not micro_batches.needs_recompute(True, 1.0, gib) and micro_batches.needs_recompute(True, 1.0, gib + 1)
    assert not micro_batches.needs_recompute(False, 1.0, 10 * gib)


def test_the_budget_counts_each_groups_prompt_once_per_micro_batch_and_keeps_groups_whole():
    t = micro_batches.RowTokens(completion=[5, 1, 9, 9, 0, 3], prompt=[4, 4, 2, 2, 6, 6])
    assert t.forwarded(range(0, 6), True, 2) == (4 + 0 + 8 + 8 + 0 + 2) + 4 + 2 + 6
    assert t.forwarded(range(1, 4), True, 2) == (0 + 8 + 8) + 4 + 2  # a group's tail still pays its prompt
    assert t.forwarded(range(0, 2), False, 2) == 4 + 0 + 8
    assert micro_batches.plan_micro_batches(range(6), t, 2, None, 30) == [range(0, 4), range(4, 6)]
    assert micro_batches.plan_micro_batches(range(6), t, 2, None, 12) == [range(0, 2), range(2, 3), range(3, 4),
                                                                          range(4, 6)]
    assert micro_batches.plan_micro_batches(range(6), t, 2, 3, None) == [range(0, 3), range(3, 6)]


@pytest.mark.parametrize("settings, message", [
    (dict(max_tokens_per_micro_batch=0), "max_tokens_per_micro_batch must be at least 1"),
    (dict(activation_memory_budget_gib=0.0), "activation_memory_budget_gib must be > 0"),
])
def test_budgets_out_of_range_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        GRPO(model="tiny:causal-lm", reward=CharSum(), **settings)
