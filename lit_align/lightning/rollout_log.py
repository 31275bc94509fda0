"""Where online RL's rows go: ``RolloutLog`` writes what a training step hands Lightning to every logger.

The online-RL methods return plain rows from ``training_step`` (a dict: ``metrics``, floats over every
rank's samples, and ``completions``, a few prompts with their completions, rewards and advantages) and
know no logger. This callback receives them in ``on_train_batch_end`` and writes, on global rank zero,
the metrics as one row at the step's optimiser step (Lightning would otherwise write the last on-step
values again at every later batch, and a batch that only draws would repeat the step before it), and
the completions as TensorBoard text, a W&B table, or else ``completions.jsonl`` in the logger's folder.
The methods add it themselves (``configure_callbacks``).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

COLUMNS = ["step", "prompt", "completion", "reward", "advantage"]


class RolloutLog(L.Callback):
    """Write the metrics and completions an online-RL step returns to the trainer's loggers."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if not outputs or not trainer.is_global_zero:
            return
        step = trainer.global_step
        if outputs.get("metrics"):
            for logger in trainer.loggers:
                logger.log_metrics(outputs["metrics"], step=step)
        if outputs.get("completions"):
            for logger in trainer.loggers:
                write_completions(logger, outputs["completions"], step, trainer.default_root_dir)


def write_completions(logger, rows: list[dict], step: int, default_dir: str) -> None:
    """One logger's record of ``rows`` (dicts with the ``COLUMNS``)."""
    if isinstance(logger, TensorBoardLogger):
        table = "| prompt | completion | reward | advantage |\n|---|---|---|---|\n" + "\n".join(
            f"| {_cell(r['prompt'])} | {_cell(r['completion'])} | {r['reward']:.3f} | {r['advantage']:.3f} |" for r in rows)
        logger.experiment.add_text("completions", table, step)
    elif isinstance(logger, WandbLogger):
        logger.log_table("completions", columns=COLUMNS, data=[[r[c] for c in COLUMNS] for r in rows])
    else:
        folder = Path(logger.log_dir) if logger.log_dir else Path(default_dir)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "completions.jsonl", "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")
