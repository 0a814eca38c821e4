"""gptlit's own checkpoints on disk: finding, loading and checking them.

  find_checkpoint   a .ckpt file, or a run directory's best or last checkpoint (one rule, `prefer`)
  load_checkpoint   read a checkpoint safely (torch.load with weights_only=True, memory-mapped)
  model_from_checkpoint   the GPT rebuilt from a checkpoint's stored config and weights, carrying its tokenizer
  checkpoint_tokenizer    the tokenizer a checkpoint stored (GPT-2's for one written before the tokenizer group)
  saved_model       a checkpoint's model config and tokenizer, read once (whether a run may resume from it:
                    gptlit.model.config.check_resumable)

Reading other formats (Hugging Face folders, the book's .pth files) is gptlit.interop.hf's job; which
model config a run takes from such files is gptlit.run.model_source's (model_for_run).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from gptlit.model.config import GPTConfig
from gptlit.core.errors import UserError
from gptlit.core.files import user_path
from gptlit.model.gpt import GPT
from gptlit.model.tokenizer import Tokenizer, from_spec


# finding -------------------------------------------------------------------------------------
CHECKPOINT_NAMES = {"best": "best.ckpt", "last": "last.ckpt"}


def pick_device(name) -> str:
    """device=auto|cpu|cuda|cuda:N (sample.py, eval.py) as a torch device name; one line for a bad one."""
    name = str(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"device={name} is unknown: use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but this machine has no CUDA GPU: use device=cpu or device=auto")
    return name


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
    stored config or the resume state (saved_model, gptlit.training.resume) cost no read of the weights."""
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


def checkpoint_tokenizer(ckpt: dict, path: str | Path) -> Tokenizer:
    """The tokenizer stored in a loaded checkpoint (`checkpoint["tokenizer"]`); none stored: GPT-2's."""
    return from_spec(ckpt.get("tokenizer"), where=str(path))


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """Rebuild the GPT from the config stored in the checkpoint and load its weights; model.tokenizer is the
    checkpoint's tokenizer (sampling, evaluation and export use it)."""
    ckpt = load_checkpoint(path)
    tokenizer = checkpoint_tokenizer(ckpt, path)
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
    model.tokenizer = tokenizer
    return model.to(device).eval(), ckpt


@dataclass(frozen=True)
class SavedModel:
    """What a run takes from a gptlit checkpoint before its weights (read once, see saved_model)."""

    path: Path
    fields: dict  # the model config as stored (a checkpoint older than a GPTConfig field lacks that field)
    tokenizer: Tokenizer  # the tokenizer it was trained with

    @property
    def config(self) -> GPTConfig:
        """The stored model config as a GPTConfig (a field it lacks: GPTConfig's default)."""
        return GPTConfig.from_dict(self.fields)


def saved_model(path: str | os.PathLike) -> SavedModel:
    """The model config and tokenizer stored in the gptlit checkpoint at `path` (memory-mapped: no weights read)."""
    ckpt = load_checkpoint(path)
    fields = dict(ckpt["hyper_parameters"]["model"])
    return SavedModel(Path(path), fields, checkpoint_tokenizer(ckpt, path))
