"""`JobResult`: each run's job_result.json (gptlit.core.job_record.JobRecord), what a sweep summary reads,
and the job's overrides with its val/loss through the loggers' hyperparameter API."""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from gptlit.core.job_record import JobRecord, hydra_job, one_line, override_values
from gptlit.training.contracts import TrainingModule, run_outcome


class JobResult(L.Callback):
    """Keeps `job_result.json` (gptlit.core.job_record.JobRecord) in the run directory: the val loss
    curve (step, tokens seen, loss) and, when training ends, the status (ok, stopped early, pruned,
    failed: reason), steps, tokens and wall time. It is rewritten at every validation, so a running or
    interrupted job can be compared too. At the end it logs the job's overrides with its best and
    final val/loss through each logger's hyperparameter API (TensorBoard's HPARAMS tab)."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        job = hydra_job()
        self.rec = JobRecord(job=job.get("num"), overrides=job.get("overrides", []))
        self.hparams = {}  # what the HPARAMS tab shows: set in setup from the job's overrides
        self.started = time.time()

    @property
    def curve(self) -> list[list]:
        return self.rec.val_curve

    @property
    def overrides(self) -> list[str]:
        return self.rec.overrides

    @overrides.setter
    def overrides(self, value: list[str]):
        self.rec.overrides = list(value)

    @property
    def status(self) -> str:
        return self.rec.status

    @status.setter
    def status(self, value: str):
        self.rec.status = value

    def setup(self, trainer, pl_module, stage):
        self.started = time.time()
        values = override_values(self.rec.overrides)
        swept = hydra_job().get("swept")  # in a sweep, the HPARAMS columns are the values it varies
        self.hparams = {k: v for k, v in values.items() if k in swept} if swept else values
        if trainer.is_global_zero:
            self.write()

    def record(self) -> dict:
        self.rec.wall_time_s = round(time.time() - self.started, 2)
        return self.rec.to_dict()

    def write(self):
        self.rec.wall_time_s = round(time.time() - self.started, 2)
        self.rec.write(self.dirpath)

    def _progress(self, trainer, pl_module: TrainingModule):
        self.rec.steps, self.rec.tokens = int(trainer.global_step), int(pl_module.tokens_seen)

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        v = trainer.callback_metrics.get("val/loss")
        self._progress(trainer, pl_module)
        if v is None:
            return
        self.curve.append([self.rec.steps, self.rec.tokens, float(v)])
        if trainer.state.fn == "validate":  # task=validate: one evaluation is the whole job
            self.status = "ok"
        self.write()

    def on_train_end(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        self._progress(trainer, pl_module)
        # why the run ended, if a callback ended it: early stopping, the loss guard gave up (failed), a search
        # pruned the trial (not a failure); the one reading is gptlit.training.contracts.run_outcome
        outcome = run_outcome(trainer)
        self.status = one_line(outcome.status) if outcome is not None else "ok"
        if outcome is not None:
            self.rec.extra.update(outcome.extra)
        if self.curve and not math.isfinite(self.curve[-1][2]) and not self.status.startswith("failed"):
            self.status = f"failed: val/loss = {self.curve[-1][2]} at step {self.curve[-1][0]}"
        self.write()
        self.log_hparams(trainer)

    def on_exception(self, trainer, pl_module, exception):
        if trainer.is_global_zero:
            self._progress(trainer, pl_module)
            if isinstance(exception, KeyboardInterrupt):  # Ctrl-C: the job did not fail, it was stopped
                self.status = "interrupted"
            else:
                self.status = "failed: " + one_line(f"{type(exception).__name__}: {exception}".rstrip(": "))
            try:
                self.write()
            except OSError:  # e.g. the disk is full: the exception that stopped the run is the one to report
                pass

    def state_dict(self):  # a resumed job keeps its val curve
        return {"curve": [list(c) for c in self.curve]}

    def load_state_dict(self, state):
        self.rec.val_curve = [list(c) for c in state.get("curve", [])]

    @rank_zero_only
    def log_hparams(self, trainer):
        """The job's overrides with its best and final val/loss, through each logger's hyperparameter API."""
        r = self.record()
        metrics = {"hparams/best_val_loss": r["best_val_loss"], "hparams/final_val_loss": r["final_val_loss"]}
        metrics = {k: v for k, v in metrics.items() if v is not None}
        if not metrics:
            return
        params = dict(self.hparams) or {"run": "default"}  # the HPARAMS tab needs one column at least
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(params, metrics, step=self.rec.steps)  # the hparams summary with its metrics
            else:
                logger.log_hyperparams(params)
                logger.log_metrics(metrics, step=self.rec.steps)
            logger.save()
