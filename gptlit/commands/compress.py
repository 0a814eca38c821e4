"""Bytes per token of text files under GPT-2's tokenizer and others, side by side (a Markdown table).
(installed: gptlit-compress ...)

  python compress.py my_corpus.txt other.txt tokenizer=outputs/2026-01-01/12-00-00   # a run's tokenizer
  python compress.py *.txt tokenizer=/models/Qwen2.5-0.5B tokenizer=bpe.tokenizer.json max_mb=5

tokenizer= (repeatable): a run directory or .ckpt (the tokenizer its checkpoint carries), a tokenizer.json,
or a model folder holding one. Each file is read up to max_mb MB (default 10). More bytes per token: fewer
tokens for the same text (cheaper steps, more text per context). To compare *models* with different
tokenizers, compare bits per byte (python eval.py bench=bpb), not loss or perplexity.
"""

from __future__ import annotations

import sys

from gptlit.core.errors import UserError, exit_on_user_error

USAGE = "usage: python compress.py <text files> [tokenizer=<run dir, .ckpt, tokenizer.json or model folder>]... [max_mb=10]"


def load_tokenizer(value: str):
    """A run directory or .ckpt: its checkpoint's tokenizer; else a tokenizer.json or a folder holding one."""
    from gptlit.core.files import user_path
    from gptlit.interop.checkpoints import checkpoint_tokenizer, find_checkpoint, load_checkpoint
    from gptlit.model.tokenizer import from_file

    p = user_path(value)
    if p.suffix == ".ckpt" or (p.is_dir() and not (p / "tokenizer.json").is_file() and (p / "checkpoints").is_dir()):
        ckpt = find_checkpoint(value, prefer="best", key="tokenizer")
        return checkpoint_tokenizer(load_checkpoint(ckpt), ckpt)
    return from_file(value, key="tokenizer")


def run(argv: list[str]) -> str:
    from gptlit.core.files import user_path
    from gptlit.data.tokenizer_cache import compression_table

    files, tokenizers, max_mb = [], {}, 10.0
    for a in argv:
        key, _, value = a.partition("=")
        if key == "tokenizer" and value:
            tok = load_tokenizer(value)
            tokenizers[f"{value} ({tok.describe()})"] = tok
        elif key == "max_mb" and value:
            try:
                max_mb = float(value)
            except ValueError:
                max_mb = -1
            if not max_mb > 0:
                raise UserError(f"max_mb={value} must be a positive number of megabytes")
        elif "=" in a:
            raise UserError(f"unknown argument {key}; {USAGE}")
        else:
            p = user_path(a)
            if not p.is_file():
                raise UserError(f"{a}: no such file; {USAGE}")
            files.append(p)
    if not files:
        raise UserError(f"no text files given; {USAGE}")
    table = compression_table(files, tokenizers, int(max_mb * 1e6))
    print(table)
    return table


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__.strip())
        return
    with exit_on_user_error():
        run(argv)


if __name__ == "__main__":
    main()
