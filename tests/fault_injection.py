"""A callback that kills its own training process after a given optimiser step (fault injection)."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAfterStep(L.Callback):
    """Send ``signal_name`` (SIGKILL, SIGTERM, ...) to this process once ``step`` optimiser steps are done."""

    def __init__(self, step: int, signal_name: str = "SIGKILL"):
        self.step, self.signal = step, getattr(signal, signal_name)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signal)


class GlobalLossCurve(L.Callback):
    """Record the global-batch loss after every optimiser step to ``path`` (JSON list), on rank 0.

    Each rank's loss is its share of the global mean scaled by the world size (SFT) or the mean over
    its equal share of pairs (DPO), so the mean over ranks is the loss of the whole global batch.
    """

    def __init__(self, path: str):
        self.path, self.values = path, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"].detach().clone()
        if trainer.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(loss)
            loss /= trainer.world_size
        self.values.append(loss.item())

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            import json

            with open(self.path, "w") as f:
                json.dump(self.values, f)


class StepProgress(L.Callback):
    """On rank 0, write the optimiser step reached to ``path`` after every step, then sleep ``seconds``.

    Slows a tiny run down enough for a test to watch ``path`` and send a signal part way through.
    """

    def __init__(self, path: str, seconds: float = 0.0):
        self.path, self.seconds = path, seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.is_global_zero:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as f:
                f.write(str(trainer.global_step))
            os.replace(tmp, self.path)
        if self.seconds:
            import time

            time.sleep(self.seconds)
