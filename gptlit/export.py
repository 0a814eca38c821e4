"""Export a gptlit checkpoint as a Hugging Face GPT-2 folder (config.json + model.safetensors).

  python -m gptlit.export ckpt=outputs/2025-01-01/12-00-00 out=exported/
  python -m gptlit.export ckpt=outputs/.../checkpoints/last.ckpt out=exported/

ckpt is a .ckpt file or a run directory (its best checkpoint, else its last). The folder
loads with transformers.GPT2LMHeadModel.from_pretrained(out) and with gptlit (model.init_from=out).
"""

from __future__ import annotations

import sys
from pathlib import Path

from gptlit.config import ConfigError

USAGE = "usage: python -m gptlit.export ckpt=<.ckpt file or run directory> out=<folder>"


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
            raise ConfigError(f"cannot read argument {argv[i]!r}; {USAGE}")
        if key not in ("ckpt", "out"):
            raise ConfigError(f"unknown argument {key}; {USAGE}")
        args[key] = value
        i += 1
    for key in ("ckpt", "out"):
        if not args.get(key):
            raise ConfigError(f"{key}= is missing; {USAGE}")
    return args


def run(argv: list[str]) -> list:
    from gptlit.checkpoint import find_checkpoint, model_from_checkpoint
    from gptlit.hf import export

    args = parse_args(argv)
    ckpt = find_checkpoint(args["ckpt"])
    model, _ = model_from_checkpoint(ckpt)
    out = Path(args["out"])
    if out.is_file():
        raise ConfigError(f"out={args['out']} is a file; give a folder to write config.json and model.safetensors into")
    files = export(model, out)
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
    try:
        run(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
