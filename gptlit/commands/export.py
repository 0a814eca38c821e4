"""Export a gptlit checkpoint as a Hugging Face GPT-2 folder (config.json + model.safetensors + its tokenizer).
(installed: gptlit-export ...)

  python export.py ckpt=outputs/2025-01-01/12-00-00 out=exported/
  python export.py ckpt=outputs/.../checkpoints/last.ckpt out=exported/
  python export.py ckpt=outputs/2025-01-01/12-00-00 out=exported/ overwrite=true    # replace an earlier export

ckpt is a .ckpt file or a run directory (its best checkpoint, else its last). The folder
loads with transformers.GPT2LMHeadModel.from_pretrained(out) and with gptlit (model.init_from=out); its
tokenizer (the run's: GPT-2's, a trained BPE or a tokenizer.json) with AutoTokenizer.from_pretrained(out), offline.
An existing export is replaced only with overwrite=true, and only once the new one is complete
(gptlit.run.export).
"""

from __future__ import annotations

import sys

from gptlit.core.cli import parse_key_values
from gptlit.core.errors import exit_on_user_error

USAGE = "usage: python export.py ckpt=<.ckpt file or run directory> out=<folder> [overwrite=true]"
KEYS = {"ckpt": "", "out": "", "overwrite": "false"}  # "" = required


def main(argv: list[str] | None = None) -> None:
    """The command line (sys.argv[1:] unless given): a bad argument or file is one line, exit 2. Returns
    nothing: the console script exits with main()'s return value."""
    from gptlit.run.export import export

    argv = sys.argv[1:] if argv is None else argv
    with exit_on_user_error():
        args = parse_key_values(argv, KEYS, USAGE, __doc__)
        export(args["ckpt"], args["out"], overwrite=args["overwrite"])


if __name__ == "__main__":
    main()
