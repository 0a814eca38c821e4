#!/usr/bin/env python
"""Bytes per token of text files under GPT-2's tokenizer and others.  python compress.py <files> tokenizer=...

The command line is gptlit.commands.compress (installed as gptlit-compress); `python compress.py --help` says more.
"""

from gptlit.commands.compress import main

if __name__ == "__main__":
    main()
