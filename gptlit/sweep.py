"""Sweeps: a failed job that does not end the sweep, DDP jobs inside a sweep, and the Hydra callback
that writes the sweep summary when a multirun ends (gptlit/report.py). Each job's result file is
written by gptlit.callbacks.JobResult. Light on imports: Hydra loads this module before any job."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from gptlit.errors import EXIT_USER_ERROR, UserError
from gptlit.report import RESULT_FILE, read_result, write_json

log = logging.getLogger(__name__)

# Set by a DDP job of a sweep for the ranks Lightning starts (see ddp_child_argv).
DDP_JOB_ENV = "GPTLIT_SWEEP_DDP_JOB"
# Variables Lightning's process launcher puts into os.environ; a later job of the sweep must not see them.
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", DDP_JOB_ENV)


def one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def cut(name: str, n: int = 120) -> str:
    """A sweep job's directory is named after its overrides (conf/train.yaml, hydra.sweep.subdir): cut
    the name short of the file system's 255-byte limit (the job number in front keeps names unique)."""
    return name if len(name) <= int(n) else name[: int(n)] + "..."


def register_sweep_resolvers() -> None:
    """${gptlit.cut:...} in conf/train.yaml; train.py calls this before Hydra composes its config."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("gptlit.cut", cut, replace=True)


def hydra_job() -> dict:
    """This job's Hydra facts: {"multirun", "num", "overrides", "swept"}; empty outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    return {
        "multirun": hc.mode == RunMode.MULTIRUN,
        "num": hc.job.get("num"),
        "overrides": list(hc.overrides.task),
        "swept": swept_keys(hc) if hc.mode == RunMode.MULTIRUN else [],
    }


def swept_keys(hc) -> list[str]:
    """The keys a multirun varies: its sweep overrides (`optim.lr=1e-3,3e-4`, saved by Hydra in the sweep's
    multirun.yaml) and the sweeper's search space (hydra.sweeper.params, e.g. Optuna's)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    keys = list((hc.sweeper.get("params") or {}).keys())
    saved = Path(hc.sweep.dir) / "multirun.yaml"
    if saved.is_file():
        task = OmegaConf.load(saved).hydra.overrides.task
        keys += [o.key_or_group for o in OverridesParser.create().parse_overrides(list(task)) if o.is_sweep_override()]
    return list(dict.fromkeys(keys))


def best_val_loss(run_dir, metrics: dict | None = None) -> float:
    """What a sweeper minimizes: the job's best val/loss (NaN for a failed job, which Optuna records as failed)."""
    r = read_result(run_dir)
    if r is not None:
        if r["status"].startswith("failed") or r.get("best_val_loss") is None:
            return math.nan
        return float(r["best_val_loss"])
    v = (metrics or {}).get("val/loss")
    return float(v) if v is not None else math.nan


def mark_failed(run_dir: Path, reason: str, job: dict):
    """Record a job that failed outside training (or before its first validation)."""
    r = read_result(run_dir) or {
        "job": job.get("num"), "overrides": job.get("overrides", []), "best_val_loss": None, "best_step": None,
        "final_val_loss": None, "final_val_ppl": None, "steps": 0, "tokens": 0, "wall_time_s": None,
        "val_curve": [], "pid": os.getpid(), "host": socket.gethostname(),
    }
    if not str(r.get("status", "")).startswith("failed"):
        r["status"] = "failed: " + one_line(reason)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(run_dir) / RESULT_FILE, r)


