"""What FSDP wraps: one shard unit per transformer block, found by class name across model families.

``configs/trainer/fsdp.yaml`` names :func:`transformer_blocks` as both the auto-wrap and the
activation-checkpointing policy, so any Hugging Face decoder (Llama, Qwen2, Mistral, ...) or encoder
(BERT, DeBERTa, DistilBERT) is sharded block by block without naming its classes in the config.
"""

from __future__ import annotations

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

# Block classes whose names do not end in DecoderLayer/EncoderLayer.
_OTHER_BLOCKS = {"BertLayer", "DebertaV2Layer", "DebertaLayer", "TransformerBlock", "GPT2Block"}


def is_transformer_block(module: nn.Module) -> bool:
    name = type(module).__name__
    return name.endswith(("DecoderLayer", "EncoderLayer")) or name in _OTHER_BLOCKS


def transformer_blocks(module: nn.Module, recurse: bool, nonwrapped_numel: int = 0) -> bool:
    """FSDP policy: descend everywhere, wrap each transformer block in its own unit."""
    return True if recurse else is_transformer_block(module)


class TransformerFSDP(FSDPStrategy):
    """Lightning's FSDP strategy with our defaults, all settable from YAML.

    One shard unit per transformer block; optional activation checkpointing per block; ``use_orig_params``
    on, because LoRA puts frozen and trainable weights in one unit (FSDP refuses that without it) and
    the optimiser then sees only trainable parameters.
    """

    def __init__(
        self,
        activation_checkpointing: bool = True,
        sharding_strategy: str = "FULL_SHARD",
        state_dict_type: str = "sharded",
        use_orig_params: bool = True,
        cpu_offload: bool = False,
        **kwargs,
    ):
        """
        Args:
            activation_checkpointing: recompute each block's activations in backward.
            sharding_strategy: FULL_SHARD, SHARD_GRAD_OP, NO_SHARD or HYBRID_SHARD.
            state_dict_type: "sharded" (one checkpoint file per rank) or "full" (gathered on rank 0).
            use_orig_params: keep the original parameters visible (needed for LoRA and frozen weights).
            cpu_offload: keep sharded parameters in CPU memory between uses.
        """
        super().__init__(
            auto_wrap_policy=transformer_blocks,
            activation_checkpointing_policy=transformer_blocks if activation_checkpointing else None,
            sharding_strategy=sharding_strategy,
            state_dict_type=state_dict_type,
            cpu_offload=cpu_offload,
            use_orig_params=use_orig_params,
            **kwargs,
        )
