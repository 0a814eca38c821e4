"""Text corpora, tokenized and cut into sliding windows, as a LightningDataModule.

GPTDataModule takes its settings as a DataConfig (gptlit.data.config), asks gptlit.data.sources
what to tokenize, keeps the tokens in a token file on disk (gptlit.data.token_cache: tokenized once
per corpus, memory-mapped, read a window at a time, so memory stays flat whatever the corpus size)
and serves the windows of gptlit.data.windows: train is the first (1 - val_fraction) of the
tokens, val the rest. With val_all (task=validate) the val set is every window of the whole corpus.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset

from gptlit.core.errors import UserError
from gptlit.data.config import DataConfig
from gptlit.data.sampler import TrainOrder
from gptlit.data.sources import cache_dir, source_for
from gptlit.data.token_cache import CachedTokens, Corpus, TokenFile, ensure
from gptlit.data.windows import WindowDataset, split_point


class GPTDataModule(L.LightningDataModule):
    """Sliding windows over a tokenized corpus.

    Settings: a DataConfig, or its fields as keywords (Hydra instantiates the `data` node this way),
    or both (the keywords on top); see DataConfig for each one and its default. What a run decides
    about the datamodule rather than the user sets comes as arguments:
      val_all         validate on every window of the whole corpus, no train split (task=validate)
      prepare_wait_s  a process that waits for another's token file gives up after this many
                      seconds if that one never started (gptlit.run.build passes dist_timeout_s;
                      see prepare_tokens); None = wait as long as it takes
      set_plan(...)   the micro-batch size and the training data order, once they are known
      use_tokenizer   the run's tokenizer (a gptlit.model.tokenizer.Tokenizer); until set, GPT-2's
    `base` is positional-only: data.config (a Hugging Face dataset's configuration) is a keyword.
    """

    def __init__(self, base: DataConfig | None = None, /, *, val_all: bool = False,
                 prepare_wait_s: float | None = None, **settings):
        super().__init__()
        self.config = DataConfig.of(base, **settings)  # checked; stride resolved
        self.source = source_for(self.config)  # checks source, path and url: a bad one fails before the model is built
        self.val_all, self.prepare_wait_s = val_all, prepare_wait_s
        self.cached: CachedTokens | None = None
        self.tokens: TokenFile | None = None
        self.train_set = self.val_set = None
        self.loader_batch_size = self.config.batch_size  # what a DataLoader batch holds (see set_plan)
        self.order = TrainOrder(mode=self.config.order)  # shuffle seed and resume position of the train loader (see set_plan)
        self._tokenizer = None  # the run's Tokenizer (use_tokenizer); None: GPT-2's

    def use_tokenizer(self, tokenizer) -> None:
        """The tokenizer of this corpus' tokens (a gptlit.model.tokenizer.Tokenizer; gptlit.data.tokenizer_cache.resolve
        makes the one a `tokenizer` group node names). Refused once the tokens are read with another one."""
        if self.cached is not None and tokenizer.fingerprint != self.tokenizer.fingerprint:
            raise ValueError(f"the tokens are already read with {self.tokenizer.describe()}, not {tokenizer.describe()}")
        self._tokenizer = tokenizer

    @property
    def tokenizer(self):
        """The run's tokenizer: the one use_tokenizer gave, else GPT-2's."""
        from gptlit.model.tokenizer import gpt2

        return self._tokenizer or gpt2()

    def set_plan(self, *, micro_batch_size: int | None = None, order: TrainOrder | None = None) -> None:
        """What a training run decides once the datamodule is built; call it before the loaders are made.

        micro_batch_size: samples per DataLoader batch, a divisor of data.batch_size
            (gptlit.run.build passes gptlit.training.memory's plan); until set, data.batch_size.
        order: the train loader's shuffle seed and, when resuming, its epoch and the batches of it
            already trained (gptlit.training.resume.setup_exact_resume); until set, TrainOrder().
        An argument left out keeps its value."""
        if micro_batch_size is not None:
            b = self.config.batch_size
            if isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, int) \
                    or micro_batch_size < 1 or b % micro_batch_size:
                raise ValueError(f"micro_batch_size={micro_batch_size} must be a positive divisor of data.batch_size={b}")
            self.loader_batch_size = micro_batch_size
        if order is not None:
            self.order = order

    def prepare_data(self):
        self.prepare_tokens()

    def corpus(self) -> Corpus:
        """What to tokenize (gptlit.data.sources); the url source is downloaded (once) first."""
        return self.source.corpus(self.config)

    def token_cache_dir(self) -> Path:
        return Path(self.config.cache_dir) if self.config.cache_dir else cache_dir() / "tokens"

    def prepare_tokens(self) -> CachedTokens:
        """The corpus' token file, tokenized now unless cached (one process tokenizes, others wait).

        Under a multi-process launch only the preparer tokenizes: global rank 0 when the cache
        directory is one shared filesystem (prepare_per_node=False), local rank 0 of each node when
        every node has its own (True). The others wait for its file, so a filesystem whose file
        locks do not reach across nodes still gets one preparation."""
        from gptlit.core.launch_env import prepares_data

        if self.cached is None or not os.path.isfile(self.cached.path):
            tokenizer = self.tokenizer
            self.cached = ensure(self.corpus(), self.token_cache_dir(), self.config.num_proc,
                                 preparer=prepares_data(bool(self.config.prepare_per_node)), wait_s=self.prepare_wait_s,
                                 tokenizer=tokenizer)
        return self.cached

    def setup(self, stage: str | None = None):
        if self.tokens is not None:
            return
        cached = self.prepare_tokens()
        tokens = TokenFile(cached.path, dtype=cached.dtype)
        n = len(tokens)
        cut = split_point(n, self.config.val_fraction)
        train, val = tokens.span(0, cut), tokens.span(cut, n)
        need = self.config.max_length + 1
        if self.val_all:
            if n < need:
                raise UserError(
                    f"corpus too short: {n} tokens, but one window needs data.max_length+1={need}; "
                    f"use more text or a smaller data.max_length"
                )
            train = val = tokens
        elif len(train) < need or len(val) < need:
            raise UserError(
                f"corpus too short: {n} tokens give {len(train)} train and {len(val)} val tokens, but one window "
                f"needs data.max_length+1={need} in each split; use more text, a smaller data.max_length "
                f"or a different data.val_fraction={self.config.val_fraction}"
            )
        self.tokens = tokens
        self.train_set = WindowDataset(train, self.config.max_length, self.config.stride)
        self.val_set = WindowDataset(val, self.config.max_length, self.config.stride)

    def summary(self) -> str:
        if self.val_all:
            return (
                f"corpus: {len(self.tokens):,} tokens -> validating on all of them: {len(self.val_set):,} windows "
                f"(max_length {self.config.max_length}, stride {self.config.stride}){self._val_cap_note()}"
            )
        return (
            f"corpus: {len(self.tokens):,} tokens -> train {len(self.train_set.tokens):,} tokens / "
            f"{len(self.train_set):,} windows, val {len(self.val_set.tokens):,} tokens / {len(self.val_set):,} windows "
            f"(max_length {self.config.max_length}, stride {self.config.stride}){self._val_cap_note()}"
        )

    def val_indices(self) -> list[int] | None:
        """max_val_windows val windows spread evenly over the val split; None when all are used."""
        n, k = len(self.val_set), self.config.max_val_windows
        if k is None or n <= k:
            return None
        return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})

    def _val_cap_note(self) -> str:
        idx = self.val_indices()
        return "" if idx is None else f"; validating on {len(idx):,} of them, spread evenly (data.max_val_windows)"

    def _loader(self, ds, shuffle: bool, sampler=None):
        m = self.loader_batch_size  # a DataLoader batch is a micro-batch (data.batch_size when none are needed)
        # generator: iter() draws the loader's base seed from it, not from the global RNG that dropout
        # uses, so a resumed run's dropout masks match the uninterrupted run's
        return DataLoader(
            ds,
            batch_size=m,
            shuffle=shuffle if sampler is None else None,
            sampler=sampler,
            drop_last=shuffle and len(ds) >= m,
            num_workers=self.config.num_workers,
            persistent_workers=self.config.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator(),
        )

    def train_sampler(self, trainer=None):
        """The training order: shuffled per epoch with the seed, each rank its shard, resumable mid-epoch;
        or, with data.order=global, DataLoader(shuffle=True)'s (gptlit/data/sampler.py)."""
        # batches of data.batch_size (an incomplete last one dropped), read in micro-batches: the same
        # samples in the same order whatever the micro-batch size
        return self.order.sampler(self.train_set, self.loader_batch_size, len(self.train_set) >= self.config.batch_size,
                                  trainer if trainer is not None else self.trainer, step_size=self.config.batch_size)

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=True, sampler=self.train_sampler())

    def train_eval_indices(self) -> list[int]:
        """`eval_train_batches` batches' worth of train windows spread evenly over the train split."""
        n, k = len(self.train_set), min(len(self.train_set), self.config.eval_train_batches * self.config.batch_size)
        return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})

    def train_eval_dataloader(self) -> DataLoader | None:
        """Train windows evaluated at every validation with dropout off (the book's evaluate_model "train
        loss"): always the same windows, spread over the whole train split, so train and val loss compare."""
        if self.val_all or not self.config.eval_train_batches:
            return None
        return self._loader(Subset(self.train_set, self.train_eval_indices()), shuffle=False)

    def val_dataloader(self):
        """The val windows; with eval_train_batches > 0 a second loader of train windows follows."""
        idx = self.val_indices()
        val_set = self.val_set if idx is None else Subset(self.val_set, idx)
        val, train_eval = self._loader(val_set, shuffle=False), self.train_eval_dataloader()
        return val if train_eval is None else [val, train_eval]
