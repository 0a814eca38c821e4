"""The console while training: `say` (a line above the progress bar), the time per optimizer step and to the
end (`StepTime`), plain progress lines where the output is no terminal (`ProgressLog`), and the progress
bar that reads the metrics only on the steps that log (`LogStepProgressBar`)."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from gptlit.core.errors import UserError
from gptlit.training.contracts import TrainingModule


def say(trainer: L.Trainer, msg: str) -> None:
    """Print a line on the console: above the progress bar while it runs (so the bar is not torn), else plainly.
    Lightning's TQDM bar prints nothing once closed (at the end of training), so then plain print it is."""
    bar = trainer.progress_bar_callback
    if bar is not None and bar.is_enabled and hasattr(bar, "print"):
        try:
            closed = bool(bar.train_progress_bar.disable)  # TQDM's bar after on_train_end
        except TypeError:  # TQDM's bar not set up yet: it would print nothing either
            closed = True
        except AttributeError:  # another kind of bar
            closed = False
        if not closed:
            bar.print(msg)
            return
    print(msg, flush=True)


class StepTime(L.Callback):
    """Print the time per optimizer step and the estimated time to the end of training, early.

    Measured: the first `skip_steps` optimizer steps (one-time allocations, kernel choices) are left out,
    and at least the steps torch.compile spends compiling (GPTLitModule.compile_steps); the next
    `timed_steps` are timed from batch start to batch end, so validation and samples do not count. On a
    GPU the timed batches wait for the device at both ends (a few steps only), so the time is the
    device's, not the host's. A first estimate comes sooner, from the first micro-batch (its time times
    the micro-batches per step), where `first_batch` says so (None: when training on the CPU, where one
    optimizer step of a large model can take minutes and the first micro-batch costs about as much as
    the next; on a GPU the first one carries start-up and compile costs and would mislead).
    """

    def __init__(self, skip_steps: int = 1, timed_steps: int = 1, first_batch: bool | None = None):
        if skip_steps < 0 or timed_steps < 1:
            raise UserError(
                f"callbacks.step_time: skip_steps={skip_steps} must be >= 0 and timed_steps={timed_steps} >= 1"
            )
        self.skip_steps, self.timed_steps, self.first_batch = skip_steps, timed_steps, first_batch
        self._skip, self._cuda = skip_steps, False  # set again when training starts (on_train_start)
        self.seconds = 0.0  # measured time of the timed steps so far
        self.per_step: float | None = None
        self.first_estimate: float | None = None  # seconds per step from the first micro-batch, if printed
        self._start = self._t = None
        self._first_seen = False

    def on_train_start(self, trainer, pl_module):
        self._start = trainer.global_step  # a resumed run counts from where it resumes
        self._skip = max(self.skip_steps, pl_module.compile_steps)
        self._cuda = pl_module.device.type == "cuda"

    def _timed(self, trainer) -> bool:
        return self.per_step is None and trainer.global_step - self._start >= self._skip

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._timed(trainer) and self._cuda:
            torch.cuda.synchronize()  # the work queued before this batch is not its time
        self._t, self._step = time.perf_counter(), trainer.global_step

    def _wants_first_batch(self, trainer) -> bool:
        if self.first_batch is not None:
            return bool(self.first_batch)
        from lightning.pytorch.accelerators import CPUAccelerator

        return isinstance(trainer.accelerator, CPUAccelerator)

    def _line(self, trainer, per_step: float, how: str) -> str:
        left = max(0, int(trainer.estimated_stepping_batches) - trainer.global_step)
        limit = f"max_steps={trainer.max_steps}" if (trainer.max_steps or -1) > 0 else f"max_epochs={trainer.max_epochs}"
        return (f"time: {per_step:.2f} s per optimizer step{how}; {left} more to {limit}: "
                f"~{duration(left * per_step)} (validation not included)")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.per_step is not None or self._t is None:
            return
        if self._step - self._start >= self._skip and self._cuda:  # a timed batch: wait for the device
            torch.cuda.synchronize()
        took = time.perf_counter() - self._t
        if not self._first_seen:
            self._first_seen = True
            micro = max(1, int(trainer.accumulate_grad_batches or 1))
            measured_now = micro == 1 and self._skip == 0 and self.timed_steps == 1
            if self._wants_first_batch(trainer) and not measured_now and trainer.is_global_zero:
                self.first_estimate = took * micro
                parts = f"{micro} micro-batches of {took:.2f} s" if micro > 1 else "the first step"
                say(trainer, self._line(trainer, self.first_estimate, f", a first estimate from {parts}"))
        if self._step - self._start >= self._skip:  # this (micro-)batch belongs to a timed step
            self.seconds += took
        if trainer.global_step - self._start < self._skip + self.timed_steps:
            return
        self.per_step = self.seconds / self.timed_steps
        if trainer.is_global_zero:
            say(trainer, self._line(trainer, self.per_step, ""))


