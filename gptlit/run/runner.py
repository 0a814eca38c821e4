"""The one runner: train.py calls run_job for a single run and for every job of a sweep.

  run           train, validate or prepare, as cfg.task says; returns the final metrics
  build_run     the config resolved (gptlit.run.plan) and built (gptlit.run.build), without training
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

from gptlit.core.cli import command_line
from gptlit.core.errors import EXIT_USER_ERROR, UserError
from gptlit.core.files import write_failure
from gptlit.core.job_record import JobRecord, hydra_job, mark_failed, one_line
from gptlit.run.build import build, prepare
from gptlit.run.model_source import model_for_run
from gptlit.run.plan import resolve
from gptlit.training.guard import GuardGaveUp, GuardRollback, gave_up_message
from gptlit.training.limits import stop_reason
from gptlit.run.sweep import ddp_in_sweep

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Train (or validate, or only tokenize) as the config says; returns the final metrics.
    The config is resolved once into a plan (gptlit.run.plan), which build turns into the run's parts."""
    plan = resolve(cfg, model_for_run)
    if plan.task == "prepare":
        return prepare(plan)
    dm, module, trainer, ckpt_path = build(plan)
    if plan.task == "validate":
        trainer.validate(module, datamodule=dm, ckpt_path=ckpt_path)
    else:
        while True:
            try:
                trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
                break
            except GuardRollback as rb:  # the loss guard went back to a good last.ckpt: go on from there
                plan = plan.after_rollback(rb.ckpt_path, rb.skip_steps, rb.rollbacks)
                dm, module, trainer, ckpt_path = build(plan)
            except SystemExit:  # Lightning ends a Ctrl-C with sys.exit(1), after writing last.ckpt
                if trainer.interrupted:
                    if trainer.is_global_zero:
                        log.info(f"interrupted at step {trainer.global_step}{lost_micro_batches(trainer)}. "
                                 f"{resume_hint(plan.output_dir)}")
                    sys.exit(130)  # the shell's code for a run ended by SIGINT, not 1 (a failure)
                raise
        ckpt = next((c for c in trainer.callbacks if getattr(c, "best_model_path", "")), None)
        if ckpt is not None:
            score = f" ({ckpt.monitor} {float(ckpt.best_model_score):.4f})" if ckpt.best_model_score is not None else ""
            what = ("best checkpoint of a run that diverged (the loss guard gave up)" if gave_up_message(trainer)
                    else "best checkpoint")
            rank_zero_info(f"{what}: {ckpt.best_model_path}{score}")
        rank_zero_info(stop_reason(trainer))  # which limit ended the run, in the last lines
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    rank_zero_info("final: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if "/" in k))
    gave_up = gave_up_message(trainer) if plan.task == "train" else None
    if gave_up:  # the run diverged past the guard's rollbacks: a failure, not a finished run
        raise GuardGaveUp(gave_up)
    return metrics


def build_run(cfg: DictConfig):
    """The config resolved into a plan and built: (datamodule, module, trainer, ckpt_path), what run trains."""
    return build(resolve(cfg, model_for_run))


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

    - Ctrl-C: during training Lightning writes last.ckpt and exits 1 (run() prints where it is and the
      command that resumes); before training, one line and exit 130;
    - a UserError (bad value, missing file) prints one line `error: ...` and exits with 2; in a sweep,
      a UserError of any job but the first is recorded in that job's job_result.json and the sweep
      goes on (the first job's would be every job's, or the user learns of it before waiting);
    - another process of the run lost (a dead or hung node): one line that says how to resume, exit 1;
    - a write that the disk refused (no space left, read-only, no permission): one line naming the file,
      the cause, the last.ckpt that survives and how to resume, exit 1 (a sweep job records it and the
      sweep goes on);
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
        except KeyboardInterrupt:  # Ctrl-C before training started (Lightning handles it during training)
            print("interrupted before training started; nothing to resume", file=sys.stderr, flush=True)
            sys.exit(130)
        except GuardGaveUp as e:  # its job record says failed already (JobResult)
            if sweep:
                log.error(f"job {job.get('num')} failed: {e}; the sweep goes on")
                return None
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(1)
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
            failed_write = write_failure(e)
            if failed_write is not None:  # disk full, read-only folder: one line, what survived, how to go on
                msg = write_failure_message(failed_write, cfg.paths.output_dir)
                try:
                    mark_failed(out, msg, job, replace=True)
                except OSError:  # the record lives on the same full or read-only disk
                    pass
                if sweep:
                    _traceback_to_log_files(f"job {job.get('num')} failed")
                    log.error(f"job {job.get('num')} failed: {msg}; the sweep goes on")
                    return None
                print(f"error: {msg}", file=sys.stderr, flush=True)
                sys.exit(1)
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


def _saved_step(ckpt: Path) -> int | None:
    """The optimizer step a checkpoint holds (read memory-mapped: no weights are loaded)."""
    try:
        from gptlit.interop.checkpoints import load_checkpoint

        return int(load_checkpoint(ckpt)["global_step"])
    except Exception:  # unreadable: say only that the file is there
        return None


def resume_command(output_dir) -> str:
    """This run's command line (its overrides as typed, shell-quoted) with ckpt_path=<run dir>/checkpoints/last.ckpt.
    A single run keeps its hydra.* overrides (hydra.run.dir=<dir> resumes into that directory); a sweep's
    job is resumed as a single run, without the sweep's."""
    ckpt = Path(output_dir) / "checkpoints" / "last.ckpt"
    job = hydra_job()
    overrides = [o for o in job.get("overrides", []) if o.split("=", 1)[0].lstrip("+~") != "ckpt_path"]
    if not job.get("multirun"):
        overrides = [*job.get("hydra_overrides", []), *overrides]
    argv0 = sys.argv[0] if sys.argv else ""
    script = argv0 if argv0.endswith(".py") and Path(argv0).name != "__main__.py" else "train.py"  # as it was typed
    if Path(argv0).name.startswith("gptlit-"):  # the installed entry point (pyproject's [project.scripts])
        script = Path(argv0).name
    return command_line(script, [*overrides, f"ckpt_path={ckpt}"])


def lost_micro_batches(trainer) -> str:
    """What a Ctrl-C inside an accumulation kept of the unfinished optimizer step: on one process, the
    micro-batches done so far (their gradient, gptlit.training.resume); under several processes nothing (a
    checkpoint holds whole steps there: each rank's gradient differs). Empty at a step boundary."""
    from gptlit.training.resume import ExactResume

    tracker = next((c for c in trainer.callbacks if isinstance(c, ExactResume)), None)
    every = int(trainer.accumulate_grad_batches or 1)
    if tracker is None or every < 2 or tracker.epoch != trainer.current_epoch:
        return ""
    if tracker.saved_partial is not None:
        done, every = tracker.saved_partial
        return (f", {done} of {every} micro-batches into step {trainer.global_step + 1} (kept: their gradient "
                f"so far; a resume goes on with micro-batch {done + 1})")
    done = tracker.ended - tracker.stepped
    if done <= 0:
        return ""
    why = ("under several processes a checkpoint holds whole optimizer steps" if trainer.world_size > 1
           else "a checkpoint holds whole optimizer steps")
    return f", {done} of {every} micro-batches into step {trainer.global_step + 1} (lost: {why})"


def resume_hint(output_dir) -> str:
    """Where the run's last.ckpt is and the command that resumes it, or that no checkpoint was written."""
    ckpt = Path(output_dir) / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        return "No checkpoint was written: nothing to resume"
    step = _saved_step(ckpt)
    at = f" (step {step}{_saved_micro_batches(ckpt)})" if step is not None else ""
    return f"last.ckpt{at} is {ckpt}; resume with: {resume_command(output_dir)}"


def _saved_micro_batches(ckpt: Path) -> str:
    """', and 2 micro-batches of step 5' for a checkpoint that keeps part of an optimizer step, else ''."""
    try:
        from gptlit.interop.checkpoints import load_checkpoint

        part = (load_checkpoint(ckpt).get("gptlit_resume") or {}).get("partial")
    except Exception:
        return ""
    if not part:
        return ""
    n = int(part["micro_batches"])
    return f", and {n} micro-batch{'es' if n != 1 else ''} of step {int(part['step']) + 1}"


def write_failure_message(failure: tuple[str, str, int], output_dir) -> str:
    """One line for a write the disk refused: the file, the cause, what survived and how to go on."""
    import errno

    path, cause, code = failure
    ckpt = Path(output_dir) / "checkpoints" / "last.ckpt"
    remedy = "free some space" if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "make the folder writable"
    if ckpt.is_file():
        step = _saved_step(ckpt)
        survived = f"the previous last.ckpt{f' (step {step})' if step is not None else ''} survives"
        fix = f"{remedy}, then resume with: {resume_command(output_dir)}"
    else:
        survived = "no checkpoint was written before"
        fix = f"{remedy} or choose another folder (hydra.run.dir=<dir>) and start again"
    return f"cannot write {path}: {cause}; {survived}; {fix}"
