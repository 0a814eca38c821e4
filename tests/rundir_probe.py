"""`python rundir_probe.py <train.py overrides>`: train.py with Hydra's clock stopped at 2026-01-01 12:00:00,
so that runs started together surely get the same outputs/<date>/<time> (with a running clock they
collide only when they start within the same second)."""

import runpy
import sys
from datetime import datetime
from pathlib import Path

import hydra._internal.hydra as hydra_app
from omegaconf import OmegaConf

STOPPED = datetime(2026, 1, 1, 12, 0, 0)
hydra_globals = hydra_app.setup_globals  # Hydra registers its `now` resolver here, when the app starts


def stopped_clock() -> None:
    hydra_globals()
    OmegaConf.register_new_resolver("now", lambda pattern: STOPPED.strftime(pattern), use_cache=True, replace=True)


hydra_app.setup_globals = stopped_clock

train = str(Path(__file__).resolve().parents[1] / "train.py")
sys.argv = [train, *sys.argv[1:]]
runpy.run_path(train, run_name="__main__")
