"""Writing checkpoints: last.ckpt (the latest training state, for resuming) and best.ckpt (the lowest
val/loss), each write atomic, and no training step written twice.

- last.ckpt: at every validation, every `every_n_train_steps` optimizer steps and every
  `train_time_interval` minutes of training, when training ends and when an exception stops it.
- best.ckpt: a hard link to the last.ckpt written at the validation that improved the monitored
  metric, so the newest-and-best step is one file and costs no second write. When last.ckpt moves
  on (a new file renamed over the name), best.ckpt keeps the old one. best.ckpt therefore carries
  the optimizer state: resuming from the best point (say, with a lower lr once the run overfits)
  is a use we keep. Without hard links (some network filesystems) it is a copy.
Both write through trainer.save_checkpoint (every rank calls it; rank 0 writes) and AtomicCheckpointIO.
Both subclass Lightning's Checkpoint marker, so Lightning runs them after the other callbacks (the
files hold this validation's early-stopping and loss-plot state) and adds no checkpoint callback
of its own; with both off, gptlit.run.build turns checkpointing off.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from gptlit.core.errors import UserError
from gptlit.core.files import atomic_file, remove_stale_partials, write_error, write_failure
from gptlit.training.contracts import LastState
from gptlit.training.guard import GuardRollback, gave_up_message
from gptlit.training.resume import ExactResume


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file beside the checkpoint, fsync, then os.replace over its name:
    a kill at any moment leaves the previous checkpoint or the new one, each whole.

    Hand-written because Lightning 2.6's TorchCheckpointIO serializes the whole checkpoint into memory
    first (a second copy of weights and optimizer state in RAM), then writes it to a file in the system
    temp dir and moves it into place: a copy, not a rename, where that dir is another filesystem, and
    a file left behind in /tmp on every kill. Remote (fsspec URL) paths still go through Lightning's.
    A write that fails for lack of space or a read-only folder raises OSError (ENOSPC, EROFS) naming the
    checkpoint; the previous file of that name is left as it was.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(path)
        with atomic_file(path, durable=True) as tmp:
            # an open file of ours, not a path: closed on any error, so a failed write's space is free again
            # at once (torch's own file would stay open, held by the traceback, while the failure is reported)
            with open(tmp, "wb") as f:
                try:
                    torch.save(checkpoint, f)
                except Exception as e:
                    # torch reports a full disk as "RuntimeError: [enforce fail at inline_container.cc]
                    # unexpected pos": say which file and why
                    why = write_error(path, e)
                    if why is None:
                        raise
                    raise why from e


def link_or_copy(src: Path, dst: Path) -> None:
    """Make `dst` name the file `src` names now (a hard link, else a copy), atomically."""
    with atomic_file(dst) as tmp:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:  # no hard links on this filesystem
            shutil.copyfile(src, tmp)


class LastCheckpoint(Checkpoint, LastState):
    """`<dirpath>/last.ckpt`: the latest training state, at an optimizer-step boundary (the `LastState` the
    loss guard goes back to; after a Ctrl-C inside an accumulation: that boundary plus the micro-batches
    done since, gptlit.training.resume).

    every_n_train_steps: also every N optimizer steps (null or 0: off).
    train_time_interval: also every M minutes of training (null or 0: off).
    """

    def __init__(self, dirpath: str, filename: str = "last", every_n_train_steps: int | None = None,
                 train_time_interval: float | None = None):
        n, m = every_n_train_steps, train_time_interval
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
            raise UserError(f"callbacks.last_checkpoint.every_n_train_steps={n} must be an integer >= 0 (0 or null: off)")
        if m is not None and (not isinstance(m, (int, float)) or isinstance(m, bool) or m < 0 or not math.isfinite(m)):
            raise UserError(f"callbacks.last_checkpoint.train_time_interval={m} must be minutes >= 0 (0 or null: off)")
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.every_n_train_steps = n or 0
        self.interval_s = (m or 0) * 60.0
        self.saved_step: int | None = None  # global_step of the state on disk (this run)
        self._saved_this_validation = False
        self._due = False  # a cadence save that waits for the next step boundary
        self._step_seen: int | None = None
        self._last_time = time.monotonic()
        self._warned = False

    # the write --------------------------------------------------------------------------------------
    def save(self, trainer) -> bool:
        """Write last.ckpt now, as of the last finished optimizer step (inside an accumulation, one process:
        with the micro-batches of the next step done so far, their gradient included; see
        gptlit.training.resume), unless an optimizer step is half done; never after the loss guard gave up
        (it put the last good state back as last.ckpt). True if it was written."""
        if gave_up_message(trainer):
            return False
        tracker = next((c for c in trainer.callbacks if isinstance(c, ExactResume)), None)
        if tracker is not None and not tracker.at_step_boundary:
            if not self._warned:
                rank_zero_info(f"warning: last.ckpt not written at step {trainer.global_step}: during an optimizer "
                               f"step it could not resume exactly")
                self._warned = True
            return False
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved_step, self._due, self._last_time = trainer.global_step, False, time.monotonic()
        return True

    def save_for_validation(self, trainer) -> bool:
        """last.ckpt for the validation that just ended, once (BestCheckpoint may ask first)."""
        if not self._saved_this_validation:
            self._saved_this_validation = self.save(trainer)
        return self._saved_this_validation

    # when ---------------------------------------------------------------------------------------------
    def _time_is_up(self, trainer) -> bool:
        if not self.interval_s:
            return False
        up = time.monotonic() - self._last_time >= self.interval_s
        if trainer.world_size == 1:
            return up
        # every rank must agree (saving is a collective), so rank 0's clock decides; asked every 10th step
        # only, since a broadcast waits for the device (minutes of interval do not mind 10 steps' delay)
        return trainer.global_step % 10 == 0 and bool(trainer.strategy.broadcast(up, src=0))

    def _validation_follows(self, trainer, batch_idx: int) -> bool:
        """Whether Lightning validates right after this batch (then on_validation_end writes last.ckpt,
        with the validation's results in it)."""
        if not trainer.enable_validation or not sum(trainer.num_val_batches or [0]):
            return False
        every = trainer.check_val_every_n_epoch
        v = trainer.val_check_batch
        if every is None:  # an integer val_check_interval: Lightning counts batches across epochs
            total = trainer.fit_loop.epoch_loop.total_batch_idx
            return isinstance(v, int) and v > 0 and (total + 1) % v == 0
        if (trainer.current_epoch + 1) % every:
            return False
        last = batch_idx + 1 == trainer.num_training_batches
        return last or (isinstance(v, int) and v > 0 and (batch_idx + 1) % v == 0)

    def on_train_start(self, trainer, pl_module):
        self._step_seen, self._last_time = trainer.global_step, time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self._step_seen:  # no optimizer step finished (accumulating)
            return
        self._step_seen = step
        n = self.every_n_train_steps
        final = trainer.max_steps is not None and 0 < trainer.max_steps <= step
        if (n and step % n == 0) or final or self._time_is_up(trainer):
            self._due = True
        if self._due and not self._validation_follows(trainer, batch_idx):
            self.save(trainer)

    def on_validation_start(self, trainer, pl_module):
        self._saved_this_validation = False

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.save_for_validation(trainer)

    def on_train_end(self, trainer, pl_module):
        if self.saved_step != trainer.global_step:  # e.g. steps after the last validation
            self.save(trainer)

    def on_exception(self, trainer, pl_module, exception):
        if trainer.state.fn != TrainerFn.FITTING:
            return
        tracker = next((c for c in trainer.callbacks if isinstance(c, ExactResume)), None)
        # last.ckpt of this step is written already, unless micro-batches of the next one are kept (Ctrl-C
        # inside an accumulation: their gradient so far, see gptlit.training.resume)
        if self.saved_step == trainer.global_step and not (tracker and tracker.partial_step(trainer, pl_module)):
            return
        if isinstance(exception, GuardRollback):  # last.ckpt holds the good state the run goes back to
            return
        if write_failure(exception) is not None:  # after a failed write (disk full, read-only) another fails alike
            return
        try:
            if trainer.world_size == 1:
                self.save(trainer)
            else:
                self.save_alone(trainer)
        except OSError as e:  # the exception that stopped the run is the one to report
            rank_zero_info(f"warning: last.ckpt not written after the error: {e}")

    def save_alone(self, trainer) -> bool:
        """After an exception under DDP: global rank 0 writes last.ckpt of the last finished step by
        itself, with no collective (after one rank failed, a barrier or gather can hang for ever).

        Plain DDP keeps the whole model and optimizer state on every rank, so rank 0's is the run's.
        Sharded strategies (FSDP, DeepSpeed) need every rank to gather it: there the last periodic
        last.ckpt stays the resume point. The data position is exact; only rank 0's RNG states are
        known, so a resume continues the data order exactly but draws new dropout masks."""
        from lightning.pytorch.strategies import DDPStrategy

        strategy = trainer.strategy
        if not trainer.is_global_zero or type(strategy) is not DDPStrategy:
            return False
        tracker = next((c for c in trainer.callbacks if isinstance(c, ExactResume)), None)
        if tracker is not None and not tracker.at_step_boundary:
            return False
        try:
            self.writing_alone = True  # the hooks that run in the dump make no collective (the guard's read)
            if tracker is not None:
                tracker.local_only = True  # its RNG gather is a collective
            # what trainer.save_checkpoint writes, without its barrier (Lightning's own dump)
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            strategy.checkpoint_io.save_checkpoint(checkpoint, self.path)
        except Exception as e:  # the run already failed: report, and keep its own error the one raised
            rank_zero_info(f"warning: last.ckpt could not be written after the failure ({type(e).__name__}: {e})")
            return False
        finally:
            self.writing_alone = False
            if tracker is not None:
                tracker.local_only = False
        self.saved_step = trainer.global_step
        rank_zero_info(f"last.ckpt of step {trainer.global_step} written by rank 0 after the failure: {self.path}")
        return True


class BestCheckpoint(Checkpoint):
    """`<dirpath>/best.ckpt`: the state with the best `monitor` value so far (lowest with mode=min)."""

    def __init__(self, dirpath: str, filename: str = "best", monitor: str = "val/loss", mode: str = "min"):
        if mode not in ("min", "max"):
            raise UserError(f"callbacks.model_checkpoint.mode={mode} is unknown: use min or max")
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.monitor, self.mode = monitor, mode
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.best_model_path = ""

    @property
    def best_model_score(self) -> float | None:  # ModelCheckpoint's name
        return self.best_score

    @property
    def state_key(self) -> str:
        return f"BestCheckpoint{{monitor={self.monitor}, mode={self.mode}}}"

    def state_dict(self):
        return {"best_score": self.best_score, "best_step": self.best_step}

    def load_state_dict(self, state):
        self.best_score, self.best_step = state.get("best_score"), state.get("best_step")

    def improved(self, score: float) -> bool:
        if not math.isfinite(score):
            return False
        return self.best_score is None or (score < self.best_score if self.mode == "min" else score > self.best_score)

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not self.improved(float(value)):
            return
        self.best_score, self.best_step = float(value), trainer.global_step  # before last.ckpt is written: it keeps this
        last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
        if last is not None and last.save_for_validation(trainer):
            if trainer.is_global_zero:
                link_or_copy(last.path, self.path)
            trainer.strategy.barrier("best.ckpt")
        else:
            trainer.save_checkpoint(self.path, weights_only=False)
        self.best_model_path = str(self.path)
