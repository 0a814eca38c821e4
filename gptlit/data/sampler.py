"""The training data order: a shuffle that a resumed run continues exactly where the killed one stood.

Why a sampler of our own rather than a library's (toy runs with Lightning 2.6.6, comparing the
sample indices of an uninterrupted run with those of a run killed and resumed):
- a plain shuffled DataLoader starts its epoch over on resume: the batches before the checkpoint
  are trained twice and as many at the end of the epoch never;
- torchdata's StatefulDataLoader is exact on one process, but under DDP Lightning wraps its
  sampler and the ranks together lose samples; and with workers a resume in the second epoch
  replays the first epoch's order, because Lightning calls iter() on the loader (the workers
  prefetch at once) before it calls set_epoch();
- litdata's StreamingDataLoader restores the resumed epoch, but the next epoch replays the
  previous one's tail and stops early (Lightning stops at len() without exhausting it).
A DistributedSampler subclass avoids all three: Lightning leaves a DistributedSampler in place
(each rank reads its own shard), the order is a pure function of (seed, epoch), and the position
is set when the sampler is made, before the loader's first iter(), so prefetching workers start
at the right window. It was exact in every case tried, and it is a few lines.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DistributedSampler


class ResumableDistributedSampler(DistributedSampler):
    """Shuffles with seed + epoch (as DistributedSampler does) and, in the epoch it was made for,
    skips the first `start_batch` batches: those the checkpoint's run had trained already.

    len() stays the whole epoch's: Lightning counts the batches it restored plus those yielded,
    and ends the epoch at len().
    """

    def __init__(self, dataset, batch_size: int, drop_last: bool, *, seed: int, num_replicas: int = 1, rank: int = 0,
                 epoch: int = 0, start_batch: int = 0, step_size: int | None = None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.batch_size, self.batch_drop_last = batch_size, drop_last
        # samples of one optimizer step on this rank (data.batch_size); batch_size is the DataLoader's
        # batch, a micro-batch of it. drop_last drops an incomplete step, never part of one.
        self.step_size = step_size or batch_size
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.step_size * self.step_size if self.batch_drop_last else n

    def batches_per_epoch(self) -> int:
        """Batches one rank trains per epoch (the DataLoader's len())."""
        return math.ceil(len(self) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start_batch = 0  # a new epoch starts at its first batch
        super().set_epoch(epoch)

    def __iter__(self):
        # DistributedSampler's order (randperm of seed + epoch, padded to a multiple of the ranks, every
        # num_replicas-th index from this rank's), kept as an int64 tensor rather than its Python list:
        # 8 bytes a window instead of about 36, which matters for a corpus of hundreds of millions of windows.
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=g)
        if self.total_size > len(order):
            order = order.repeat(math.ceil(self.total_size / len(order)))
        order = order[: self.total_size][self.rank :: self.num_replicas][: len(self)]
        for chunk in order[self.start_batch * self.batch_size :].split(1 << 16):
            yield from chunk.tolist()


@dataclass
class TrainOrder:
    """What the train loader's sampler is made with: the shuffle seed and, when resuming, the epoch
    and the batches of it already trained. The datamodule holds one; gptlit.training.resume.setup_exact_resume
    gives it the run's (GPTDataModule.set_plan)."""

    seed: int | None = None  # None: the run's seed is not set yet (a random one, as a plain shuffle would)
    epoch: int = 0
    start_batch: int = 0

    def sampler(self, dataset, batch_size: int, drop_last: bool, trainer=None,
                step_size: int | None = None) -> ResumableDistributedSampler:
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return ResumableDistributedSampler(dataset, batch_size, drop_last, num_replicas=world, rank=rank,
                                           seed=default_seed(self.seed), epoch=self.epoch, start_batch=self.start_batch,
                                           step_size=step_size)


def default_seed(seed: int | None) -> int:
    """The shuffle seed: the run's seed, else a random one shared with the other DDP ranks through the
    environment (Lightning starts them with a copy of rank 0's environment)."""
    if seed is not None:
        return int(seed)
    return int(os.environ.setdefault("GPTLIT_SHUFFLE_SEED", str(int.from_bytes(os.urandom(4), "little"))))


def corpus_digest(tokens, pieces: int = 64, width: int = 64) -> str:
    """SHA-256 of the token count and of `pieces` runs of `width` tokens spread evenly over the split:
    cheap on a memory-mapped corpus of billions of tokens (contiguous slices only, as TokenFile reads),
    and an edit of the text moves the tokens after it."""
    n = len(tokens)
    h = hashlib.sha256(n.to_bytes(8, "little"))
    for i in range(pieces):
        start = (n - width) * i // (pieces - 1) if n > width else 0
        h.update(np.asarray(tokens[start : start + width]).astype(np.int64).tobytes())
    return h.hexdigest()[:16]


def order_fingerprint(dataset, batch_size: int, world_size: int, micro_batch_size: int | None = None) -> dict:
    """Everything the data order depends on besides the seed: a resume is exact only where all match.
    The position is counted in DataLoader batches, so the micro-batch size must match too."""
    tokens = getattr(dataset, "tokens", None)
    return {
        "batch_size": int(batch_size),
        "micro_batch_size": int(micro_batch_size or batch_size),
        "world_size": int(world_size),
        "max_length": getattr(dataset, "max_length", None),
        "stride": getattr(dataset, "stride", None),
        "windows": len(dataset),
        "corpus": corpus_digest(tokens) if tokens is not None else None,
    }


# How each fingerprint entry is set, for the error that names a difference.
FINGERPRINT_KEYS = {
    "batch_size": "data.batch_size",
    "micro_batch_size": "data.micro_batch_size (set it to the checkpoint's value)",
    "world_size": "processes (trainer.devices x trainer.num_nodes)",
    "max_length": "data.max_length",
    "stride": "data.stride",
    "windows": "train windows (the corpus or data.val_fraction)",
    "corpus": "training corpus (token digest)",
}
