"""``CurriculumFeedback``: an online-RL step's scored groups go back to the data's curriculum.

An online-RL method returns, from every ``training_step`` that drew prompts of a curriculum, the draw's
``outcomes`` (problem ids, draw number, group sizes, rewards before any length penalty). This callback
gathers every rank's (rank order), books them in the data module's curriculum on every rank, so all
ranks keep one posterior, and adds what the curriculum knows to the step's logged metrics: the share of
this optimiser step's drawn groups that carried signal and the samples it spent per such group, the same
since the start, the problems seen, and a histogram of their posterior pass rates. Online-RL methods add
it themselves, before ``RolloutLog``, which writes the metrics it extended.
"""

from __future__ import annotations

import math

import lightning as L
import torch.distributed as dist


class CurriculumFeedback(L.Callback):
    """Book each draw's outcomes in ``trainer.datamodule.curriculum`` and extend the step's metrics."""

    def __init__(self):
        self._step = {"groups": 0, "signal_groups": 0, "samples": 0}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        data = trainer.datamodule
        if getattr(data, "curriculum", None) is None:
            return
        mine = outputs.get("outcomes") if isinstance(outputs, dict) else None
        everyone = [mine]
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            everyone = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, mine)
        for o in everyone:  # rank order: every rank books the same outcomes in the same order
            if o is None:
                continue
            booked = data.book_outcomes(o["draw_index"], o["problem_ids"], o["group_sizes"], o["rewards"])
            self._step["groups"] += booked["groups"]
            self._step["signal_groups"] += booked["signal_groups"]
            self._step["samples"] += len(o["rewards"])
        metrics = outputs.get("metrics") if isinstance(outputs, dict) else None
        if metrics is not None:  # an optimiser step ended: its draws' figures join its row
            step = self._step
            metrics["curriculum/signal_share"] = step["signal_groups"] / max(step["groups"], 1)
            metrics["curriculum/samples_per_signal_group"] = (step["samples"] / step["signal_groups"]
                                                              if step["signal_groups"] else math.inf)
            metrics["curriculum/samples_drawn"] = float(step["samples"])
            metrics |= data.curriculum.metrics()
            self._step = {"groups": 0, "signal_groups": 0, "samples": 0}
