"""The command lines: one module per command, each a thin entry over a function of the package.

  train    python train.py   | gptlit-train    Hydra (conf/train.yaml) over gptlit.run.runner.run_job
  sample   python sample.py  | gptlit-sample   Hydra (conf/sample.yaml) over gptlit.run.sample.sample
  eval     python eval.py    | gptlit-eval     Hydra (conf/eval.yaml) over gptlit.evaluation.evaluate.evaluate
  export   python export.py  | gptlit-export   key=value (gptlit.core.cli.parse_key_values) over gptlit.run.export.export
  report   python report.py  | gptlit-report   <sweep dir> (gptlit.core.cli.parse_key_values) over gptlit.run.report

The scripts at the repository root and the entry points that pyproject.toml installs call the same
main(). The Hydra configs are read from CONF_DIR: `gptlit/conf`, a link to the repository's top-level
`conf/` in a checkout, and a copy of it (package data) in an installed wheel, so an installed package
runs without the source tree.
"""

from __future__ import annotations

import sys
from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")  # an absolute path: Hydra takes it as is


def hydra_argv_checked() -> None:
    """sys.argv made ready for @hydra.main: non-ASCII values quoted for Hydra, then a config group given an
    option it lacks (model=huge) stopped with one line, exit 2 (gptlit.core.cli)."""
    from gptlit.core.cli import check_group_options, hydra_argv

    sys.argv = hydra_argv(sys.argv)
    check_group_options(sys.argv[1:], CONF_DIR)
