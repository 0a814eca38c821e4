#!/usr/bin/env python
"""Export a gptlit checkpoint as a Hugging Face GPT-2 folder (config.json + model.safetensors + its tokenizer).

  python export.py ckpt=outputs/2025-01-01/12-00-00 out=exported/
  python export.py ckpt=outputs/.../checkpoints/last.ckpt out=exported/

ckpt is a .ckpt file or a run directory (its best checkpoint, else its last). The folder
loads with transformers.GPT2LMHeadModel.from_pretrained(out) and with gptlit (model.init_from=out); its
tokenizer (the run's: GPT-2's, a trained BPE or a tokenizer.json) with AutoTokenizer.from_pretrained(out), offline.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gptlit.core.errors import UserError, exit_on_user_error

USAGE = "usage: python export.py ckpt=<.ckpt file or run directory> out=<folder>"


def parse_args(argv: list[str]) -> dict[str, str]:
    """key=value (also --key=value or --key value) pairs; ckpt and out are required."""
    args, i = {}, 0
    while i < len(argv):
        a = argv[i].lstrip("-")
        if "=" in a:
            key, value = a.split("=", 1)
        elif argv[i].startswith("--") and i + 1 < len(argv):
            key, value = a, argv[i + 1]
            i += 1
        else:
            raise UserError(f"cannot read argument {argv[i]!r}; {USAGE}")
        if key not in ("ckpt", "out"):
            raise UserError(f"unknown argument {key}; {USAGE}")
        args[key] = value
        i += 1
    for key in ("ckpt", "out"):
        if not args.get(key):
            raise UserError(f"{key}= is missing; {USAGE}")
    return args


def run(argv: list[str]) -> list:
    from gptlit.interop.checkpoints import find_checkpoint, model_from_checkpoint
    from gptlit.interop.hf import write_hf_folder

    args = parse_args(argv)
    ckpt = find_checkpoint(args["ckpt"], prefer="best")
    model, _ = model_from_checkpoint(ckpt)
    out = Path(args["out"])
    if out.is_file():
        raise UserError(f"out={args['out']} is a file; give a folder to write config.json and model.safetensors into")
    files = write_hf_folder(model, out, tokenizer=True)  # the checkpoint's tokenizer too
    c = model.cfg
    print(f"read {ckpt}: {model.num_params():,} parameters (emb_dim {c.emb_dim}, {c.n_layers} layers, "
          f"{c.n_heads} heads, context {c.context_length}, tied embeddings: {str(c.tie_embeddings).lower()})")
    for f in files:
        print(f"wrote {f} ({f.stat().st_size:,} bytes)")
    print(f"load it with transformers.GPT2LMHeadModel.from_pretrained('{out}') or train.py model.init_from={out}")
    return files


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__.strip())
        return
    with exit_on_user_error():
        run(argv)


if __name__ == "__main__":
    main()
