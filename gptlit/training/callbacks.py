"""Callbacks: a text sample every N steps, the time estimate, plain progress lines where the output is no
terminal, a progress bar, the loss plot written when training ends, and each run's job_result.json (what a
sweep summary reads).

None of them reads a device tensor back to the host after an optimizer step that does not log
(GPTLitModule.logging_step): on a GPU each such read makes the host wait for the device.
(Checkpoints: gptlit/training/checkpointing.py.)"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from gptlit.core.errors import UserError, check_keys
from gptlit.model.generate import SampleTextConfig, generate_text
from gptlit.core.files import atomic_file
from gptlit.core.job_record import JobRecord, hydra_job, one_line, override_values
from gptlit.training.guard import gave_up_message


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


class SampleText(L.Callback):
    """Every `every_n_steps` optimizer steps, continue `prompt` and print and log the text.

    Sampling draws from its own torch.Generator (seeded with `seed` each time) and puts the
    model back in train mode, so a run's losses are the same with or without samples.
    """

    def __init__(self, config: SampleTextConfig | None = None, at_end: bool = True, **fields):
        """config's values (SampleTextConfig's defaults if None) with `fields` on top, e.g.
        SampleText(every_n_steps=10, temperature=0.0). At the end of training one more sample if at_end."""
        names = [f.name for f in dataclasses.fields(SampleTextConfig)]
        check_keys(fields, names, "sampling", "a sampling setting", sort=False)
        c = dataclasses.replace(config or SampleTextConfig(), **fields)
        if not isinstance(c.every_n_steps, int) or isinstance(c.every_n_steps, bool) or c.every_n_steps < 0:
            raise UserError(f"sampling.every_n_steps={c.every_n_steps} must be an integer >= 0 (0 turns samples off)")
        self.every_n_steps, self.prompt, self.seed, self.at_end = c.every_n_steps, c.prompt, c.seed, at_end
        self.cfg = c.decoding()  # checks temperature, top_k, top_p, max_new_tokens
        self.samples: list[tuple[int, str]] = []
        self._last_step = -1

    def _sample(self, trainer: L.Trainer, pl_module: L.LightningModule, at_end: bool = False):
        step = trainer.global_step
        if step == self._last_step or not trainer.is_global_zero:
            return
        self._last_step = step
        paused = getattr(pl_module, "clock_paused", contextlib.nullcontext)  # not counted as training time
        with paused():
            text = generate_text(pl_module.model, self.prompt, self.cfg, seed=self.seed)
        self.samples.append((step, text))
        say(trainer, f"[step {step}] {self.prompt}{text}".replace("\n", " "))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("samples", f"**{self.prompt}**{text}", step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        n = self.every_n_steps
        if n and trainer.global_step % n == 0 and trainer.global_step > 0:
            self._sample(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if self.every_n_steps and self.at_end:
            self._sample(trainer, pl_module, at_end=True)


class BookEval(L.Callback):
    """The book's evaluate_model (chapter 5's train_model_simple): every `eval_freq` optimizer steps,
    counting from the first (after steps 1, 1 + eval_freq, ...), the model in eval mode averages the
    losses of the first `eval_iter` batches of a fresh `DataLoader(train windows, shuffle=True,
    drop_last=True)` and of `DataLoader(val windows)`, logged as book/train_loss and book/val_loss.

    The loaders are the book's, made here with no generator: their iter() draws from torch's global
    generator as the book's do (the train loader two int64s, the val loader one), so with
    data.order=global the next epochs' orders and the dropout masks stay the book script's. Unlike
    train/eval_loss (fixed train windows spread over the split) its train loss is a random half of the
    training windows, drawn anew each time; unlike val/loss it sees only the first eval_iter val batches."""

    draws_at_step_end = True  # its draws belong to the step: ExactResume's snapshot comes after them

    def __init__(self, eval_freq: int = 5, eval_iter: int = 5):
        for name, v in (("eval_freq", eval_freq), ("eval_iter", eval_iter)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"callbacks.book_eval.{name}={v} must be a positive integer")
        self.eval_freq, self.eval_iter = eval_freq, eval_iter
        self._done_at = None

    def losses(self, trainer, pl_module) -> tuple[float, float]:
        from torch.utils.data import DataLoader

        dm, model = trainer.datamodule, pl_module.model
        b = dm.config.batch_size
        was_training = model.training
        model.eval()
        try:
            means = []
            for ds, shuffle in ((dm.train_set, True), (dm.val_set, False)):
                loader = DataLoader(ds, batch_size=b, shuffle=shuffle, drop_last=shuffle)  # the book's loaders
                n, total = min(self.eval_iter, len(loader)), 0.0
                with torch.no_grad(), trainer.precision_plugin.forward_context():
                    for i, (x, y) in enumerate(loader):
                        if i >= n:
                            break
                        total += pl_module.model(x.to(pl_module.device), y.to(pl_module.device)).item()
                means.append(total / n if n else float("nan"))
        finally:
            model.train(was_training)
        return means[0], means[1]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step  # optimizer steps done; the book's global_step is one less
        if step == self._done_at or (step - 1) % self.eval_freq:
            return
        self._done_at = step
        train, val = self.losses(trainer, pl_module)
        # straight to the loggers, once: a self.log here would be written again at every later step
        for logger in trainer.loggers:
            logger.log_metrics({"book/train_loss": train, "book/val_loss": val}, step=step)


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
        self._skip = max(self.skip_steps, getattr(pl_module, "compile_steps", 0))
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

    def _not_training(self, pl_module) -> float:
        """Seconds of validation and of the module's paused clock (text samples) so far."""
        return self._val_seconds + float(getattr(pl_module, "paused_seconds", 0.0))

    def on_train_start(self, trainer, pl_module):
        self._started = time.monotonic()
        self._mark = (self._started, int(getattr(pl_module, "tokens_seen", 0)), self._not_training(pl_module))
        self._step_seen = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self._step_seen or not trainer.is_global_zero:  # no optimizer step finished, or not rank 0
            return
        self._step_seen = step
        n = self.every_n_steps or trainer.log_every_n_steps or 1
        if step % n and step != trainer.max_steps:
            return
        now, tokens, idle = time.monotonic(), int(getattr(pl_module, "tokens_seen", 0)), self._not_training(pl_module)
        rate = (tokens - self._mark[1]) / max(now - self._mark[0] - (idle - self._mark[2]), 1e-9)
        self._mark = (now, tokens, idle)
        loss = getattr(pl_module, "step_loss", None)
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
        self._hold = not getattr(pl_module, "logging_step", True)
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


