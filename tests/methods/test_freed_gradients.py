"""Every method frees applied gradients before the next forward, and still accumulates within a window
(Lightning's for SFT, DPO and the reward model; online RL's own micro-batches inside each step)."""

import lightning as L
import pytest
import torch

from lit_align.data.datamodule import AlignDataModule
from lit_align.sampling.generate import SamplingParams
from lit_align.methods import DPO, RLOO, SFT, RewardModel
from lit_align.rewards.base import Reward

from in_memory import InMemory


class Length(Reward):
    def __call__(self, prompts, completions, records):
        return torch.tensor([len(c) / 10 for c in completions])


def sft_records(n):
    return [{"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "an answer " * (1 + i % 3)}]}
            for i in range(n)]


def pair_records(n):
    return [{"prompt": f"question {i}", "chosen": "a good answer " * (1 + i % 2), "rejected": "bad"} for i in range(n)]


def prompt_records(n):
    return [{"prompt": f"say something {i}"} for i in range(n)]


METHODS = {
    "sft": (lambda: SFT(model="tiny:causal-lm"), sft_records),
    "dpo": (lambda: DPO(model="tiny:causal-lm"), pair_records),
    "rm": (lambda: RewardModel(model="tiny:classifier"), pair_records),
    "rloo": (lambda: RLOO(model="tiny:causal-lm", reward=Length(), rloo_k=2, micro_batch_size=2,
                          generation=SamplingParams(max_new_tokens=4)), prompt_records),
}


class GradientsAtBatchStart(L.Callback):
    """Whether any trainable parameter holds a gradient when each micro-batch starts (before its forward)."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append(any(p.grad is not None for p in pl_module.parameters() if p.requires_grad))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_applied_gradients_are_freed_before_the_next_forward(method):
    torch.manual_seed(0)
    build, records = METHODS[method]
    probe = GradientsAtBatchStart()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, max_steps=2,
                        accumulate_grad_batches=1 if method == "rloo" else 2, callbacks=[probe])
    module = build()
    trainer.fit(module, AlignDataModule(InMemory(records(8)), batch_size=2, max_length=64).connect(module.tokenizer, module.batch_kind))
    if method == "rloo":  # each batch is a whole step (2 micro-batches of 2 of its 4 samples): none left over
        assert probe.seen == [False, False]
        return
    # micro-batches 0,1 make step 1 and 2,3 make step 2: gradients live inside a window only
    assert probe.seen == [False, True, False, True]
    assert all(p.grad is None for p in module.parameters())
