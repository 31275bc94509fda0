"""Training methods, each a LightningModule."""

from lit_align.methods.sft import SFT

__all__ = ["SFT"]
