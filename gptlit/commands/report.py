"""Summarize a sweep (finished, interrupted or running).  python report.py <sweep dir>
(installed: gptlit-report <sweep dir>)

  python report.py outputs/multirun/2026-01-01/12-00-00
  python report.py sweep_dir=outputs/multirun/2026-01-01/12-00-00    # the same, as key=value

writes sweep_summary.csv, sweep_summary.md and sweep_val_loss.png into the sweep directory and prints
the table (gptlit.run.report.summarize). train.py -m writes the same report when a sweep ends.
"""

from __future__ import annotations

import sys

from gptlit.core.cli import parse_key_values
from gptlit.core.errors import exit_on_user_error

USAGE = "usage: python report.py <sweep dir>"


def main(argv: list[str] | None = None) -> None:
    """The command line (sys.argv[1:] unless given): a bad argument or folder is one line, exit 2. Returns
    nothing: the console script exits with main()'s return value."""
    from gptlit.run.report import summarize

    argv = sys.argv[1:] if argv is None else argv
    with exit_on_user_error():
        args = parse_key_values(argv, {"sweep_dir": ""}, USAGE, __doc__, positional="sweep_dir")
        summarize(args["sweep_dir"])


if __name__ == "__main__":
    main()
