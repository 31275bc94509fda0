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