def run_job(cfg: DictConfig) -> float:
    """The body of train.py's Hydra task: trains and returns the best val/loss.

    In a multirun a job that fails is recorded in its job_result.json with a one-line reason and the
    sweep goes on (the sweep's exit code says so at the end). A config error in the sweep's first job
    stops the sweep at once, with one line and exit code 2: every job shares it, or the user learns
    of it before waiting for the others.
    """
    from gptlit.build import main as train_main

    job = hydra_job()
    if not job.get("multirun"):
        return best_val_loss(cfg.paths.output_dir, train_main(cfg))
    from gptlit.build import _quiet_logs, run

    _quiet_logs()
    out = Path(cfg.paths.output_dir)
    try:
        with ddp_in_sweep(cfg, job):
            metrics = run(cfg)
    except UserError as e:
        if not job.get("num"):
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        log.error(f"job {job['num']} failed: {e}")
        mark_failed(out, str(e), job)
        return math.nan
    except Exception as e:
        reason = one_line(f"{type(e).__name__}: {e}".rstrip(": "))
        _traceback_to_log_files(f"job {job.get('num')} failed")
        log.error(f"job {job.get('num')} failed: {reason} (traceback in {out / 'train.log'}); the sweep goes on")
        mark_failed(out, reason, job)
        return math.nan
    return best_val_loss(out, metrics)


def _traceback_to_log_files(msg: str):
    """The current exception's traceback into the log files only (train.log); the console gets one line."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, msg, None, sys.exc_info())
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(record)


# ---- DDP inside a sweep --------------------------------------------------------------------------

@contextmanager
def ddp_in_sweep(cfg: DictConfig, job: dict):
    """Lightning starts ranks 1..N-1 of a DDP job by re-running the command line with Hydra's
    `hydra.run.dir` added. In a multirun that command line is the whole sweep (`-m` and every
    value), so each rank would start a sweep of its own. Here the job tells its ranks which single run
    they belong to (an environment variable they inherit; train.py turns it into their command line,
    see ddp_child_argv), and afterwards the variables Lightning left in os.environ are removed and the
    process group is closed, so the next job of the sweep starts its own processes again."""
    before = {k: os.environ.get(k) for k in DDP_ENV}
    os.environ[DDP_JOB_ENV] = json.dumps({"overrides": job.get("overrides", []), "dir": str(cfg.paths.output_dir)})
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ddp_child_argv(argv: list[str], environ=os.environ) -> list[str]:
    """The command line of a DDP rank > 0 started inside a sweep: this job's overrides as a single run
    in the job's directory (instead of the sweep's `-m` command line Lightning re-runs); else argv."""
    job = environ.get(DDP_JOB_ENV)
    rank = environ.get("LOCAL_RANK", "0")
    if not job or rank == "0":
        return argv
    job = json.loads(job)
    return [argv[0], *job["overrides"], f'hydra.run.dir="{job["dir"]}"', f"hydra.job.name=train_ddp_process_{rank}",
            "hydra.output_subdir=null"]


# ---- searches ------------------------------------------------------------------------------------

# hparams_search option -> (the Hydra sweeper plugin's module, what to install)
SEARCH_PLUGINS = {"optuna": ("hydra_plugins.hydra_optuna_sweeper", 'pip install -e ".[sweep]" (hydra-optuna-sweeper)')}


def check_search_plugin(args: list[str]):
    """hparams_search=optuna needs Hydra's Optuna sweeper: without it Hydra would fail with a long
    config-composition error, so say in one line what to install (exit 2)."""
    from importlib.util import find_spec

    for a in args:
        key, _, value = a.lstrip("+").partition("=")
        if key != "hparams_search" or value not in SEARCH_PLUGINS:
            continue
        module, install = SEARCH_PLUGINS[value]
        try:
            found = find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            print(f"error: hparams_search={value} needs Hydra's {value} sweeper plugin, which is not installed: "
                  f"{install}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)


# ---- the end of a sweep -------------------------------------------------------------------------

try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object


class SweepSummary(_HydraCallback):
    """Hydra callback (conf/train.yaml, hydra.callbacks): when a multirun ends, write and print the
    sweep summary (gptlit.report) and exit with code 1 if some jobs failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from gptlit.report import build_report

        if os.environ.get("LOCAL_RANK", "0") != "0":
            return
        report = build_report(Path(config.hydra.sweep.dir), echo=True)
        failed = [r for r in report.rows if r["status"].startswith("failed")]
        if failed:
            print(f"{len(failed)} of {len(report.rows)} jobs failed: "
                  + "; ".join(f"job {r['job']} {r['status']}" for r in failed), file=sys.stderr)
            sys.exit(1)