class LossPlot(L.Callback):
    """Collects train and val loss against steps and tokens seen; writes `loss_plot.png` at the end."""

    def __init__(self, dirpath: str, filename: str = "loss_plot.png"):
        self.dirpath, self.filename = dirpath, filename
        self.train: list[tuple[int, int, float]] = []  # (step, tokens seen, loss)
        self.val: list[tuple[int, int, float]] = []
        self.train_eval: list[tuple[int, int, float]] = []  # train windows evaluated with dropout off
        self._pending: list[tuple[int, int, torch.Tensor]] = []  # train losses not read from the device yet

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # once per optimizer step, the loss of its whole batch (with micro-batches, Lightning's
        # `outputs` hold the last micro-batch's loss divided by the accumulation); kept on the device
        # and read in one go on the steps that log
        done = trainer.global_step > getattr(self, "_step_before", -1)
        loss = getattr(pl_module, "step_loss", None)
        if loss is None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and done and trainer.is_global_zero:
            self._pending.append((trainer.global_step, int(pl_module.tokens_seen), torch.as_tensor(loss).detach()))
            if getattr(pl_module, "logging_step", True) or len(self._pending) >= 1000:
                self._read_pending()

    def _read_pending(self):
        if self._pending:
            values = torch.stack([t[2].float().reshape(()) for t in self._pending]).tolist()  # one read for all
            self.train += [(step, tokens, v) for (step, tokens, _), v in zip(self._pending, values)]
            self._pending = []

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._read_pending()
        v = trainer.callback_metrics.get("val/loss")
        if v is not None:
            self.val.append((trainer.global_step, int(pl_module.tokens_seen), float(v)))
        t = trainer.callback_metrics.get("train/eval_loss")
        if t is not None:
            self.train_eval.append((trainer.global_step, int(pl_module.tokens_seen), float(t)))

    def on_train_end(self, trainer, pl_module):
        self._read_pending()
        if trainer.is_global_zero and self.train:
            path = Path(self.dirpath) / self.filename
            plot_losses(self.train, self.val, path, self.train_eval)

    def state_dict(self):
        self._read_pending()
        return {k: [list(t) for t in getattr(self, k)] for k in ("train", "val", "train_eval")}

    def load_state_dict(self, state):
        self.train = [tuple(t) for t in state.get("train", [])]
        self.val = [tuple(t) for t in state.get("val", [])]
        self.train_eval = [tuple(t) for t in state.get("train_eval", [])]


