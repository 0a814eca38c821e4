#!/usr/bin/env python
"""Pretrain a GPT.  python train.py [group=option ...] [key=value ...]

The command line is gptlit.commands.train (installed as gptlit-train); `python train.py --help` says more.
"""

from gptlit.commands.train import main

if __name__ == "__main__":
    main()
