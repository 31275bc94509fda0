"""Callbacks every method can use: Hugging Face export after fit, predictions to jsonl."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.strategies import FSDPStrategy

log = logging.getLogger(__name__)


class HFExport(L.Callback):
    """After ``fit``, save the trained model (LoRA merged) and tokenizer in Hugging Face format."""

    def __init__(self, dirpath: str = "outputs/export"):
        """
        Args:
            dirpath: folder for config.json, weights and tokenizer files; ``from_pretrained`` loads it.
        """
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module) -> None:
        with full_parameters(trainer):  # every rank takes part in gathering; rank 0 writes
            if trainer.is_global_zero:
                path = pl_module.export(Path(self.dirpath))
                log.info("exported the trained model to %s", path)
                print(f"[lit_align] exported the trained model in Hugging Face format to {path}")
        trainer.strategy.barrier()


def full_parameters(trainer: L.Trainer):
    """Context in which rank 0 holds whole (unsharded) parameters on CPU; a no-op unless FSDP shards them."""
    if not isinstance(trainer.strategy, FSDPStrategy):
        return contextlib.nullcontext()
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel.summon_full_params(
        trainer.strategy.model, writeback=False, rank0_only=True, offload_to_cpu=True
    )


class JsonlPredictionWriter(BasePredictionWriter):
    """Write each ``predict`` output row (record + completion) as one JSON line."""

    def __init__(self, path: str = "outputs/predictions.jsonl"):
        """
        Args:
            path: output file; with several devices each rank writes ``path`` with ``.rankN`` added.
        """
        super().__init__(write_interval="batch")
        self.path = path
        self._opened: set[str] = set()

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        path = Path(self.path if trainer.world_size == 1 else f"{self.path}.rank{trainer.global_rank}")
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = "a" if str(path) in self._opened else "w"
        self._opened.add(str(path))
        with path.open(mode, encoding="utf-8") as f:
            for row in prediction:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
