"""Training methods, each a LightningModule."""

from lit_align.methods.dpo import DPO
from lit_align.methods.grpo import GRPO
from lit_align.methods.reward import RewardModel
from lit_align.methods.rloo import RLOO
from lit_align.methods.sft import SFT

__all__ = ["DPO", "GRPO", "RLOO", "RewardModel", "SFT"]
