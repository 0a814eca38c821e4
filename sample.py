#!/usr/bin/env python
"""Generate text from a trained checkpoint.  python sample.py ckpt=<run dir or .ckpt> [key=value ...]

The command line is gptlit.commands.sample (installed as gptlit-sample); `python sample.py --help` says more.
"""

from gptlit.commands.sample import main

if __name__ == "__main__":
    main()
