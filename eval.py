#!/usr/bin/env python
"""Evaluate a model beyond perplexity.  python eval.py ckpt=<run dir or .ckpt> bench=<task> [key=value ...]

The command line is gptlit.commands.eval (installed as gptlit-eval); `python eval.py --help` says more.
"""

from gptlit.commands.eval import main

if __name__ == "__main__":
    main()
