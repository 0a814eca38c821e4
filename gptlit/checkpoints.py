"""Where configuration meets files on disk: user paths, finding and loading checkpoints, and the
model config that a run gets from them.

  user_path         a path as the user typed it (relative to where the command ran)
  find_checkpoint   a .ckpt file, or a run directory's best or last checkpoint (one rule, `prefer`)
  load_checkpoint   read a checkpoint safely (torch.load with weights_only=True)
  model_from_checkpoint   the GPT rebuilt from a checkpoint's stored config and weights
  model_for_run     a composed train config -> checked model config, checkpoint path, initial weights

Reading other formats (Hugging Face folders, the book's .pth files) is gptlit.hf's job.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from gptlit.config import PRESETS, GPTConfig
from gptlit.errors import UserError
from gptlit.model import GPT

RUNTIME_FIELDS = ("activation_checkpointing",)  # how a step runs, not the weights: a run may resume with another value
ARCH_FIELDS = ("vocab_size", "emb_dim", "n_heads", "n_layers", "qkv_bias", "tie_embeddings")  # fixed by the weights


# paths ----------------------------------------------------------------------------------------
def user_path(path: str | os.PathLike) -> Path:
    """A path as the user typed it: `~` expanded, relative paths taken from the directory the
    command ran in (Hydra's original working directory under train.py/sample.py, else the cwd)."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute():
        return p
    base = os.getcwd()
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            base = HydraConfig.get().runtime.cwd
    except ImportError:  # pragma: no cover - hydra is a dependency; Python callers may not run it
        pass
    return Path(base) / p


CHECKPOINT_NAMES = {"best": "best.ckpt", "last": "last.ckpt"}


def find_checkpoint(path: str | os.PathLike, prefer: str = "best", key: str = "ckpt") -> Path:
    """The checkpoint that `path` names: a .ckpt file itself, or in a run directory the `prefer`red
    one (checkpoints/<prefer>.ckpt, then <prefer>.ckpt), else the other one.

    prefer="last" resumes training (the latest state); "best" (lowest val/loss) is for sampling,
    validating and exporting. `key` is the config key the path came from, named in errors.
    """
    if prefer not in CHECKPOINT_NAMES:
        raise ValueError(f"prefer={prefer!r}: use 'best' or 'last'")
    p = user_path(path)
    if p.is_dir():
        order = [prefer, *(k for k in CHECKPOINT_NAMES if k != prefer)]
        for kind in order:
            for cand in (p / "checkpoints" / CHECKPOINT_NAMES[kind], p / CHECKPOINT_NAMES[kind]):
                if cand.is_file():
                    return cand
        raise UserError(
            f"{key}={path}: the folder {p} has no checkpoints/best.ckpt or last.ckpt; give a .ckpt file or a run directory"
        )
    if not p.is_file():
        raise UserError(f"{key}={path}: no such file or folder ({p}); give a .ckpt file or a run directory under outputs/")
    return p


# reading --------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path) -> dict:
    """Load a Lightning checkpoint written by gptlit, with weights_only=True (no arbitrary code runs).

    Memory-mapped: a tensor is read from disk only when used, so the checks that need only the
    stored config or the resume state (check_resumable, gptlit.resume) cost no read of the weights."""
    p = Path(path)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - garbage can fail anywhere in the unpickler (IndexError, KeyError, ...)
        msg = str(e).split("WeightsUnpickler error:", 1)[-1]  # drop torch's advice to load unsafely
        first = next((line.strip() for line in msg.splitlines() if line.strip()), type(e).__name__)
        raise UserError(f"{p} is not a readable checkpoint ({first}); is the file complete and a .ckpt from gptlit?") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "model" not in (ckpt.get("hyper_parameters") or {}):
        raise UserError(f"{p} is not a gptlit checkpoint (no state_dict with model hyperparameters); give a .ckpt written by train.py")
    return ckpt


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """Rebuild the GPT from the config stored in the checkpoint and load its weights."""
    ckpt = load_checkpoint(path)
    cfg = GPTConfig.from_dict(ckpt["hyper_parameters"]["model"])
    model = GPT(cfg)
    state = {}
    for k, v in ckpt["state_dict"].items():
        k = k.replace("_orig_mod.", "")
        if k.startswith("model."):
            state[k[len("model.") :]] = v
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit the stored model config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), ckpt


def saved_model_config(path: str | os.PathLike) -> GPTConfig:
    """The model config stored in a gptlit checkpoint."""
    return GPTConfig.from_dict(load_checkpoint(path)["hyper_parameters"]["model"])


# the model config of a run ----------------------------------------------------------------------
@dataclass
class RunModel:
    """What a training or validation run starts from (see model_for_run)."""

    config: GPTConfig
    ckpt_path: str | None = None  # the checkpoint Lightning resumes from (train) or validates (task=validate)
    init_state: dict[str, torch.Tensor] | None = None  # pretrained weights to load before training (model.init_from)
    source: str | None = None  # where the architecture came from, when not from the config alone


