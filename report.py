#!/usr/bin/env python
"""Summarize a sweep (finished, interrupted or running).  python report.py <sweep dir>

  python report.py outputs/multirun/2026-01-01/12-00-00

writes sweep_summary.csv, sweep_summary.md and sweep_val_loss.png into the sweep directory and prints
the table (gptlit/run/report.py). train.py -m writes the same report when a sweep ends.
"""

from gptlit.run.report import main

if __name__ == "__main__":
    main()
