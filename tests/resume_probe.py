"""A test-only callback (tests/test_resume.py, benchmarks/resume_soak.py): every optimizer step's loss and
batch, logged the moment it is known, and a kill -9 of the whole run at a chosen step or during a save."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

import lightning as L


def kill_run() -> None:
    """SIGKILL this process and the DDP ranks it started (the test starts each run in its own session)."""
    os.killpg(os.getpgid(0), signal.SIGKILL)


class StepLog(L.Callback):
    """Appends `step,loss,batch` to <dirpath>/steps_rank<R>.csv after each optimizer step: the loss as
    float.hex (every digit) and a digest of the batch's token ids.

    kill_at_step: kill -9 the run right after that step is logged (before any checkpoint of it).
    kill_during_save: on that save (1 = the first this run writes), kill -9 the run once the checkpoint's
    temporary file has bytes in it, i.e. while it is being written.
    """

    def __init__(self, dirpath: str, kill_at_step: int | None = None, kill_during_save: int | None = None):
        self.path = Path(dirpath)
        self.kill_at_step, self.kill_during_save = kill_at_step, kill_during_save
        self.saves = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        digest = hashlib.sha256(batch[0].cpu().numpy().tobytes()).hexdigest()[:12]
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / f"steps_rank{trainer.global_rank}.csv", "a") as f:
            f.write(f"{trainer.global_step},{float(loss.detach()).hex()},{digest}\n")
        if self.kill_at_step is not None and trainer.global_step >= self.kill_at_step and trainer.is_global_zero:
            kill_run()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.saves += 1
        if self.saves != self.kill_during_save or not trainer.is_global_zero:
            return
        ckpt_dir = Path(trainer.default_root_dir) / "checkpoints"

        def watch():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                for p in ckpt_dir.glob(".*.partial"):
                    try:
                        if p.stat().st_size > 0:
                            (self.path / "killed_during").write_text(f"{p.name} {p.stat().st_size}")
                            kill_run()
                    except FileNotFoundError:
                        pass
                time.sleep(0.0002)

        sys.setswitchinterval(1e-5)  # let the watcher run between torch.save's writes
        threading.Thread(target=watch, daemon=True).start()


class CtrlCAtMicroBatch(L.Callback):
    """Ctrl-C (a KeyboardInterrupt) at the end of micro-batch `batch` (0-based, in the epoch)."""

    def __init__(self, batch: int):
        self.batch = batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.batch:
            raise KeyboardInterrupt


class SigintInBackward(L.Callback):
    """A real Ctrl-C (SIGINT to this process) in the middle of micro-batch `batch`'s backward: sent by a
    gradient hook on a parameter of the first block, once the gradients of the later layers are in."""

    def __init__(self, batch: int):
        self.batch = batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx != self.batch:
            return
        p = next(p for n, p in pl_module.named_parameters() if ".0." in n and p.dim() == 2)
        handle = None

        def hook(grad):
            handle.remove()
            signal.raise_signal(signal.SIGINT)  # to this thread (CPU autograd runs the hooks in the main one)
            return grad

        handle = p.register_hook(hook)
