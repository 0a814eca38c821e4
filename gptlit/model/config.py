"""The model's defaults, written here once.

GPTConfig and PRESETS are the model (`model=nano|mini|small|medium|large|xl`); the optimizer's
defaults are gptlit.training.optim.OptimConfig (`optim=adamw`). gptlit.run.config_store registers
them as Hydra's `model` and `optim` config groups, so `python train.py` and Python callers start
from the same values.

  preset_of   the preset whose shape a config has (how logs and errors name weights read from a file)
  reconcile   the config for weights read from a file: their architecture, the run's training and runtime fields
  check_resumable  whether a run's config may resume a checkpoint's (its stored fields): all but runtime ones equal
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from gptlit.core.errors import UserError

# What each GPTConfig field is, in its `kind` metadata (GPTConfig.fields_of):
#   arch      fixed by the weights (tensor shapes and structure): taken from the weights when a run starts
#             from a checkpoint or pretrained files, and a checkpoint resumes only with the same value
#   training  how the weights were made (dropout, initialization, vocabulary padding): a checkpoint resumes
#             only with the same value; pretrained weights take the run's value
#   runtime   how a step is computed, not what it computes: a run may resume with another value
KINDS = ("arch", "training", "runtime")


def _field(default, kind: str):
    return field(default=default, metadata={"kind": kind})


@dataclass
class GPTConfig:
    vocab_size: int = _field(50257, "arch")  # GPT-2 BPE vocabulary
    context_length: int = _field(1024, "arch")  # longest sequence the position embedding covers
    emb_dim: int = _field(768, "arch")
    n_heads: int = _field(12, "arch")
    n_layers: int = _field(12, "arch")
    drop_rate: float = _field(0.1, "training")  # dropout on embeddings, attention weights and residual branches
    qkv_bias: bool = _field(True, "arch")  # GPT-2 has biases on the query/key/value projection
    tie_embeddings: bool = _field(True, "arch")  # output head shares the token-embedding matrix
    pad_vocab_multiple: int = _field(64, "training")  # embedding/head rows padded to a multiple of this (fast matmuls)
    init: str = _field("gpt2", "training")  # "gpt2": normal(0, 0.02), scaled residual projections; "torch": PyTorch defaults (the book)
    activation_checkpointing: bool = _field(False, "runtime")  # recompute each block's activations in backward: less memory, ~1/3 more time

    def __post_init__(self):
        self.validate()  # checked once, where it is made: every GPTConfig in the program is a valid one

    @classmethod
    def fields_of(cls, kind: str) -> tuple[str, ...]:
        """Names of the fields of one kind (arch, training, runtime), in declaration order."""
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}: use one of {', '.join(KINDS)}")
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("kind") == kind)

    @property
    def padded_vocab_size(self) -> int:
        m = max(1, self.pad_vocab_multiple)
        return -(-self.vocab_size // m) * m

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    def validate(self) -> "GPTConfig":
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"model.{name}={getattr(self, name)} must be a positive integer")
        if self.emb_dim % self.n_heads:
            raise UserError(
                f"model.emb_dim={self.emb_dim} is not divisible by model.n_heads={self.n_heads}: "
                f"pick n_heads that divides emb_dim (e.g. model.n_heads={_divisor_near(self.emb_dim, self.n_heads)})"
            )
        if not 0.0 <= self.drop_rate < 1.0:
            raise UserError(f"model.drop_rate={self.drop_rate} must be in [0, 1)")
        if self.init not in ("gpt2", "torch"):
            raise UserError(f"model.init={self.init} is unknown: use gpt2 or torch")
        if not isinstance(self.activation_checkpointing, bool):
            raise UserError(f"model.activation_checkpointing={self.activation_checkpointing} must be true or false")
        if self.pad_vocab_multiple < 1:
            raise UserError(f"model.pad_vocab_multiple={self.pad_vocab_multiple} must be >= 1 (1 = no padding)")
        return self

    @classmethod
    def from_name(cls, name: str, **overrides) -> "GPTConfig":
        if name not in PRESETS:
            raise UserError(f"unknown model '{name}': choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        """Build from a mapping, ignoring keys that are not model fields (e.g. Hydra's `name`)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(d).items() if k in fields})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _divisor_near(n: int, target: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: abs(d - target))


# Sizes of OpenAI's GPT-2 family plus two small ones for tests and CPUs; fields not given
# here take GPTConfig's defaults. Each is the Hydra option model=<name>.
PRESETS: dict[str, dict] = {
    "nano": dict(context_length=64, emb_dim=64, n_heads=4, n_layers=2, drop_rate=0.0),  # tiny, for tests
    "mini": dict(context_length=128, emb_dim=256, n_heads=4, n_layers=4, drop_rate=0.0),  # the CPU default: minutes on 2 cores
    "small": dict(context_length=1024, emb_dim=768, n_heads=12, n_layers=12),  # GPT-2 small, 124M (tied embeddings)
    "medium": dict(context_length=1024, emb_dim=1024, n_heads=16, n_layers=24),  # GPT-2 medium, 355M
    "large": dict(context_length=1024, emb_dim=1280, n_heads=20, n_layers=36),  # GPT-2 large, 774M
    "xl": dict(context_length=1024, emb_dim=1600, n_heads=25, n_layers=48),  # GPT-2 XL, 1558M
}


def preset_of(cfg: GPTConfig) -> str | None:
    """The preset whose shape (emb_dim, n_heads, n_layers) `cfg` has (the largest where several do); None: no preset's."""
    same = [n for n, p in PRESETS.items() if all(p[k] == getattr(cfg, k) for k in ("emb_dim", "n_heads", "n_layers"))]
    return same[-1] if same else None


def reconcile(user: dict, weights: GPTConfig, source: str, explicit: dict[str, str], checkpoint: bool = False) -> GPTConfig:
    """The model config for these weights: architecture from the weights, runtime and training fields from the user.

    `user` is the run's `model` node; `explicit` the fields the user chose, each with where it was chosen
    (gptlit.run.model_source.explicit_model_fields). A field chosen must agree with the weights, except
    context_length, which may be lower for pretrained weights (not for a checkpoint, `checkpoint=True`).
    """

    def fmt(v) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)

    match = preset_of(weights)
    for f, origin in explicit.items():
        preset_field = f in ("emb_dim", "n_heads", "n_layers") or origin.startswith("preset")
        fix = f"use model={match} or drop the override" if match and preset_field else "drop the override"
        want, have = user.get(f), getattr(weights, f)
        if want == have or (f == "context_length" and not checkpoint and 0 < want < have):
            continue
        if f == "context_length" and not checkpoint:
            raise UserError(
                f"model.context_length={want} ({origin}) exceeds the {have} positions of the weights in {source}; "
                f"use model.context_length={have} or less"
            )
        raise UserError(f"model.{f}={fmt(want)} ({origin}) contradicts the weights in {source} ({fmt(have)}); {fix}")
    context = user["context_length"] if "context_length" in explicit else weights.context_length
    # a checkpoint's tensors hold its padded vocabulary rows; pretrained files are unpadded and take the run's padding
    pad = weights.pad_vocab_multiple if checkpoint else user.get("pad_vocab_multiple", weights.pad_vocab_multiple)
    # how a step runs is the run's choice (model.activation_checkpointing=true with model.init_from, say)
    runtime = {f: user[f] for f in GPTConfig.fields_of("runtime") if f in user}
    return dataclasses.replace(
        weights, context_length=context, drop_rate=user.get("drop_rate", weights.drop_rate), pad_vocab_multiple=pad,
        **runtime,
    )


def check_resumable(saved: dict, cfg: GPTConfig, shown: str) -> None:
    """Raise UserError unless the checkpoint `shown` (a ckpt_path), whose stored model config is `saved`, was
    trained with this config: runtime fields (activation checkpointing, say) may differ; a field it did not
    store (a checkpoint older than the field) is not compared."""
    runtime = GPTConfig.fields_of("runtime")
    for k, v in cfg.to_dict().items():
        if k in saved and saved[k] != v and k not in runtime:
            raise UserError(
                f"ckpt_path={shown} was trained with model.{k}={saved[k]} but this run has model.{k}={v}; "
                f"pass model.{k}={saved[k]} (or the same model= preset) to resume"
            )
