"""A stand-in for train.py in the search tests: a Hydra app on gptlit's Optuna sweeper whose trials
train nothing. Trial n's "val/loss" at step s (1..steps) is offsets[n] + 1/s (offsets[n] = 0 past the
list), reported to its trial at every step through gptlit.run.search.trial.connect_trial, as the Pruning
callback does; it stops when pruned. Each trial writes job_result.json (what the sweep summary reads)
and a file ran-<trial>-<pid> in `out`, so a test sees which process ran which trial.

  GPTLIT_TEST_BLOCK_TRIAL=n   trial n writes `out`/blocked and waits (for a test to kill the search);
                              an environment variable, so the same command line continues the search
  fail=n                      trial n raises;  nan=n: trial n returns NaN
  by_x=true                   the curve is offsets[n] + x + 1/s (so the sampler's model has something to learn)

    python tests/search_app.py -m hydra.sweep.dir=<dir> hydra.sweeper.n_trials=4 out=<dir>
"""

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List

import hydra
from hydra.conf import HydraConf, RunDir, SweepDir
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig

from gptlit.core.job_record import JobRecord
from gptlit.run.search.trial import connect_trial


@dataclass
class AppConf:
    defaults: List[Any] = field(default_factory=lambda: ["_self_", {"override hydra/sweeper": "gptlit_optuna"}])
    x: float = 0.0  # searched (hydra.sweeper.params.x); the curve does not depend on it
    offsets: List[float] = field(default_factory=list)
    steps: int = 5
    out: str = "."
    fail: int = -1
    nan: int = -1
    by_x: bool = False
    hydra: HydraConf = field(default_factory=lambda: HydraConf(
        run=RunDir("${out}/run"), sweep=SweepDir(dir="${out}/sweep", subdir="${hydra.job.num}"),
        callbacks={"sweep_summary": {"_target_": "gptlit.run.sweep.SweepSummary"}}))


ConfigStore.instance().store(name="app", node=AppConf)


@hydra.main(version_base="1.3", config_name="app")
def main(cfg) -> float:
    hc = HydraConfig.get()
    n = int(hc.job.num)
    out, job_dir = Path(cfg.out), Path(hc.runtime.output_dir)
    (out / f"ran-{n}-{os.getpid()}").touch()
    if os.environ.get("GPTLIT_TEST_BLOCK_TRIAL") == str(n):
        (out / "blocked").touch()
        time.sleep(300)
    if n == cfg.fail:
        raise RuntimeError(f"trial {n} breaks")
    rec = JobRecord(job=n, overrides=list(hc.overrides.task))
    reporter = connect_trial()
    offset = cfg.offsets[n] if n < len(cfg.offsets) else 0.0
    rec.status = "ok"
    for step in range(1, cfg.steps + 1):
        value = offset + (cfg.x if cfg.by_x else 0.0) + 1.0 / step
        rec.val_curve.append([step, step * 100, value])
        rec.steps, rec.tokens = step, step * 100
        if reporter is not None and reporter.report(step, value):
            rec.status, rec.extra["pruned"] = "pruned", {"step": step, "value": value}
            break
    rec.write(job_dir)
    return math.nan if n == cfg.nan else min(c[2] for c in rec.val_curve)


if __name__ == "__main__":
    main()