def model_for_run(cfg) -> RunModel:
    """A composed train config (Hydra node or dict with `model`, `task`, `ckpt_path`) and the files
    it names -> the checked model config, the checkpoint path and any initial weights.

      task=validate ckpt_path=X   architecture from the checkpoint (best of a run directory)
      model.init_from=X           architecture from the pretrained weights (gptlit.hf reads them)
      ckpt_path=X (task=train)    resume from X (last of a run directory); its model config must match
    Model fields the user chose explicitly must agree with the weights (see reconcile).
    """
    user = {k: cfg["model"][k] for k in cfg["model"]}
    task, ckpt = cfg.get("task", "train"), cfg.get("ckpt_path")
    model_cfg = GPTConfig.from_dict(user)  # the config's own values must be valid even where files replace them
    if task == "validate" and ckpt:
        path = find_checkpoint(ckpt, prefer="best", key="ckpt_path")
        merged = reconcile(user, saved_model_config(path), str(path), explicit_model_fields(user), checkpoint=True)
        return RunModel(merged, ckpt_path=str(path), source=str(path))
    init_state, source = None, None
    if user.get("init_from"):
        from gptlit.hf import read_pretrained

        explicit = explicit_model_fields(user)
        src = user_path(user["init_from"])
        try:
            weights, init_state = read_pretrained(src, n_heads=user.get("n_heads") if "n_heads" in explicit else None)
        except UserError as e:
            raise UserError(f"model.init_from={user['init_from']}: {e}") from None
        model_cfg, source = reconcile(user, weights, str(src), explicit), str(src)
    path = None
    if ckpt:
        path = str(find_checkpoint(ckpt, prefer="last", key="ckpt_path"))
        check_resumable(path, model_cfg, ckpt)
    return RunModel(model_cfg, ckpt_path=path, init_state=init_state, source=source)


def check_resumable(path: str | os.PathLike, model_cfg: GPTConfig, shown: str | None = None) -> None:
    """Raise UserError unless the checkpoint at `path` was trained with this model config."""
    saved = load_checkpoint(path)["hyper_parameters"]["model"]
    for k, v in model_cfg.to_dict().items():
        if k in saved and saved[k] != v and k not in RUNTIME_FIELDS:
            raise UserError(
                f"ckpt_path={shown or path} was trained with model.{k}={saved[k]} but this run has model.{k}={v}; "
                f"pass model.{k}={saved[k]} (or the same model= preset) to resume"
            )


def preset_label(cfg: GPTConfig, source: str) -> str:
    """How the run's log names a model whose architecture came from `source`: `<preset or custom> from <source>`."""
    same = [n for n, p in PRESETS.items() if all(p[k] == getattr(cfg, k) for k in ("emb_dim", "n_heads", "n_layers"))]
    return f"{same[-1] if same else 'custom'} from {source}"


def explicit_model_fields(user: dict) -> dict[str, str]:
    """Model fields the user chose, each with where it was chosen; other fields may come from weights.

    A field counts as chosen when it is overridden on the command line (model.X=...), when
    the preset was picked on the command line (model=small), or when it differs from the
    preset's value (an experiment file, or overrides Hydra did not record, as with compose()).
    """
    cli, preset_picked = set(), False
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            for o in HydraConfig.get().overrides.task:
                key = o.split("=", 1)[0].lstrip("+~")
                preset_picked |= key == "model"
                if key.startswith("model."):
                    cli.add(key[len("model.") :])
    except Exception:  # pragma: no cover - no Hydra run
        pass
    name = user.get("name")
    base = {**GPTConfig().to_dict(), **PRESETS.get(name, {})}
    out = {}
    for f in (*ARCH_FIELDS, "context_length"):
        if f in cli:
            out[f] = "command line"
        elif user.get(f) != base[f]:
            out[f] = "config"
        elif preset_picked:
            out[f] = f"preset {name}"
    return out


def reconcile(user: dict, weights: GPTConfig, source: str, explicit: dict[str, str], checkpoint: bool = False) -> GPTConfig:
    """The model config for these weights: architecture from the weights, training fields from the user.

    A field the user chose (see explicit_model_fields) must agree with the weights, except
    context_length, which may be lower for pretrained weights (not for a checkpoint).
    """

    def fmt(v) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)

    match = [n for n, p in PRESETS.items() if all(p[k] == getattr(weights, k) for k in ("emb_dim", "n_heads", "n_layers"))]
    for f, origin in explicit.items():
        preset_field = f in ("emb_dim", "n_heads", "n_layers") or origin.startswith("preset")
        fix = f"use model={match[-1]} or drop the override" if match and preset_field else "drop the override"
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
    pad = weights.pad_vocab_multiple if checkpoint else user.get("pad_vocab_multiple", weights.pad_vocab_multiple)
    return dataclasses.replace(
        weights, context_length=context, drop_rate=user.get("drop_rate", weights.drop_rate), pad_vocab_multiple=pad
    ).validate()
