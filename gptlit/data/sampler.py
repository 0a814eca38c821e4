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
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler

from gptlit.core.errors import UserError


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


def draw_from_global_generator() -> int:
    """One int64 from torch's global generator, drawn as DataLoader and RandomSampler draw theirs."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


class GlobalOrderSampler(Sampler):
    """The order of `DataLoader(dataset, shuffle=True)` with no generator given (the book's loader),
    resumable mid-epoch.

    At each epoch's first batch it draws from torch's global generator what such a loader draws there:
    one int64 that DataLoader's iter() takes as its base seed, then one that RandomSampler seeds its
    permutation with (`randperm` of a generator seeded with it). The loader itself is given its own
    generator, so nothing else draws: the global generator (which dropout shares) ends up where the
    book's script leaves it, and with the book's seed the permutation is the book's. The drawn seed is
    kept in `order.seed` (written into checkpoints): a run resumed mid-epoch takes it instead of drawing
    and skips the batches already trained; one resumed at an epoch's start draws, after `order.before_draw`
    has put back the checkpoint's RNG states (set by gptlit.training.resume.setup_exact_resume)."""

    def __init__(self, dataset, batch_size: int, drop_last: bool, order: "TrainOrder", step_size: int | None = None):
        self.dataset, self.batch_size, self.batch_drop_last = dataset, batch_size, drop_last
        self.step_size = step_size or batch_size
        self.order = order
        self.epoch, self.start_batch = order.epoch, order.start_batch

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.step_size * self.step_size if self.batch_drop_last else n

    def batches_per_epoch(self) -> int:
        return math.ceil(len(self) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.start_batch = epoch, 0

    def __iter__(self):
        order = self.order
        if not (self.start_batch and order.seed is not None and order.epoch == self.epoch):
            if order.before_draw is not None:
                order.before_draw()
            draw_from_global_generator()  # what DataLoader's iter() draws for its base seed
            order.seed, order.epoch = draw_from_global_generator(), self.epoch  # RandomSampler's seed
            self.start_batch = 0
        g = torch.Generator()
        g.manual_seed(order.seed)
        perm = torch.randperm(len(self.dataset), generator=g)[: len(self)]
        start, self.start_batch = self.start_batch, 0  # a second iter() in this epoch draws afresh, as a DataLoader does
        yield from perm[start * self.batch_size :].tolist()


@dataclass
class TrainOrder:
    """What the train loader's sampler is made with: the shuffle seed and, when resuming, the epoch
    and the batches of it already trained. The datamodule holds one; gptlit.training.resume.setup_exact_resume
    gives it the run's (GPTDataModule.set_plan).

    mode (data.order): "sampler", gptlit's shuffle of (seed, epoch); "global", GlobalOrderSampler's, where
    `seed` is the current epoch's drawn seed (None until drawn)."""

    seed: int | None = None  # None: the run's seed is not set yet (a random one, as a plain shuffle would)
    epoch: int = 0
    start_batch: int = 0
    mode: str = "sampler"
    before_draw: Callable[[], None] | None = None  # global: called before an epoch's seed is drawn

    def sampler(self, dataset, batch_size: int, drop_last: bool, trainer=None,
                step_size: int | None = None) -> ResumableDistributedSampler | GlobalOrderSampler:
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if self.mode == "global":
            if world > 1:
                raise UserError(f"data.order=global runs on one process, this run has {world}: "
                                f"use data.order=sampler (each process its shard of one shuffle)")
            return GlobalOrderSampler(dataset, batch_size, drop_last, self, step_size=step_size)
        return ResumableDistributedSampler(dataset, batch_size, drop_last, num_replicas=world, rank=rank,
                                           seed=default_seed(self.seed), epoch=self.epoch, start_batch=self.start_batch,
                                           step_size=step_size)


SEED_ENV = "GPTLIT_SHUFFLE_SEED"


def default_seed(seed: int | None, run: str | None = None) -> int:
    """The shuffle seed: the run's seed, else a random one for the run `run` (its output directory).

    The random one is kept in the environment as `<seed>@<run>`: the DDP ranks of a run, which
    Lightning starts with a copy of rank 0's environment, read rank 0's; the next job of a sweep in
    the same process is another run and draws its own (with seed=null the jobs of a sweep shared one)."""
    if seed is not None:
        return int(seed)
    key = os.path.abspath(run) if run else ""
    value, _, held_for = os.environ.get(SEED_ENV, "").partition("@")
    if value and held_for == key:
        return int(value)
    drawn = int.from_bytes(os.urandom(4), "little")
    os.environ[SEED_ENV] = f"{drawn}@{key}"
    return drawn


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


def order_fingerprint(dataset, batch_size: int, world_size: int, micro_batch_size: int | None = None,
                      order: str | None = None) -> dict:
    """Everything the data order depends on besides the seed: a resume is exact only where all match.
    The position is counted in DataLoader batches, so the micro-batch size must match too. data.order
    is an entry only when it is global (checkpoints of the sampler order never had one)."""
    tokens = getattr(dataset, "tokens", None)
    return {**({"order": order} if order == "global" else {}),
        "batch_size": int(batch_size),
        "micro_batch_size": int(micro_batch_size or batch_size),
        "world_size": int(world_size),
        "max_length": getattr(dataset, "max_length", None),
        "stride": getattr(dataset, "stride", None),
        "windows": len(dataset),
        "corpus": corpus_digest(tokens) if tokens is not None else None,
    }

