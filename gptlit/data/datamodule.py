"""Text corpora, tokenized and cut into sliding windows, as a LightningDataModule.

Window i of a split with n tokens starts at i * stride: input = tokens[s : s + L],
target = tokens[s + 1 : s + L + 1]. A split holds (n - L - 1) // stride + 1 windows
when n >= L + 1, else none. Train is the first (1 - val_fraction) of the tokens,
val the rest, so no window crosses the split. With val_all (task=validate) the val set
is every window of the whole corpus.

The tokens live in a token file on disk (gptlit.data.token_cache): tokenized once per corpus,
memory-mapped, and read a window at a time, so memory stays flat whatever the corpus size.
"""

from __future__ import annotations

import glob
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from gptlit.core.files import atomic_file, user_path
from gptlit.core.errors import UserError
from gptlit.data.sampler import TrainOrder
from gptlit.data.token_cache import CORPUS_SUFFIXES, CachedTokens, Corpus, TokenFile, ensure

SOURCES = ("pydocs", "files", "url")


def num_windows(n_tokens: int, max_length: int, stride: int) -> int:
    """Windows of max_length inputs (+1 target) every `stride` tokens in n_tokens tokens."""
    return (n_tokens - max_length - 1) // stride + 1 if n_tokens >= max_length + 1 else 0


def split_point(n_tokens: int, val_fraction: float) -> int:
    """Index of the first validation token."""
    return n_tokens - int(round(n_tokens * val_fraction))


class WindowDataset(Dataset):
    """Windows over `tokens`: a TokenFile (memory-mapped, opened in each worker) or a tensor."""

    def __init__(self, tokens: TokenFile | torch.Tensor, max_length: int, stride: int):
        self.tokens, self.max_length, self.stride = tokens, max_length, stride
        self.n = num_windows(len(tokens), max_length, stride)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        s = i * self.stride
        chunk = self.tokens[s : s + self.max_length + 1]
        chunk = torch.from_numpy(chunk.astype(np.int64)) if isinstance(chunk, np.ndarray) else chunk.long()
        return chunk[:-1], chunk[1:]


def find_text_files(path: str) -> list[Path]:
    """A file, every .txt/.txt.gz/.jsonl/.jsonl.gz under a folder, or the matches of a glob, sorted."""
    p = user_path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.name.endswith(CORPUS_SUFFIXES) and f.is_file())
        if not files:
            raise UserError(
                f"data.path={path}: folder {p} holds no {', '.join(CORPUS_SUFFIXES)} files; "
                f"add some or point at a file or glob"
            )
        return files
    if any(c in str(path) for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if os.path.isfile(f))
        if files:
            return files
        raise UserError(f"data.path={path}: the glob {p} matches no files; check the pattern")
    raise UserError(
        f"data.path={path}: no such file or folder ({p}); give a text file, a folder of .txt files or a glob"
    )