def plot_losses(train, val, path: Path, train_eval=()):
    """Train and val loss against steps, with tokens seen on a second x-axis (as the book plots it).

    `train` is the loss of every training batch (train mode, dropout on); `train_eval` the loss of
    the same train windows at each validation with dropout off, the book's "training loss".
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([t[0] for t in train], [t[2] for t in train], label="train loss (batches)", alpha=0.4 if train_eval else 0.8)
    if train_eval:
        ax.plot([t[0] for t in train_eval], [t[2] for t in train_eval], "s-", label="train loss (eval mode)")
    if val:
        ax.plot([v[0] for v in val], [v[2] for v in val], "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.legend(loc="upper right")
    top = ax.twiny()  # second x-axis: tokens seen, aligned with steps
    steps = [t[0] for t in train]
    tokens = [t[1] for t in train]
    top.plot(tokens, [t[2] for t in train], alpha=0)
    top.set_xlim(*_tokens_at(ax.get_xlim(), steps, tokens))
    top.set_xlabel("tokens seen")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def _tokens_at(xlim, steps, tokens):
    """Map the step axis limits to tokens seen, by linear fit through the recorded points."""
    if len(steps) < 2 or steps[-1] == steps[0]:
        return (xlim[0] * tokens[-1] / max(steps[-1], 1), xlim[1] * tokens[-1] / max(steps[-1], 1))
    rate = (tokens[-1] - tokens[0]) / (steps[-1] - steps[0])
    off = tokens[0] - rate * steps[0]
    return (off + rate * xlim[0], off + rate * xlim[1])


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

    def _progress(self, trainer, pl_module):
        self.rec.steps, self.rec.tokens = int(trainer.global_step), int(getattr(pl_module, "tokens_seen", 0))

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
        self.status = "ok"
        for cb in trainer.callbacks:
            reason = getattr(cb, "stopping_reason", None)
            if reason is not None and getattr(reason, "name", "NOT_STOPPED") != "NOT_STOPPED":
                self.status = "stopped early"
                if reason.name == "NON_FINITE_METRIC":
                    self.status = "failed: " + one_line(cb.stopping_reason_message or "val/loss is not finite")
        gave_up = gave_up_message(trainer)
        if gave_up:  # the loss guard ended a diverging run (gptlit.training.guard): the job failed
            self.status = "failed: " + one_line(gave_up)
        pruned = next((cb.pruned for cb in trainer.callbacks if getattr(cb, "pruned", None)), None)
        if pruned is not None:  # a search stopped this trial (gptlit.training.pruning): not a failure
            self.status = "pruned"
            self.rec.extra["pruned"] = dict(pruned)
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
