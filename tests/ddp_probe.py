"""Test-only callbacks (tests/test_ddp.py, tests/test_multinode.py): what each DDP rank read and the
weights it ended with; a rank that stops answering at a given step."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import lightning as L


def weights_hash(state_dict) -> str:
    """sha256 over the names and bytes of a model's tensors."""
    h = hashlib.sha256()
    for name, t in sorted(state_dict.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class RankProbe(L.Callback):
    """Writes probe_rank<N>.json into dirpath: the first batches' token ids, the sampler and a weights hash."""

    def __init__(self, dirpath: str, batches: int = 4):
        self.dirpath, self.batches = dirpath, batches
        self.seen: list[list[list[int]]] = []
        self.first_step = None

    def on_train_start(self, trainer, pl_module):
        self.first_step = trainer.global_step  # > 0 when the run resumed from a checkpoint

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if len(self.seen) < self.batches:
            self.seen.append(batch[0].tolist())

    def on_train_end(self, trainer, pl_module):
        sampler = trainer.train_dataloader.sampler
        out = dict(
            rank=trainer.global_rank, world_size=trainer.world_size, steps=trainer.global_step,
            first_step=self.first_step, tokens_seen=int(pl_module.tokens_seen),
            weights=weights_hash(pl_module.model.state_dict()), batches=self.seen,
            sampler=type(sampler).__name__, sampler_rank=getattr(sampler, "rank", None),
        )
        Path(self.dirpath, f"probe_rank{trainer.global_rank}.json").write_text(json.dumps(out))


class StopRank(L.Callback):
    """On global rank `rank`, before the batch after `at_step` optimizer steps: write stopped_rank<N>.json
    (the time) into dirpath, then send this process `signal` (SIGSTOP: it hangs, as a frozen node;
    SIGKILL: it dies)."""

    def __init__(self, dirpath: str, rank: int = 1, at_step: int = 3, signal: str = "SIGSTOP"):
        self.dirpath, self.rank, self.at_step, self.signal = dirpath, rank, at_step, signal

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step == self.at_step:
            out = dict(rank=self.rank, step=trainer.global_step, time=time.time(), pid=os.getpid())
            Path(self.dirpath, f"stopped_rank{self.rank}.json").write_text(json.dumps(out))
            os.kill(os.getpid(), getattr(signal, self.signal))


class FailRank(L.Callback):
    """On global rank `rank`, before the batch after `at_step` optimizer steps: raise RuntimeError."""

    def __init__(self, rank: int = 1, at_step: int = 3):
        self.rank, self.at_step = rank, at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step == self.at_step:
            raise RuntimeError(f"injected failure on rank {self.rank} at step {self.at_step}")