def pydocs_documents() -> list[str]:
    """The standard library's pydoc topics: English prose that every Python install carries."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def cache_dir() -> Path:
    base = os.environ.get("GPTLIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gptlit"
    )
    return Path(base)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, sha256: str | None, dest: Path, timeout: float = 30.0) -> Path:
    """Download url to dest once; check its SHA-256. Never leaves a partial or wrong file at dest."""
    if dest.is_file() and (not sha256 or sha256_of(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(dest) as tmp:
        with open(tmp, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as r:
                    while block := r.read(1 << 16):
                        out.write(block)
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                raise UserError(
                    f"could not download {url} ({reason}); offline? copy the file to {dest} "
                    f"or train on a local file with data=text data.path=<file>"
                ) from None
        got = sha256_of(tmp)
        if sha256 and got != sha256:
            raise UserError(f"download of {url} has SHA-256 {got}, expected {sha256}; the file at that URL changed, set data.sha256 or data.url")
    return dest


class GPTDataModule(L.LightningDataModule):
    """Sliding windows over a tokenized corpus.

    source: "pydocs" (the stdlib's pydoc topics), "files" (data.path: file, folder or glob)
    or "url" (downloaded once into the cache, checked against sha256; data.path, if set,
    is a local copy to use instead). Documents are joined with <|endoftext|>: each file, or each
    line of a .jsonl file (its text under `text_key`). The tokens are cached on disk (cache_dir,
    default GPTLIT_CACHE or ~/.cache/gptlit), tokenized by num_proc processes (default: all cores).
    max_val_windows caps the validation windows (spread evenly over the val split); None = all.
    """

    def __init__(
        self,
        source: str = "pydocs",
        path: str | None = None,
        url: str | None = None,
        sha256: str | None = None,
        max_length: int = 128,
        stride: int | None = None,
        val_fraction: float = 0.1,
        batch_size: int = 16,
        micro_batch_size: int | str = "auto",  # samples per forward/backward; batch_size is per optimizer step
        num_workers: int = 0,
        name: str | None = None,
        val_all: bool = False,  # validate on every window of the whole corpus (task=validate); no train split
        eval_train_batches: int = 5,  # train batches also evaluated (eval mode) at each validation; 0 = off
        text_key: str = "text",
        num_proc: int | None = None,
        cache_dir: str | None = None,
        max_val_windows: int | None = None,
        prepare_per_node: bool = False,  # several nodes: which processes tokenize (see prepare_tokens)
    ):
        super().__init__()
        self.source, self.path, self.url, self.sha256 = source, path, url, sha256
        self.max_length = max_length
        self.stride = max_length if stride is None else stride
        self.val_fraction, self.batch_size, self.num_workers = val_fraction, batch_size, num_workers
        self.val_all, self.eval_train_batches = val_all, eval_train_batches
        self.text_key, self.num_proc, self.cache_dir, self.max_val_windows = text_key, num_proc, cache_dir, max_val_windows
        self.prepare_per_node = prepare_per_node
        self.prepare_wait_s: float | None = None  # set by gptlit.run.build from dist_timeout_s: see prepare_tokens
        self.cached: CachedTokens | None = None
        self.tokens: TokenFile | None = None
        self.micro_batch_size = micro_batch_size
        self.loader_batch_size = batch_size  # what a DataLoader batch holds: the micro-batch, once planned
        self.train_set = self.val_set = None
        self.order = TrainOrder()  # shuffle seed and resume position of the train loader (set by gptlit.run.build)
        self.validate()

    def validate(self):
        if self.source not in SOURCES:
            raise UserError(f"data.source={self.source} is unknown: use one of {', '.join(SOURCES)}")
        if self.source == "files" and not self.path:
            raise UserError("data.source=files (data=text) needs data.path=<text file, folder or glob>")
        if self.source == "url" and not self.url and not self.path:
            raise UserError("data.source=url needs data.url=<address>")
        for name in ("max_length", "stride", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise UserError(f"data.{name}={v} must be a positive integer")
        m = self.micro_batch_size
        if m != "auto" and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise UserError(f"data.micro_batch_size={m} must be auto or a positive integer")
        if not isinstance(self.eval_train_batches, int) or self.eval_train_batches < 0:
            raise UserError(f"data.eval_train_batches={self.eval_train_batches} must be >= 0 (0 turns it off)")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise UserError(f"data.num_workers={self.num_workers} must be >= 0")
        for name in ("num_proc", "max_val_windows"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise UserError(f"data.{name}={v} must be a positive integer or null")
        if not isinstance(self.text_key, str) or not self.text_key:
            raise UserError(f"data.text_key={self.text_key} must be the JSON key of the text (e.g. text)")
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"data.val_fraction={self.val_fraction} must be between 0 and 1 (e.g. 0.1)")
        if self.path:
            if self.source == "url":
                if not user_path(self.path).is_file():
                    raise UserError(f"data.path={self.path}: no such file ({user_path(self.path)})")
            else:
                find_text_files(self.path)  # fail now, not after the model is built

    def _url_dest(self) -> Path:
        return cache_dir() / Path(self.url.split("?")[0]).name

    def prepare_data(self):
        self.prepare_tokens()

    def corpus(self) -> Corpus:
        """What to tokenize; the url source is downloaded (once) first."""
        if self.source == "pydocs":
            return Corpus("pydocs", documents=tuple(pydocs_documents()))
        if self.source == "url":
            if self.path:
                f = user_path(self.path)
                if self.sha256 and sha256_of(f) != self.sha256:
                    raise UserError(
                        f"data.path={self.path} has SHA-256 {sha256_of(f)}, not the expected {self.sha256}; "
                        f"for other text use data=text"
                    )
            else:
                f = download(self.url, self.sha256, self._url_dest())
            return Corpus(f.name, files=(f,))
        files = find_text_files(self.path)
        name = files[0].name if len(files) == 1 else user_path(self.path).name or "corpus"
        return Corpus(name, files=tuple(files), text_key=self.text_key)

    def token_cache_dir(self) -> Path:
        return user_path(self.cache_dir) if self.cache_dir else cache_dir() / "tokens"

    def prepare_tokens(self) -> CachedTokens:
        """The corpus' token file, tokenized now unless cached (one process tokenizes, others wait).

        Under a multi-process launch only the preparer tokenizes: global rank 0 when the cache
        directory is one shared filesystem (prepare_per_node=False), local rank 0 of each node when
        every node has its own (True). The others wait for its file, so a filesystem whose file
        locks do not reach across nodes still gets one preparation."""
        from gptlit.core.launch_env import prepares_data

        if self.cached is None or not os.path.isfile(self.cached.path):
            self.cached = ensure(self.corpus(), self.token_cache_dir(), self.num_proc,
                                 preparer=prepares_data(bool(self.prepare_per_node)), wait_s=self.prepare_wait_s)
        return self.cached

    def setup(self, stage: str | None = None):
        if self.tokens is not None:
            return
        tokens = TokenFile(self.prepare_tokens().path)
        n = len(tokens)
        cut = split_point(n, self.val_fraction)
        train, val = tokens.span(0, cut), tokens.span(cut, n)
        need = self.max_length + 1
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
                f"or a different data.val_fraction={self.val_fraction}"
            )
        self.tokens = tokens
        self.train_set = WindowDataset(train, self.max_length, self.stride)
        self.val_set = WindowDataset(val, self.max_length, self.stride)

    def summary(self) -> str:
        if self.val_all:
            return (
                f"corpus: {len(self.tokens):,} tokens -> validating on all of them: {len(self.val_set):,} windows "
                f"(max_length {self.max_length}, stride {self.stride}){self._val_cap_note()}"
            )
        return (
            f"corpus: {len(self.tokens):,} tokens -> train {len(self.train_set.tokens):,} tokens / "
            f"{len(self.train_set):,} windows, val {len(self.val_set.tokens):,} tokens / {len(self.val_set):,} windows "
            f"(max_length {self.max_length}, stride {self.stride}){self._val_cap_note()}"
        )

    def val_indices(self) -> list[int] | None:
        """max_val_windows val windows spread evenly over the val split; None when all are used."""
        n, k = len(self.val_set), self.max_val_windows
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
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator(),
        )

    def train_sampler(self, trainer=None):
        """The training order: shuffled per epoch with the seed, each rank its shard, resumable mid-epoch
        (gptlit/data/sampler.py)."""
        # batches of data.batch_size (an incomplete last one dropped), read in micro-batches: the same
        # samples in the same order whatever the micro-batch size
        return self.order.sampler(self.train_set, self.loader_batch_size, len(self.train_set) >= self.batch_size,
                                  trainer if trainer is not None else self.trainer, step_size=self.batch_size)

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=True, sampler=self.train_sampler())

    def train_eval_indices(self) -> list[int]:
        """`eval_train_batches` batches' worth of train windows spread evenly over the train split."""
        n, k = len(self.train_set), min(len(self.train_set), self.eval_train_batches * self.batch_size)
        return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})

    def train_eval_dataloader(self) -> DataLoader | None:
        """Train windows evaluated at every validation with dropout off (the book's evaluate_model "train
        loss"): always the same windows, spread over the whole train split, so train and val loss compare."""
        if self.val_all or not self.eval_train_batches:
            return None
        return self._loader(Subset(self.train_set, self.train_eval_indices()), shuffle=False)

    def val_dataloader(self):
        """The val windows; with eval_train_batches > 0 a second loader of train windows follows."""
        idx = self.val_indices()
        val_set = self.val_set if idx is None else Subset(self.val_set, idx)
        val, train_eval = self._loader(val_set, shuffle=False), self.train_eval_dataloader()
        return val if train_eval is None else [val, train_eval]
