"""Lightning strategies configured for gptlit's model (conf/trainer/fsdp.yaml instantiates fsdp_strategy)."""

from __future__ import annotations


def fsdp_strategy(activation_checkpointing: bool = False, **kwargs):
    """Lightning's FSDPStrategy sharding each transformer Block (and recomputing its activations if asked).

    kwargs go to FSDPStrategy, e.g. sharding_strategy=SHARD_GRAD_OP or cpu_offload=true.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    from gptlit.model.gpt import Block

    return FSDPStrategy(
        auto_wrap_policy={Block},
        activation_checkpointing_policy={Block} if activation_checkpointing else None,
        **kwargs,
    )
