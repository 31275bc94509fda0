"""Groups whose rewards are all equal have advantages of exactly 0, and where the objective adds nothing
for a zero advantage the loop runs no pass over them: the update is the one the loop makes when it runs
every group, for every GRPO loss type, with and without LoRA, and an optimiser step whose groups were
all skipped still steps (AdamW's weight decay) as the unskipped loop does."""

from __future__ import annotations

import pytest
import torch

from lit_align.data.datamodule import AlignDataModule
from lit_align.methods import OnlineRL
from lit_align.methods.grpo import LOSS_TYPES
from lit_align.rewards.base import Reward

from conftest import largest_relative_difference, pinned_grpo, trainer

RECORDS = [{"prompt": "hello"}, {"prompt": "the quick brown fox jumps over the lazy dog"}, {"prompt": "say a"},
           {"prompt": "two words"}]
K = 3
LEARN, LEARN_MICRO_BATCH = OnlineRL.learn, OnlineRL._learn_micro_batch  # before any test patches them


class FlatFor(Reward):
    """0.9 for every completion of the prompts listed in ``flat`` (three such rewards give GRPO advantages
    of 6e-4 from the rounding of their mean alone), else a score that varies with the completion."""

    def __init__(self, flat: tuple[str, ...]):
        self.flat = flat

    def __call__(self, prompts, completions, records):
        return torch.tensor([0.9 if r["prompt"] in self.flat else float(sum(map(ord, c)) % 7)
                             for c, r in zip(completions, records)])


def _update(monkeypatch, tokenizer, flat: tuple[str, ...], steps: int = 1, loss_type: str = "dapo",
            lora: bool = True, optimizer=None, beta: float = 0.0, **loop) -> tuple[dict, list[list[range]], list[list[int]]]:
    """The weights' change after ``steps`` optimiser steps on pinned samples (each step the same four
    prompts), the rows of every micro-batch learnt and the flat groups, step by step."""
    loop |= {"optimizer": optimizer} if optimizer else {}
    module, start, _ = pinned_grpo(monkeypatch, tokenizer, RECORDS, lora, reward=FlatFor(flat), num_generations=K,
                                   loss_type=loss_type, beta=beta, micro_batch_size=K, **loop)
    learnt: list[list[range]] = []

    def recorded(self, batch, rows, *args):
        learnt[-1].append(range(rows.start, rows.stop))
        return LEARN_MICRO_BATCH(self, batch, rows, *args)

    monkeypatch.setattr(OnlineRL, "_learn_micro_batch", recorded)
    def learn(self, b):
        flat_groups.append([g for g in range(len(RECORDS)) if bool((b.rollouts.rewards[g * K : (g + 1) * K] == 0.9).all())])
        learnt.append([])
        return LEARN(self, b)

    flat_groups: list[list[int]] = []
    monkeypatch.setattr(OnlineRL, "learn", learn)

    class Repeat:
        def records(self):
            for _ in range(steps):
                yield from (("m", r) for r in RECORDS)

    trainer(max_steps=steps, limit_val_batches=0).fit(
        module, AlignDataModule(Repeat(), batch_size=len(RECORDS)).connect(module.tokenizer, module.batch_kind))
    return ({n: start[n] - p.detach() for n, p in module.policy.named_parameters() if p.requires_grad}, learnt,
            flat_groups)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
def test_skipping_flat_groups_leaves_the_update_unchanged(monkeypatch, tokenizer, loss_type, lora):
    flat = ("hello", "say a")  # the first and third groups
    expected, every, _ = _update(monkeypatch, tokenizer, flat, loss_type=loss_type, lora=lora,
                                 skip_zero_advantage_groups=False)
    got, skipped, [flat_groups] = _update(monkeypatch, tokenizer, flat, loss_type=loss_type, lora=lora)
    groups = [range(g * K, (g + 1) * K) for g in range(len(RECORDS))]
    assert every == [groups] and len(flat_groups) == 2
    assert skipped == [[r for g, r in enumerate(groups) if g not in flat_groups]]  # the flat groups ran no pass
    assert any(float(t.abs().max()) > 1e-4 for t in expected.values()), "the step must move the weights"
    assert largest_relative_difference(got, expected) <= 1e-6


@pytest.mark.parametrize("settings", [{"beta": 0.1}, {"entropy_coef": 0.01}], ids=["kl_in_loss", "entropy_bonus"])
def test_a_kl_in_the_loss_or_an_entropy_bonus_runs_every_group(monkeypatch, tokenizer, settings):
    """There a flat group's loss is not 0: its KL (or entropy) still pulls on the weights."""
    _, learnt, [flat_groups] = _update(monkeypatch, tokenizer, ("hello", "say a"), **settings)
    assert len(flat_groups) == 2 and learnt == [[range(g * K, (g + 1) * K) for g in range(len(RECORDS))]]


def test_a_step_with_every_group_flat_still_steps_like_the_unskipped_loop(monkeypatch, tokenizer):
    """AdamW decays weights even on zero gradients, and passes over a gradient left None: a step whose
    groups were all skipped must leave zeros, not None, behind."""
    flat = tuple(r["prompt"] for r in RECORDS)

    def adamw(params):
        return torch.optim.AdamW(params, lr=0.1, weight_decay=0.5)

    expected, every, _ = _update(monkeypatch, tokenizer, flat, steps=2, optimizer=adamw,
                                 skip_zero_advantage_groups=False)
    got, skipped, _ = _update(monkeypatch, tokenizer, flat, steps=2, optimizer=adamw)
    assert [len(s) for s in every] == [4, 4] and skipped == [[], []]
    assert any(float(t.abs().max()) > 1e-4 for t in expected.values()), "weight decay must move the weights"
    assert largest_relative_difference(got, expected) <= 1e-6


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "cispo"])
def test_the_sampling_weights_pass_skips_flat_groups_too(monkeypatch, tokenizer, loss_type):
    """Two optimiser steps per generation batch: the clipped ratio needs the sampling weights' log-probs,
    from a separate no-grad pass before the first step. Flat groups run neither that pass nor a training
    pass, and both steps' updates are those of running every group."""
    flat = ("hello", "say a")
    no_grad_rows: list[int] = []
    logps = OnlineRL._logps

    def recorded(self, model, samples, *args, **kwargs):
        if not torch.is_grad_enabled():
            no_grad_rows.append(len(samples))
        return logps(self, model, samples, *args, **kwargs)

    monkeypatch.setattr(OnlineRL, "_logps", recorded)
    expected, every, _ = _update(monkeypatch, tokenizer, flat, steps=2, loss_type=loss_type,
                                 steps_per_generation=2, skip_zero_advantage_groups=False)
    rows_every, no_grad_rows[:] = sum(no_grad_rows), []
    got, skipped, [flat_groups] = _update(monkeypatch, tokenizer, flat, steps=2, loss_type=loss_type,
                                          steps_per_generation=2)
    live = len(RECORDS) - len(flat_groups)  # the batch draws 4 of the 8 records (each prompt twice), shuffled
    assert flat_groups and live, "the batch must hold flat groups and others for the check to mean something"
    assert rows_every == K * len(RECORDS) and sum(no_grad_rows) == K * live
    assert [len(s) for s in every] == [4] and [len(s) for s in skipped] == [live]
    assert any(float(t.abs().max()) > 1e-4 for t in expected.values()), "the steps must move the weights"
    assert largest_relative_difference(got, expected) <= 1e-6
