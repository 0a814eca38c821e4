"""Sweeps: DDP jobs inside a sweep, short job directory names, the search plugin check, and the Hydra
callback that writes the sweep summary when a multirun ends (gptlit/run/report.py). How a job runs and
fails is gptlit.run.runner's. Light on imports: Hydra loads this module before any job."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from gptlit.core.errors import EXIT_USER_ERROR
from gptlit.core.launch_env import restore_environ, saved_environ


# Set by a DDP job of a sweep for the ranks Lightning starts (see ddp_child_argv).
DDP_JOB_ENV = "GPTLIT_SWEEP_DDP_JOB"
# Variables Lightning's process launcher puts into os.environ; a later job of the sweep must not see them.
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", DDP_JOB_ENV)


def cut(name: str, n: int = 120) -> str:
    """A sweep job's directory is named after its overrides (conf/train.yaml, hydra.sweep.subdir): cut
    the name short of the file system's 255-byte limit (the job number in front keeps names unique)."""
    return name if len(name) <= int(n) else name[: int(n)] + "..."


def register_sweep_resolvers() -> None:
    """${gptlit.cut:...} in conf/train.yaml; train.py calls this before Hydra composes its config."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("gptlit.cut", cut, replace=True)


# ---- DDP inside a sweep --------------------------------------------------------------------------

@contextmanager
def ddp_in_sweep(cfg: DictConfig, job: dict):
    """Lightning starts ranks 1..N-1 of a DDP job by re-running the command line with Hydra's
    `hydra.run.dir` added. In a multirun that command line is the whole sweep (`-m` and every
    value), so each rank would start a sweep of its own. Here the job tells its ranks which single run
    they belong to (an environment variable they inherit; train.py turns it into their command line,
    see ddp_child_argv), and afterwards the variables Lightning left in os.environ are removed and the
    process group is closed, so the next job of the sweep starts its own processes again."""
    before = saved_environ(DDP_ENV)
    os.environ[DDP_JOB_ENV] = json.dumps({"overrides": job.get("overrides", []), "dir": str(cfg.paths.output_dir)})
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        restore_environ(before)


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

# hparams_search option -> (the package it needs, its lowest major version, what to install). The sweeper
# itself is gptlit's (hydra_plugins/gptlit_optuna_sweeper.py, gptlit.run.search), installed with gptlit.
SEARCH_PLUGINS = {"optuna": ("optuna", 4, 'pip install -e ".[sweep]"')}


def check_search_plugin(args: list[str]):
    """hparams_search=optuna needs optuna >= 4: without it the search would fail in its first trial or
    with Hydra's long composition error, so say in one line what to install (exit 2). With it, a bad
    search space on the command line is one line too (gptlit.run.search.space.check_command_line)."""
    from importlib.metadata import PackageNotFoundError, version
    from importlib.util import find_spec

    for a in args:
        key, _, value = a.lstrip("+").partition("=")
        if key != "hparams_search" or value not in SEARCH_PLUGINS:
            continue
        package, major, install = SEARCH_PLUGINS[value]
        try:
            found = find_spec(package) is not None
        except ModuleNotFoundError:
            found = False
        have = None
        if found:
            try:
                have = version(package)
            except PackageNotFoundError:  # importable without package metadata: trust it
                have = None
        if not found:
            problem = "which is not installed"
        elif have is not None and _major(have) < major:
            problem = f"{package} {have} is installed"
        else:
            from gptlit.core.errors import UserError
            from gptlit.run.search.space import check_command_line

            try:  # a bad search space: one line before Hydra's multi-line parse error, before any trial
                check_command_line(args)
            except UserError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(EXIT_USER_ERROR)
            continue
        print(f"error: hparams_search={value} needs {package}>={major}, {problem}: {install}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def _major(v: str) -> int:
    head = v.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


# ---- the end of a sweep -------------------------------------------------------------------------

try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object


class SweepSummary(_HydraCallback):
    """Hydra callback (conf/train.yaml, hydra.callbacks): when a multirun ends, write and print the
    sweep summary (gptlit.run.report) and exit with code 1 if some jobs failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from gptlit.run.report import build_report

        if os.environ.get("LOCAL_RANK", "0") != "0":
            return
        report = build_report(Path(config.hydra.sweep.dir), echo=True)
        failed = [r for r in report.rows if r["status"].startswith("failed")]
        if failed:
            print(f"{len(failed)} of {len(report.rows)} jobs failed: "
                  + "; ".join(f"job {r['job']} {r['status']}" for r in failed), file=sys.stderr)
            sys.exit(1)
