"""Reading gptlit checkpoints safely (torch.load with weights_only=True) and rebuilding the model."""

from __future__ import annotations

from pathlib import Path

import torch

from gptlit.config import ConfigError, GPTConfig
from gptlit.model import GPT


def find_checkpoint(path: str | Path) -> Path:
    """A .ckpt file, or a run directory: its best checkpoint, else its last."""
    p = Path(path)
    if p.is_dir():
        for cand in ("checkpoints/best.ckpt", "best.ckpt", "checkpoints/last.ckpt", "last.ckpt"):
            if (p / cand).is_file():
                return p / cand
        raise ConfigError(f"ckpt={path}: the folder has no checkpoints/best.ckpt or last.ckpt; give a .ckpt file or a run directory")
    if not p.is_file():
        raise ConfigError(f"ckpt={path}: no such file or folder; give a .ckpt file or a run directory under outputs/")
    return p


def load_checkpoint(path: str | Path) -> dict:
    """Load a Lightning checkpoint written by gptlit, with weights_only=True (no arbitrary code runs)."""
    p = Path(path)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - garbage can fail anywhere in the unpickler (IndexError, KeyError, ...)
        msg = str(e).split("WeightsUnpickler error:", 1)[-1]  # drop torch's advice to load unsafely
        first = next((line.strip() for line in msg.splitlines() if line.strip()), type(e).__name__)
        raise ConfigError(f"{p} is not a readable checkpoint ({first}); is the file complete and a .ckpt from gptlit?") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "model" not in (ckpt.get("hyper_parameters") or {}):
        raise ConfigError(f"{p} is not a gptlit checkpoint (no state_dict with model hyperparameters); give a .ckpt written by train.py")
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
        raise ConfigError(f"{path}: weights do not fit the stored model config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), ckpt
