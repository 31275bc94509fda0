"""FLOPs of an RL step's training passes, counted by torch's ``FlopCounterMode`` outside the timed steps.

``FlopReplay`` keeps what the rollout engine and the reward returned in the first measured steps, and
after the measured steps has the Trainer run that many more steps in which the engine and the reward
hand those back instead of sampling: each such replay runs exactly the passes of its recorded step (the
same tokens, rows and micro-batches; the weights are later ones, which changes no FLOP) under the
counter, untimed. The count is of the matrix products executed (matmuls and attention), so padding,
a prompt forwarded k times and checkpointing's recomputation all count: what the machine did, the
figure an MFU of the measured time divides. Attention counts the full (not causally halved) score
matrix, as torch's own formulas do; torch has none for the CPU's flash attention, so ``counter`` adds it.
"""

from __future__ import annotations

import time

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from .phases import defining_modules

_aten = torch.ops.aten


def _cpu_sdpa(query, key, value, *args, out_val=None, **kwargs) -> int:
    """QK^T and PV: 2 b h s_q s_k (d + d_v); ``query``, ``key``, ``value`` are shapes (b, h, s, d)."""
    b, h, s_q, d = query
    s_k, d_v = value[-2], value[-1]
    return 2 * b * h * s_q * s_k * (d + d_v)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    """dV, dP, dQ and dK, one product each, as torch counts its GPU kernels' backward: 4 b h s_q s_k (d + d_v)."""
    return 2 * _cpu_sdpa(query, key, value)


CPU_ATTENTION = {_aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
                 _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward}


def counter() -> FlopCounterMode:
    """torch's FLOP counter, quiet, with the CPU flash-attention formulas added."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)


def by_op(mode: FlopCounterMode) -> dict[str, int]:
    return {str(op): int(n) for op, n in mode.get_flop_counts().get("Global", {}).items()}


class FlopReplay(L.Callback):
    """Record steps ``first .. first+n-1``; replay them, counted, as steps ``replay_at .. replay_at+n-1``."""

    def __init__(self, first: int, n: int, replay_at: int):
        self.record = range(first, first + n)
        self.replay = range(replay_at, replay_at + n)
        self.kept: dict[str, list] = {"sample": [], "score": []}
        self.step = 0
        self.counts: list[dict] = []

    def _kept_or_run(self, key: str, fn):
        def call(*args, **kwargs):
            if self.step in self.replay:
                return self.kept[key][self.step - self.replay.start]
            out = fn(*args, **kwargs)
            if self.step in self.record:
                self.kept[key].append(out)
            return out

        return call

    def _counted(self, training_step):
        def call(*args, **kwargs):
            if self.step not in self.replay:
                return training_step(*args, **kwargs)
            start, mode = time.perf_counter(), counter()
            with mode:
                out = training_step(*args, **kwargs)
            self.counts.append({"flops": int(mode.get_total_flops()), "counted_s": time.perf_counter() - start,
                                "by_op": by_op(mode)})
            return out

        return call

    def on_train_start(self, trainer, pl_module):  # after any timers: the replay hands back, untimed
        pl_module.rollout.sample = self._kept_or_run("sample", pl_module.rollout.sample)
        for owner in defining_modules(pl_module):
            if owner.__name__.startswith("lit_align.") and hasattr(owner, "score_samples"):
                owner.score_samples = self._kept_or_run("score", owner.score_samples)
        pl_module.training_step = self._counted(pl_module.training_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.step += 1

    def result(self) -> dict:
        """Per replayed step: its index among the measured steps, the FLOPs counted, the counted step's seconds."""
        measured = [i - self.record.start for i in self.record][: len(self.counts)]
        return {"steps": measured, "flops": [c["flops"] for c in self.counts],
                "counted_s": [c["counted_s"] for c in self.counts],
                "by_op": self.counts[0]["by_op"] if self.counts else {}}
