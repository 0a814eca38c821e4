"""A guard against NaN and loss spikes (callbacks.guard, on by default).

- A step whose gradient norm is not finite (a NaN or inf loss makes every gradient NaN) is skipped:
  the weights and the optimizer state stay as they were. The decision stays on the device (no host
  sync per step): fused AdamW skips a step on device when its `found_inf` tensor is set, as it does
  for a GradScaler. (Unfused AdamW: the guard reads the flag on the host and drops the gradients.)
- The step losses are read on the host every `check_every` optimizer steps (the logging interval, where
  the logger reads the loss already), all at once. A loss above `spike_factor` x the median of the last
  `window` good steps is a spike; skipped steps count as bad too.
- After `patience` bad steps in a row the run goes back to the last good last.ckpt (written when no bad
  step was pending), or, before the first such save, to the state the run started from (a checkpoint
  written at train start, or the one it resumed from, kept open and unlinked: on disk, not in memory,
  and no file left behind), skips the steps that went bad (exact resume replays the same batches in the
  same order, so the skipped steps are exactly those batches), scales the learning rate by `lr_factor`,
  prints an incident line and adds it to TensorBoard as text. After `max_rollbacks` it stops the run
  with one line instead, and puts the last good state back as last.ckpt (the diverged one is not kept).

A rollback ends the current Trainer.fit with GuardRollback; gptlit.run.runner builds the run again from
that checkpoint (gptlit.run.plan.RunPlan.after_rollback) and goes on. Under several processes a rollback would have to restart
every rank: there the guard stops the run and prints the command that resumes with the same skips.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.core.optimizer import LightningOptimizer

from gptlit.core.errors import UserError
from gptlit.core.files import atomic_file
from gptlit.training.contracts import Outcome, TrainingModule, last_state

log = logging.getLogger(__name__)


class GuardRollback(Exception):
    """Raised by LossGuard to restart the run from `ckpt_path`, skipping `skip_steps`."""

    def __init__(self, ckpt_path: str, skip_steps: list[int], rollbacks: int, message: str):
        super().__init__(message)
        self.ckpt_path, self.skip_steps, self.rollbacks = ckpt_path, skip_steps, rollbacks


class GuardGaveUp(Exception):
    """Raised after a fit that the loss guard ended (training diverged past its rollbacks): the run
    failed, its last.ckpt and job record (`failed: loss guard gave up ...`) are written."""


def gave_up_message(trainer) -> str | None:
    """The loss guard's give-up line if it ended this fit, else None."""
    return next((cb.gave_up_message for cb in trainer.callbacks if isinstance(cb, LossGuard) and cb.gave_up_message), None)


