#!/usr/bin/env python
"""Export a gptlit checkpoint as a Hugging Face GPT-2 folder (config.json + model.safetensors).

  python export.py ckpt=outputs/2025-01-01/12-00-00 out=exported/
  python export.py ckpt=outputs/.../checkpoints/last.ckpt out=exported/
  python export.py ckpt=outputs/2025-01-01/12-00-00 out=exported/ overwrite=true    # replace an earlier export

ckpt is a .ckpt file or a run directory (its best checkpoint, else its last). The folder
loads with transformers.GPT2LMHeadModel.from_pretrained(out) and with gptlit (model.init_from=out).
An existing export is replaced only with overwrite=true, and only once the new one is complete
(gptlit.run.export).
"""

from __future__ import annotations

import sys

from gptlit.core.errors import UserError, exit_on_user_error

USAGE = "usage: python export.py ckpt=<.ckpt file or run directory> out=<folder> [overwrite=true]"


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
        if key not in ("ckpt", "out", "overwrite"):
            raise UserError(f"unknown argument {key}; {USAGE}")
        args[key] = value
        i += 1
    for key in ("ckpt", "out"):
        if not args.get(key):
            raise UserError(f"{key}= is missing; {USAGE}")
    if args.get("overwrite", "false").lower() not in ("true", "false"):
        raise UserError(f"overwrite={args['overwrite']} must be true or false")
    return args


def run(argv: list[str]) -> list:
    from gptlit.run.export import export

    args = parse_args(argv)
    return export(args["ckpt"], args["out"], overwrite=args.get("overwrite", "false").lower() == "true")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__.strip())
        return
    with exit_on_user_error():
        run(argv)


if __name__ == "__main__":
    main()
