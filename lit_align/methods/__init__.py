"""Training methods, each a LightningModule: ``SFT``, ``RewardModel``, ``DPO``, and online RL: ``OnlineRL``
(the loop, with any ``objectives.rl`` objective chosen by ``class_path``) and its presets ``RLOO`` and
``GRPO``. ``base.PolicyModule`` is what the policy methods share.

May import: ``lit_align.policy``, ``lit_align.lightning``, ``lit_align.sampling``, ``lit_align.objectives``,
``lit_align.rewards``, ``lit_align.modeling``, ``lit_align.data``; never ``lit_align.evaluation``.
"""

from lit_align.methods.dpo import DPO
from lit_align.methods.grpo import GRPO
from lit_align.methods.online import OnlineRL
from lit_align.methods.reward import RewardModel
from lit_align.methods.rloo import RLOO
from lit_align.methods.sft import SFT

__all__ = ["DPO", "GRPO", "OnlineRL", "RLOO", "RewardModel", "SFT"]