class ProgressLog(L.Callback):
    """Plain progress lines, for output that is not a terminal (a file, a pipe, a scheduler's log), where
    the progress bar's carriage returns would fill the log with one long line of redrawn bars.

    Every `every_n_steps` optimizer steps (None: trainer.log_every_n_steps) one line: step, epoch,
    loss, learning rate, training tokens per second since the last line (validation and text samples
    left out, as in train/tokens_per_sec), elapsed time; and one line per validation. `when`: auto (only
    when stdout is not a terminal; gptlit.run.build then drops the progress bar), always, or never.
    """

    def __init__(self, when: str = "auto", every_n_steps: int | None = None):
        if when not in ("auto", "always", "never"):
            raise UserError(f"callbacks.progress_log.when={when} is unknown: use auto, always or never")
        if every_n_steps is not None and (not isinstance(every_n_steps, int) or isinstance(every_n_steps, bool)
                                          or every_n_steps < 1):
            raise UserError(f"callbacks.progress_log.every_n_steps={every_n_steps} must be an integer >= 1 "
                            f"(or null: trainer.log_every_n_steps)")
        self.when, self.every_n_steps = when, every_n_steps
        self._mark = None  # (time, tokens seen, seconds not training) at the last line
        self._val_seconds, self._val_start = 0.0, None

    @property
    def active(self) -> bool:
        import sys

        return self.when == "always" or (self.when == "auto" and not sys.stdout.isatty())

    def _not_training(self, pl_module: TrainingModule) -> float:
        """Seconds of validation and of the module's paused clock (text samples) so far."""
        return self._val_seconds + float(pl_module.paused_seconds)

    def on_train_start(self, trainer, pl_module):
        self._started = time.monotonic()
        self._mark = (self._started, int(pl_module.tokens_seen), self._not_training(pl_module))
        self._step_seen = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self._step_seen or not trainer.is_global_zero:  # no optimizer step finished, or not rank 0
            return
        self._step_seen = step
        n = self.every_n_steps or trainer.log_every_n_steps or 1
        if step % n and step != trainer.max_steps:
            return
        now, tokens, idle = time.monotonic(), int(pl_module.tokens_seen), self._not_training(pl_module)
        rate = (tokens - self._mark[1]) / max(now - self._mark[0] - (idle - self._mark[2]), 1e-9)
        self._mark = (now, tokens, idle)
        loss = pl_module.step_loss
        loss = f" loss {float(loss):.4f}" if loss is not None else ""
        lr = f" lr {trainer.optimizers[0].param_groups[0]['lr']:.2e}" if trainer.optimizers else ""
        total = int(trainer.estimated_stepping_batches)
        epochs = f"/{trainer.max_epochs}" if (trainer.max_epochs or -1) > 0 else ""
        print(f"step {step}/{total} epoch {trainer.current_epoch + 1}{epochs}{loss}{lr} {rate:,.0f} tokens/s "
              f"elapsed {duration(now - self._started)}", flush=True)

    def on_validation_start(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._val_start = time.monotonic()

    def on_validation_end(self, trainer, pl_module):
        if self._val_start is not None:
            self._val_seconds += time.monotonic() - self._val_start
            self._val_start = None
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        shown = [(k, trainer.callback_metrics.get(k)) for k in ("val/loss", "val/ppl", "train/eval_loss")]
        values = ", ".join(f"{k} {float(v):.4f}" for k, v in shown if v is not None)
        if values:
            print(f"step {trainer.global_step} validation: {values}", flush=True)


class LogStepProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar, showing the training metrics (SHOWN) as last logged, read after the
    optimizer steps that log (and after validation), not after every batch: reading a logged tensor
    copies it to the host, which on a GPU waits for the device. The bar still advances every batch.

    The training metrics are not logged with prog_bar=True, which Lightning reads after every batch."""

    SHOWN = ("train/loss", "train/ppl", "train/tokens_per_sec", "train/mfu")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._shown: dict = {}
        self._hold = False

    def get_metrics(self, trainer, pl_module):
        if not self._hold or not self._shown:
            logged = trainer.callback_metrics
            train = {k: float(logged[k]) for k in self.SHOWN if k in logged}
            self._shown = {**train, **super().get_metrics(trainer, pl_module)}
        return self._shown

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._hold = not pl_module.logging_step
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        finally:
            self._hold = False


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
