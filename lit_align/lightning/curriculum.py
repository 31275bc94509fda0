"""``CurriculumLog``: what a self-paced curriculum did in an online-RL step, added to the step's logged row.

An online-RL method whose data has a curriculum books each draw's outcomes with it inside
``training_step`` (``OnlineRL._book_outcomes``: every rank's, so every rank keeps one posterior) and
returns them under ``outcomes``, one entry per rank. This callback sums them over the draws of an
optimiser step and, when the step's metrics arrive, adds: the share of the drawn groups that carried
signal (rewards not all equal), the samples spent per such group, the samples drawn and their mean reward
(every drawn sample, set-aside groups included, before any length penalty), and what the curriculum
knows (problems seen, the same shares since the start, a histogram of the posterior pass rates).
Online-RL methods add it themselves, before ``RolloutLog``, which writes the row it extended.
"""

from __future__ import annotations

import math

import lightning as L


def _empty() -> dict:
    return {"groups": 0, "signal_groups": 0, "samples": 0, "reward": 0.0}


class CurriculumLog(L.Callback):
    """Add the curriculum's figures to each optimiser step's metrics row."""

    def __init__(self):
        self._step = _empty()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if not isinstance(outputs, dict):
            return
        for o in outputs.get("outcomes") or []:
            start = 0
            for size in o["group_sizes"]:
                group = o["rewards"][start : start + size]
                start += size
                self._step["signal_groups"] += max(group) != min(group)
            self._step["groups"] += len(o["group_sizes"])
            self._step["samples"] += len(o["rewards"])
            self._step["reward"] += sum(o["rewards"])
        metrics = outputs.get("metrics")
        curriculum = getattr(trainer.datamodule, "curriculum", None)
        if metrics is None or not self._step["groups"]:
            return
        step = self._step  # an optimiser step ended: its draws' figures join its row
        metrics["curriculum/signal_share"] = step["signal_groups"] / step["groups"]
        metrics["curriculum/samples_per_signal_group"] = (step["samples"] / step["signal_groups"]
                                                          if step["signal_groups"] else math.inf)
        metrics["curriculum/samples_drawn"] = float(step["samples"])
        metrics["curriculum/groups_drawn"] = float(step["groups"])
        metrics["curriculum/reward_drawn"] = step["reward"] / step["samples"]
        if curriculum is not None:
            metrics |= curriculum.metrics()
        self._step = _empty()
