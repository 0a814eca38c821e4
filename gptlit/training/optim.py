"""The optimizer's defaults, written here once: OptimConfig (`optim=adamw`), and their check.

gptlit.run.config_store registers OptimConfig as Hydra's `optim` config group.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gptlit.core.errors import UserError, check_keys


@dataclass
class OptimConfig:
    """AdamW with an lr schedule (the `optim` group). Weight decay applies to matrices (linear and
    embedding weights), never to biases or LayerNorm parameters, unless decay_all is set."""

    lr: float = 1e-3
    weight_decay: float = 0.1
    # true: weight decay on every parameter, biases and LayerNorm weights too, in one group (the book's
    # AdamW(model.parameters(), weight_decay=0.1)); false: matrices only
    decay_all: bool = False
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float | None = 1.0  # max global gradient norm before each optimizer step (works with fused AdamW); None = off
    scheduler: str = "cosine"  # cosine | constant
    warmup_steps: int = 20  # linear warmup from lr / warmup_steps to lr
    min_lr_ratio: float = 0.1  # cosine ends at lr * min_lr_ratio
    fused: bool | None = None  # None = the fused AdamW kernel (one pass over the weights) on CUDA and CPU; false = for-loop kernel

    def to_dict(self) -> dict:
        """A plain dict (what checkpoints store: they load with weights_only=True)."""
        return dataclasses.asdict(self)

    @classmethod
    def of(cls, o: dict) -> "OptimConfig":
        """OptimConfig's defaults with `o` (an `optim` node as a dict) on top, checked once."""
        return cls(**validate_optim(o))


def validate_optim(o: dict) -> dict:
    """OptimConfig's values with `o` on top, checked; a plain dict (checkpoints load with weights_only=True)."""
    fields = {f.name for f in dataclasses.fields(OptimConfig)}
    check_keys(o, fields, "optim", "an optimizer setting")
    o = {**OptimConfig().to_dict(), **o}
    if not (isinstance(o["lr"], (int, float)) and not isinstance(o["lr"], bool) and o["lr"] > 0):
        raise UserError(f"optim.lr={o['lr']} must be > 0 (e.g. optim.lr=4e-4)")
    if o["weight_decay"] < 0:
        raise UserError(f"optim.weight_decay={o['weight_decay']} must be >= 0")
    if not isinstance(o["decay_all"], bool):
        raise UserError(f"optim.decay_all={o['decay_all']} must be true or false")
    if o["grad_clip"] is not None and o["grad_clip"] <= 0:
        raise UserError(f"optim.grad_clip={o['grad_clip']} must be > 0, or null to turn clipping off")
    if o["scheduler"] not in ("cosine", "constant"):
        raise UserError(f"optim.scheduler={o['scheduler']} is unknown: use cosine or constant")
    if o["warmup_steps"] < 0:
        raise UserError(f"optim.warmup_steps={o['warmup_steps']} must be >= 0")
    if not 0 <= o["min_lr_ratio"] <= 1:
        raise UserError(f"optim.min_lr_ratio={o['min_lr_ratio']} must be in [0, 1]")
    return o
