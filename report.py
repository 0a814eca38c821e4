#!/usr/bin/env python
"""Summarize a sweep (finished, interrupted or running).  python report.py <sweep dir>

The command line is gptlit.commands.report (installed as gptlit-report); `python report.py --help` says more.
"""

from gptlit.commands.report import main

if __name__ == "__main__":
    main()