class LossGuard(L.Callback):
    """See the module's text. An `EndsRuns` (gptlit.training.contracts): when it gave up, the job failed."""

    def __init__(self, spike_factor: float = 3.0, window: int = 50, patience: int = 3, lr_factor: float = 0.5,
                 max_rollbacks: int = 3, check_every: int | None = None, skip_steps: list[int] | None = None,
                 rollbacks: int = 0):
        """skip_steps and rollbacks are set by a rollback (gptlit.run.plan.RunPlan.after_rollback), not by users."""
        for name, value, ok in (("spike_factor", spike_factor, isinstance(spike_factor, (int, float)) and spike_factor > 1),
                                ("window", window, isinstance(window, int) and window >= 3),
                                ("patience", patience, isinstance(patience, int) and patience >= 1),
                                ("lr_factor", lr_factor, isinstance(lr_factor, (int, float)) and 0 < lr_factor <= 1),
                                ("max_rollbacks", max_rollbacks, isinstance(max_rollbacks, int) and max_rollbacks >= 0),
                                ("check_every", check_every, check_every is None or (isinstance(check_every, int) and check_every >= 1))):
            if not ok or isinstance(value, bool):
                want = {"spike_factor": "a number > 1", "window": "an integer >= 3", "patience": "an integer >= 1",
                        "lr_factor": "a number in (0, 1]", "max_rollbacks": "an integer >= 0",
                        "check_every": "an integer >= 1 or null (trainer.log_every_n_steps)"}[name]
                raise UserError(f"callbacks.guard.{name}={value} must be {want}")
        self.spike_factor, self.window, self.patience = float(spike_factor), window, patience
        self.lr_factor, self.max_rollbacks, self.check_every = float(lr_factor), max_rollbacks, check_every
        self.skip_steps = {int(s) for s in (skip_steps or [])}
        self.rollbacks = int(rollbacks)
        self.history: list[float] = []  # losses of the last `window` good steps
        self.lr_scale = 1.0  # the lr scale the model's optimizer state has (kept in checkpoints)
        self.incidents: list[str] = []
        self.skipped: list[int] = []  # steps skipped in this fit (non-finite, or a rollback's skips)
        self.gave_up_message: str | None = None
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor, bool]] = []  # (step, loss, non-finite, skipped)
        self._streak: list[int] = []  # the bad steps in a row, so far
        self._spikes: set[int] = set()  # the spikes of that streak
        self._due: list[int] | None = None  # a streak that reached patience: roll back at the next check
        self._step = 0
        self._good: tuple[int, object] | None = None  # (step, open file) of the last good last.ckpt
        self._save_good: bool | None = None
        self._seen_save: int | None = None

    def outcome(self) -> Outcome | None:
        if not self.gave_up_message:
            return None
        return Outcome("failed: " + self.gave_up_message, rank=2, line=self.gave_up_message)

    # skipping a step ------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module):
        self._keep_start(trainer)
        target = self.lr_factor ** self.rollbacks
        if target != self.lr_scale:  # after a rollback: scale the restored lr (and the schedule's base)
            factor = target / self.lr_scale
            for opt in trainer.optimizers:
                for g in opt.param_groups:
                    g["lr"] *= factor
                    if "initial_lr" in g:
                        g["initial_lr"] *= factor
            for cfg in trainer.lr_scheduler_configs:
                if hasattr(cfg.scheduler, "base_lrs"):
                    cfg.scheduler.base_lrs = [b * factor for b in cfg.scheduler.base_lrs]
            self.lr_scale = target
        self._note_saves(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step = trainer.global_step
        self._note_saves(trainer)

    def on_before_optimizer_step(self, trainer, pl_module: TrainingModule, optimizer):
        opt = optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer  # Lightning's wrapper
        # the global norm, computed once a step (clipping reads it after this hook); the same on every rank:
        # under DDP the gradients are, and under FSDP grad_norm reduces the shards' norms (a collective every
        # rank makes here, so no rank may return before it)
        norm = pl_module.grad_norm()
        bad = ~torch.isfinite(norm)
        skip = self._step in self.skip_steps
        if skip:
            bad = torch.ones_like(bad)
        loss = pl_module.step_loss
        loss = loss.detach().float() if isinstance(loss, torch.Tensor) else torch.zeros((), device=norm.device)
        self._pending.append((self._step, loss, bad, skip))
        if trainer.precision == "16-mixed":
            return  # the GradScaler skips non-finite steps itself (and sets found_inf)
        if opt.defaults.get("fused"):
            opt.found_inf = bad.float()  # read by the fused step: skips it on the device
        elif skip or bool(bad):  # unfused: one host read; AdamW leaves parameters without a grad alone
            for g in opt.param_groups:
                for p in g["params"]:
                    p.grad = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        every = self.check_every or trainer.log_every_n_steps or 1
        if self._pending and self._pending[-1][0] == trainer.global_step - 1 and trainer.global_step % every == 0:
            self.check(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self.check(trainer, pl_module, final=True)
        self._close_good()

    def on_exception(self, trainer, pl_module, exception):
        self._close_good()

    def _keep_start(self, trainer) -> None:
        """The state this fit starts from, as the good state to go back to until a later last.ckpt is good:
        the checkpoint it resumed from, else one written now beside last.ckpt (one write at the start; rank 0
        keeps it open and unlinks it; not written when no rollback can follow). Nothing when last.ckpt is off."""
        last = last_state(trainer)
        if self._good is not None or last is None:
            return
        step = trainer.global_step
        resumed = trainer.ckpt_path
        if resumed and "://" not in str(resumed) and os.path.isfile(resumed):
            self._good = (step, open(resumed, "rb") if trainer.is_global_zero else None)
            return
        if self.rollbacks >= self.max_rollbacks:
            return
        start = Path(last.path).with_name(f".start-{os.getpid()}.ckpt")
        trainer.save_checkpoint(start, weights_only=False)  # every rank calls it; rank 0 writes, then a barrier
        self._save_good = None  # that save is no last.ckpt
        if trainer.is_global_zero:
            handle = open(start, "rb")
            start.unlink()
            self._good = (step, handle)
        else:
            self._good = (step, None)

    # reading the losses -----------------------------------------------------------------------------
    def check(self, trainer, pl_module, final: bool = False) -> None:
        """Read the pending step losses (one host read) and act on them."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        values = torch.stack([torch.stack([loss, bad.float()]) for _, loss, bad, _ in pending])
        if trainer.world_size > 1:  # every rank decides the same: the mean loss over ranks
            values = trainer.strategy.reduce(values, reduce_op="mean")
        for (step, _, _, skipped), (loss, bad) in zip(pending, values.tolist()):
            if skipped:
                self.skipped.append(step)
                continue
            if bad > 0:
                self.skipped.append(step)
                self.incident(trainer, step, f"step {step}: loss or gradient norm not finite (loss {loss}): optimizer step skipped")
            elif len(self.history) >= min(self.window, 10) and loss > self.spike_factor * statistics.median(self.history):
                self._spikes.add(step)  # unlike a skipped step, a spike changed the weights
                self.incident(trainer, step, f"step {step}: loss spike {loss:.4g} > {self.spike_factor:g} x median "
                                             f"{statistics.median(self.history):.4g} of the last {len(self.history)} steps")
            else:
                self._streak, self._spikes = [], set()
                self.history = (self.history + [loss])[-self.window :]
                continue
            self._streak.append(step)
            if len(self._streak) >= self.patience:
                self._due = list(self._streak)
        if self._due and not final:  # (a check at a save only reads: the next regular check acts)
            self._streak, self._due = self._due, None
            self.roll_back(trainer)

    def incident(self, trainer, step: int, msg: str) -> None:
        line = f"guard: {msg}"
        self.incidents.append(line)
        if trainer.is_global_zero:
            log.warning(line)
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_text("guard", line, step)

    # rolling back -----------------------------------------------------------------------------------
    def roll_back(self, trainer) -> None:
        bad = list(self._streak)
        steps = f"steps {bad[0]}-{bad[-1]}" if len(bad) > 1 else f"step {bad[0]}"
        last = _last_checkpoint(trainer)
        if self.rollbacks >= self.max_rollbacks or self._good is None or last is None:
            if self.rollbacks >= self.max_rollbacks:
                why = (f"after {self.rollbacks} rollback{'s' if self.rollbacks != 1 else ''} "
                       f"(callbacks.guard.max_rollbacks={self.max_rollbacks})")
                if self.rollbacks:
                    why += f" at lr x{self.lr_scale:g}"
            else:
                why = "and last.ckpt is off (callbacks.last_checkpoint=null): no state to go back to"
            kept = ""
            if self._good is not None and last is not None:
                if trainer.is_global_zero:
                    self._restore_good(last)
                if trainer.world_size > 1:
                    trainer.strategy.barrier("guard")
                good = self._good[0]
                kept = f"; last.ckpt is step {good} again, the last good state" + (" (the first weights)" if good == 0 else "")
            self.gave_up_message = (f"loss guard gave up: {len(bad)} bad steps in a row ({steps}) {why}{kept}; "
                                    f"train again with a lower optim.lr or more optim.warmup_steps")
            self.incident(trainer, bad[-1], self.gave_up_message)
            trainer.should_stop = True
            return
        good_step, handle = self._good
        skips = sorted(self.skip_steps | set(bad))
        where = "the first weights (step 0)" if good_step == 0 else f"last.ckpt of step {good_step}"
        msg = (f"{len(bad)} bad steps in a row ({steps}): back to {where}, skipping "
               f"{', '.join(map(str, bad))}, lr x{self.lr_factor:g} (rollback {self.rollbacks + 1} of {self.max_rollbacks})")
        if trainer.world_size > 1:
            self.gave_up_message = (f"loss guard: {msg.split(':')[0]}; several processes cannot roll back in place: "
                                    f"resume with ckpt_path={last} callbacks.guard.skip_steps=[{','.join(map(str, skips))}] "
                                    f"callbacks.guard.rollbacks={self.rollbacks + 1}")
            self.incident(trainer, bad[-1], self.gave_up_message)
            if trainer.is_global_zero:
                self._restore_good(last)
            trainer.strategy.barrier("guard")
            trainer.should_stop = True
            return
        self.incident(trainer, bad[-1], msg)
        self._restore_good(last)
        raise GuardRollback(str(last), skips, self.rollbacks + 1, msg)

    def _restore_good(self, last: Path) -> None:
        """Put the last good checkpoint (kept open since it was written) back as last.ckpt."""
        _, handle = self._good
        handle.seek(0)
        with atomic_file(last, durable=True) as tmp, open(tmp, "wb") as out:
            shutil.copyfileobj(handle, out)

    def _note_saves(self, trainer) -> None:
        """After LastCheckpoint wrote last.ckpt with no bad step pending, keep that file open: a later
        last.ckpt replaces the name (a rename), and the open file is still the good state."""
        last = last_state(trainer)
        if last is None or last.saved_step == self._seen_save or last.saved_step is None:
            return
        self._seen_save = last.saved_step
        if self._save_good and trainer.is_global_zero and last.path.exists():
            self._close_good()
            self._good = (last.saved_step, open(last.path, "rb"))
        elif self._save_good and not trainer.is_global_zero:
            self._good = (last.saved_step, None)
        self._save_good = None

    def _close_good(self) -> None:
        if self._good is not None and self._good[1] is not None:
            self._good[1].close()
        self._good = None

    # checkpoints ----------------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        last = last_state(trainer)
        alone = last is not None and last.writing_alone  # rank 0 writing alone after a failure: no collective
        if not alone and trainer.state.fn == "fit":
            self.check(trainer, pl_module, final=True)  # read what is pending: is this state good?
        self._save_good = not self._spikes  # skipped steps left the weights as they were

    def state_dict(self):
        return {"history": list(self.history), "lr_scale": self.lr_scale, "rollbacks": self.rollbacks,
                "skip_steps": sorted(self.skip_steps), "incidents": list(self.incidents)}

    def load_state_dict(self, state):
        self.history = [float(v) for v in state.get("history", [])]
        self.lr_scale = float(state.get("lr_scale", 1.0))
        # a rollback's config knows more than the older checkpoint it goes back to
        self.rollbacks = max(self.rollbacks, int(state.get("rollbacks", 0)))
        self.skip_steps |= {int(s) for s in state.get("skip_steps", [])}
        self.incidents = list(state.get("incidents", [])) + [i for i in self.incidents if i not in state.get("incidents", [])]


def _last_checkpoint(trainer) -> Path | None:
    """Where last.ckpt goes (written yet or not), None when it is off."""
    last = last_state(trainer)
    return Path(last.path) if last is not None else None
