"""export.py's work: a checkpoint written as a Hugging Face GPT-2 folder, whole or not at all.

  export(ckpt, out, overwrite)   the folder is written beside `out` under a hidden temporary name, then
                                 renamed into place: a reader (or a kill) never sees half an export, and
                                 with overwrite=True the old export stays whole until the new one is.

An existing export is replaced only with overwrite=True; a folder holding other files never is. A
folder that cannot be written (read-only, no space, no permission) is one UserError naming it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from gptlit.core.errors import UserError
from gptlit.core.files import describe_os_error, fsync_dir, user_path
from gptlit.interop.checkpoints import find_checkpoint, model_from_checkpoint
from gptlit.interop.hf import write_hf_folder

EXPORT_FILES = ("config.json", "model.safetensors")  # what makes a folder an export (write_hf_folder's files)


def check_destination(dest: Path, out: str, overwrite: bool) -> bool:
    """Whether `dest` holds an export to replace; UserError where it may not be written into."""
    if dest.is_file():
        raise UserError(f"out={out} is a file; give a folder to write config.json and model.safetensors into")
    if not dest.is_dir() or not any(dest.iterdir()):
        return False
    if not any((dest / f).is_file() for f in EXPORT_FILES):
        raise UserError(f"out={out} is a folder of other files ({dest}), not an export; give a new or empty folder")
    if not overwrite:
        raise UserError(f"out={out} already holds an export ({dest}); add overwrite=true to replace it, "
                        f"or give another folder")
    return True


def _cannot_write(out: str, e: OSError, tmp: Path, dest: Path) -> UserError:
    """The failed write in one line, naming the file or folder as the user will know it (the
    temporary folder's name replaced by `out`'s)."""
    where = f" ({str(e.filename).replace(str(tmp), str(dest))})" if e.filename else ""
    return UserError(f"cannot write out={out}: {describe_os_error(e)}{where}; nothing was written; "
                     f"choose another folder with out=<folder>")


def export(ckpt: str, out: str, overwrite: bool = False, echo: Callable[[str], None] = print) -> list[Path]:
    """Write the best (else last) checkpoint of `ckpt` (a run directory or a .ckpt file) into folder `out`
    (config.json + model.safetensors + the checkpoint's tokenizer files). Returns the files written, under `out`."""
    source = find_checkpoint(ckpt, prefer="best")
    dest = user_path(out)
    replacing = check_destination(dest, out, overwrite)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:
        raise _cannot_write(out, e, tmp, dest) from None
    try:
        model, _ = model_from_checkpoint(source)
        try:
            written = write_hf_folder(model, tmp, tokenizer=True)  # the checkpoint's tokenizer too: AutoTokenizer loads it offline
            _swap_into_place(tmp, dest)
        except OSError as e:
            raise _cannot_write(out, e, tmp, dest) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = [dest / f.name for f in written]
    c = model.cfg
    echo(f"read {source}: {model.num_params():,} parameters (emb_dim {c.emb_dim}, {c.n_layers} layers, "
         f"{c.n_heads} heads, context {c.context_length}, tied embeddings: {str(c.tie_embeddings).lower()})")
    for f in files:
        echo(f"wrote {Path(out) / f.name} ({f.stat().st_size:,} bytes)")  # as the user typed it
    if replacing:
        echo(f"replaced the export that was in {dest}")
    echo(f"load it with transformers.GPT2LMHeadModel.from_pretrained('{out}') or train.py model.init_from={out}")
    return files


def _swap_into_place(tmp: Path, dest: Path) -> None:
    """Rename the complete folder `tmp` to `dest`; an existing `dest` (an export, or an empty folder) is
    renamed aside first and removed only once the new folder is in place (put back on a failure)."""
    old = dest.with_name(f".{dest.name}.{os.getpid()}.old") if dest.exists() else None
    if old is not None:
        os.rename(dest, old)
    try:
        os.rename(tmp, dest)
    except OSError:
        if old is not None:
            os.rename(old, dest)
        raise
    fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
