"""The one runner: train.py calls run_job for a single run and for every job of a sweep.

  run           train, validate or prepare, as cfg.task says; returns the final metrics
  task_wrapper  the failure policy, in one place (see its docstring)
  run_job       task_wrapper(run) plus what a sweeper minimizes: the job's best val/loss
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import sys
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig

from gptlit.core.errors import EXIT_USER_ERROR, UserError
from gptlit.core.job_record import JobRecord, hydra_job, mark_failed, one_line
from gptlit.run.build import build, prepare
from gptlit.training.guard import GuardRollback, rollback_config
from gptlit.training.limits import stop_reason
from gptlit.run.sweep import ddp_in_sweep

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Train (or validate, or only tokenize) as the config says; returns the final metrics."""
    if cfg.get("task", "train") == "prepare":
        return prepare(cfg)
    dm, module, trainer, ckpt_path = build(cfg)
    if cfg.get("task", "train") == "validate":
        trainer.validate(module, datamodule=dm, ckpt_path=ckpt_path)
    else:
        while True:
            try:
                trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
                break
            except GuardRollback as rb:  # the loss guard went back to a good last.ckpt: go on from there
                cfg = rollback_config(cfg, rb)
                dm, module, trainer, ckpt_path = build(cfg)
        ckpt = next((c for c in trainer.callbacks if getattr(c, "best_model_path", "")), None)
        if ckpt is not None:
            score = f" ({ckpt.monitor} {float(ckpt.best_model_score):.4f})" if ckpt.best_model_score is not None else ""
            rank_zero_info(f"best checkpoint: {ckpt.best_model_path}{score}")
        rank_zero_info(stop_reason(trainer))  # which limit ended the run, in the last lines
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    rank_zero_info("final: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if "/" in k))
    return metrics


def quiet_logs():
    """Print each message once (Lightning adds console handlers of its own; under Hydra the root
    logger prints already) and drop two messages that users cannot act on."""
    import warnings

    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in str(record.msg)
    )
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def task_wrapper(task):
    """The failure policy of every job, single run or sweep job:

    - a UserError (bad value, missing file) prints one line `error: ...` and exits with 2; in a sweep,
      a UserError of any job but the first is recorded in that job's job_result.json and the sweep
      goes on (the first job's would be every job's, or the user learns of it before waiting);
    - another process of the run lost (a dead or hung node): one line that says how to resume, exit 1;
    - any other exception: a single run raises it (the traceback is the report); a sweep job records it
      (one line on the console, the traceback in train.log) and the sweep goes on, its exit code 1 at
      the end (gptlit.run.sweep.SweepSummary).
    The job record says `failed: <reason>` in every case.
    """

    @functools.wraps(task)
    def wrapped(cfg: DictConfig):
        quiet_logs()
        job = hydra_job()
        sweep = bool(job.get("multirun"))
        out = Path(cfg.paths.output_dir)
        try:
            with ddp_in_sweep(cfg, job) if sweep else contextlib.nullcontext():
                return task(cfg)
        except UserError as e:
            if sweep and job.get("num"):
                log.error(f"job {job['num']} failed: {e}")
                mark_failed(out, str(e), job)
                return None
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)
        except Exception as e:
            from gptlit.core.launch_env import lost_peer_message

            reason = one_line(f"{type(e).__name__}: {e}".rstrip(": "))
            msg = lost_peer_message(e, cfg.paths.output_dir)
            if msg is not None:
                mark_failed(out, msg, job)
                print(f"error: {msg}", file=sys.stderr, flush=True)
                sys.exit(1)
            if not sweep:
                raise
            _traceback_to_log_files(f"job {job.get('num')} failed")
            log.error(f"job {job.get('num')} failed: {reason} (traceback in {out / 'train.log'}); the sweep goes on")
            mark_failed(out, reason, job)
            return None

    return wrapped


def best_val_loss(run_dir, metrics: dict | None = None) -> float:
    """What a sweeper minimizes: the job's best val/loss (NaN for a failed job, which Optuna records as failed)."""
    r = JobRecord.read(run_dir)
    if r is not None:
        best, _ = r.best
        if r.failed or best is None:
            return math.nan
        return float(best)
    v = (metrics or {}).get("val/loss")
    return float(v) if v is not None else math.nan


def run_job(cfg: DictConfig) -> float:
    """The body of train.py's Hydra task: runs the job under task_wrapper and returns its best val/loss."""
    metrics = task_wrapper(run)(cfg)
    return best_val_loss(cfg.paths.output_dir, metrics)


def _traceback_to_log_files(msg: str):
    """The current exception's traceback into the log files only (train.log); the console gets one line."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, msg, None, sys.exc_info())
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(record)
