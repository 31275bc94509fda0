"""Callbacks every method can use: Hugging Face export at the end of training."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

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
        if trainer.is_global_zero:
            path = pl_module.export(Path(self.dirpath))
            log.info("exported the trained model to %s", path)
            print(f"[lit_align] exported the trained model in Hugging Face format to {path}")
        trainer.strategy.barrier()
