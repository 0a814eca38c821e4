"""A test-only callback (tests/test_ddp.py): what each DDP rank read and the weights it ended with."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L


class RankProbe(L.Callback):
    """Writes probe_rank<N>.json into dirpath: the first batches' token ids, the sampler and a weights hash."""

    def __init__(self, dirpath: str, batches: int = 4):
        self.dirpath, self.batches = dirpath, batches
        self.seen: list[list[list[int]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if len(self.seen) < self.batches:
            self.seen.append(batch[0].tolist())

    def on_train_end(self, trainer, pl_module):
        h = hashlib.sha256()
        for name, t in sorted(pl_module.model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        sampler = trainer.train_dataloader.sampler
        out = dict(
            rank=trainer.global_rank, world_size=trainer.world_size, steps=trainer.global_step,
            tokens_seen=int(pl_module.tokens_seen), weights=h.hexdigest(), batches=self.seen,
            sampler=type(sampler).__name__, sampler_rank=getattr(sampler, "rank", None),
        )
        Path(self.dirpath, f"probe_rank{trainer.global_rank}.json").write_text(json.dumps(out))
