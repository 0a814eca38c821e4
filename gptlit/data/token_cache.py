"""A corpus tokenized once into a flat token file on disk, and read back through a memory map.

`ensure(corpus)` returns the token file of a corpus, tokenizing it first if the cache holds no
complete file for it. The file is the corpus' ids under the run's tokenizer (GPT-2's by default;
gptlit.model.tokenizer), documents joined with its end-of-text token, as little-endian uint16 (uint32
for a vocabulary over 65,536), with a small JSON file beside it (dtype, token and document counts,
the cache key, the format version). Its name carries a hash of everything that decides the
tokens: the files' resolved paths, sizes and modification times (pydocs: the text itself),
the tokenizer's fingerprint, the separator, the settings the corpus' readers declare (e.g.
data.text_key for JSON Lines) and FORMAT_VERSION.

Preparation streams: each file is read by the reader of its format (gptlit.data.readers) in pieces
of about PIECE_BYTES, cut only where tokenizing the pieces gives the same ids as tokenizing the
whole (see gptlit.data.readers.safe_cut), tokenized by a pool of processes in order, and appended
to a temporary file that is renamed into place at the end, the metadata last. A file lock lets one process (DDP rank, sweep job) prepare while others wait.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import multiprocessing
import os
import re
import socket
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from gptlit.core.errors import UserError
from gptlit.core.files import atomic_file, atomic_write, remove_stale_partials
from gptlit.core.file_lock import ProcessLock
from gptlit.data.config import DataConfig
from gptlit.data.readers import DOCUMENTS, Corpus, Piece, reader_for
from gptlit.model.tokenizer import VOCAB_SIZE, Tokenizer, gpt2

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DTYPE = np.dtype("<u2")  # GPT-2's 50,257 ids fit in 16 bits
assert VOCAB_SIZE <= 1 << 16
_TOKENIZER: Tokenizer | None = None  # the tokenizer of the preparation under way, inherited by the forked processes


def dtype_for(tokenizer: Tokenizer) -> np.dtype:
    """uint16 while the ids fit (GPT-2's and most trained BPEs), else uint32."""
    return DTYPE if tokenizer.vocab_size <= 1 << 16 else np.dtype("<u4")
PIECE_BYTES = 4 << 20  # bytes of text per piece sent to a tokenizing process
DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def reader_options(corpus: Corpus) -> dict:
    """The values of the settings its files' readers declare (what they read depends on): the
    corpus' own, else DataConfig's defaults."""
    return {k: corpus.options.get(k, getattr(DataConfig, k)) for f in corpus.files for k in reader_for(f).options}


@dataclasses.dataclass(frozen=True)
class CachedTokens:
    path: Path  # the token file
    n_tokens: int
    n_documents: int
    built: bool  # True if this call tokenized the corpus, False if it found it in the cache
    seconds: float
    dtype: np.dtype = DTYPE


def default_num_proc() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ---- the cache key and the files -----------------------------------------------------------------


def cache_key(corpus: Corpus, tokenizer: Tokenizer | None = None) -> str:
    """The hash of what decides the tokens; GPT-2's (tokenizer=None) is the key of every cache made before the
    tokenizer group, so those files stay valid."""
    tok = tokenizer or gpt2()
    h = hashlib.sha256()
    head = dict(format=FORMAT_VERSION, tokenizer=tok.fingerprint, separator=tok.eot_token, newlines="universal")
    head.update(reader_options(corpus))  # e.g. text_key, when a file is JSON Lines
    h.update(json.dumps(head, sort_keys=True).encode())
    for f in corpus.files:
        st = f.stat()
        h.update(f"\n{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    for doc in corpus.documents or ():
        b = doc.encode("utf-8", "surrogatepass")
        h.update(f"\n{len(b)}\0".encode() + b)
    return h.hexdigest()[:20]


def writable_dir(d: Path) -> Path:
    """d, created if need be; one line if it cannot be written."""
    fix = "set data.cache_dir=<a writable folder> or the GPTLIT_CACHE environment variable"
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".write-test.{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UserError(f"the token cache directory {d} is not writable ({e.strerror}); {fix}") from None
    return d


def corpus_slug(corpus: Corpus) -> str:
    return (re.sub(r"[^A-Za-z0-9_.-]+", "_", corpus.name).strip("._") or "corpus")[:60]


def file_paths(corpus: Corpus, cache_dir: Path, tokenizer: Tokenizer | None = None) -> tuple[Path, Path]:
    stem = f"{corpus_slug(corpus)}-{cache_key(corpus, tokenizer)}"
    return cache_dir / f"{stem}.bin", cache_dir / f"{stem}.json"


def read_meta(bin_path: Path, meta_path: Path) -> tuple[dict | None, str | None]:
    """(metadata, None) for a complete token file; (None, why) for a damaged one; (None, None) if absent."""
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as e:
        return None, f"its metadata {meta_path.name} is unreadable ({e})"
    if meta.get("format") != FORMAT_VERSION or meta.get("dtype") not in (DTYPE.str, "<u4"):
        return None, f"its metadata {meta_path.name} has another format"
    want = meta["n_tokens"] * np.dtype(meta["dtype"]).itemsize
    size = bin_path.stat().st_size if bin_path.exists() else None
    if size != want:
        got = "is missing" if size is None else f"has {size:,} bytes"
        return None, f"{bin_path.name} {got}, but its metadata says {meta['n_tokens']:,} tokens ({want:,} bytes)"
    return meta, None


def ensure(corpus: Corpus, cache_dir: Path, num_proc: int | None = None, piece_bytes: int = PIECE_BYTES,
           preparer: bool = True, poll_s: float = 1.0, wait_s: float | None = None,
           tokenizer: Tokenizer | None = None) -> CachedTokens:
    """The token file of `corpus` under cache_dir, tokenizing it first unless a complete one is there.

    While another process tokenizes it (it holds the lock file `<token file>.lock`), wait for it.
    preparer=False (a process of a multi-node launch that is not the one preparing): never tokenize,
    wait until the preparer's complete file appears.
    wait_s bounds every wait: if after wait_s seconds the preparer has not even started (no lock
    file and no partial file in cache_dir: the folder is not the one it writes to), or once started
    its partial token file has not grown for wait_s seconds (it died or hangs), stop with a UserError.
    tokenizer: the run's (gptlit.model.tokenizer); None = GPT-2's."""
    t0 = time.perf_counter()
    cache_dir = Path(cache_dir)
    tokenizer = tokenizer or gpt2()
    bin_path, meta_path = file_paths(corpus, cache_dir, tokenizer)
    meta, _ = read_meta(bin_path, meta_path)  # a complete file is used even from a read-only folder
    if meta is None and not preparer:
        log.info(f"token cache: waiting for the preparing process to write {bin_path}")
        watch = _Progress(bin_path, wait_s)
        while meta is None:
            watch.check(cache_dir, started_needed=True)
            time.sleep(poll_s)
            meta, _ = read_meta(bin_path, meta_path)
    if meta is None:
        writable_dir(cache_dir)
        lock = _acquire(bin_path, corpus, poll_s, wait_s)
        try:
            meta, damaged = read_meta(bin_path, meta_path)  # the process we waited for may have made it
            if meta is None:
                if damaged:
                    log.warning(f"token cache: {bin_path} is damaged ({damaged}); rebuilding it")
                meta_path.unlink(missing_ok=True)
                remove_stale_partials(bin_path)  # left by a killed preparation
                meta = build(corpus, bin_path, meta_path, num_proc or default_num_proc(), piece_bytes, tokenizer)
                return CachedTokens(bin_path, meta["n_tokens"], meta["n_documents"], True, time.perf_counter() - t0,
                                    np.dtype(meta["dtype"]))
        finally:
            lock.release()
    log.info(f"token cache: {bin_path} ({meta['n_tokens']:,} tokens)")
    return CachedTokens(bin_path, meta["n_tokens"], meta["n_documents"], False, time.perf_counter() - t0,
                        np.dtype(meta["dtype"]))


class _Progress:
    """What a waiting process sees of the preparer: its lock file and the size of its partial token
    file. check() raises the UserError that ends a wait bounded by wait_s."""

    def __init__(self, bin_path: Path, wait_s: float | None):
        self.bin_path, self.wait_s = bin_path, wait_s
        self.lock_path = lock_path(bin_path)
        self.t0 = self.changed = time.monotonic()
        self.state = None

    def seen(self) -> tuple[bool, int]:
        sizes = 0
        for p in self.bin_path.parent.glob(f".{self.bin_path.name}.*.partial"):
            with contextlib.suppress(FileNotFoundError):
                sizes += p.stat().st_size
        return self.lock_path.exists(), sizes

    def check(self, cache_dir: Path, started_needed: bool = False) -> None:
        if self.wait_s is None:
            return
        now, state = time.monotonic(), self.seen()
        if state != self.state:
            self.state, self.changed = state, now
        started = state[0] or state[1] > 0
        if read_meta(self.bin_path, meta_path_of(self.bin_path))[0] is not None:
            return  # done between two looks
        if started_needed and not started and now - self.t0 > self.wait_s:
            raise UserError(
                f"data.prepare_per_node=false: after {self.wait_s:.0f} s the preparing process (global rank 0) "
                f"has not started writing into {cache_dir}, so this node does not share its cache folder; "
                f"set data.prepare_per_node=true for a cache folder on each node's disk, or run task=prepare first"
            )
        if started and now - self.changed > self.wait_s:
            raise UserError(
                f"the process tokenizing into {self.bin_path} made no progress for {self.wait_s:.0f} s (its partial "
                f"file stayed at {state[1]:,} bytes): it died or hangs; stop it, remove {self.lock_path.name} if it "
                f"stays, and run again (task=prepare tokenizes alone), or raise dist_timeout_s"
            )


def lock_path(bin_path: Path) -> Path:
    return Path(str(bin_path) + ".lock")


def meta_path_of(bin_path: Path) -> Path:
    return bin_path.with_suffix(".json")


def _try_lock(path: Path) -> ProcessLock | None:
    """The preparation lock of one token file (`<token file>.lock`, removed on release), or None while another
    process holds it."""
    lock = ProcessLock(path)
    return lock if lock.try_acquire() else None


def _acquire(bin_path: Path, corpus: Corpus, poll_s: float, wait_s: float | None) -> ProcessLock:
    """The preparation lock of bin_path; while another process holds it, wait (bounded as ensure says)."""
    path = lock_path(bin_path)
    lock = _try_lock(path)
    if lock is not None:
        return lock
    log.info(f"token cache: another process is tokenizing {corpus.name} into {bin_path}; waiting for it")
    watch = _Progress(bin_path, wait_s)
    while lock is None:
        time.sleep(min(poll_s, 0.2))
        watch.check(bin_path.parent)
        lock = _try_lock(path)
    return lock


# ---- reading a corpus in pieces (gptlit.data.readers) ------------------------------------------


def tasks(corpus: Corpus, piece_bytes: int) -> Iterator[Piece]:
    """The corpus as pieces, in order, each file read a piece at a time by its reader."""
    yield from DOCUMENTS.documents(corpus.documents or (), corpus.name)
    options = reader_options(corpus)
    for f in corpus.files:
        try:
            yield from reader_for(f).pieces(f, piece_bytes, options)
        except OSError as e:
            raise UserError(f"data.path: cannot read {f} ({e.strerror or e}); check the file and its permissions") from None


# ---- tokenizing (in the pool's processes) ------------------------------------------------------


def tokenize_task(task: Piece, options: dict, tokenizer: Tokenizer | None = None) -> tuple[np.ndarray, int]:
    """(ids, documents started) of one piece: its texts joined with the end-of-text token. In a pool's
    process the tokenizer is the one the parent set before forking (_TOKENIZER)."""
    tok = tokenizer or _TOKENIZER or gpt2()
    texts = task.reader.texts(task, options)
    ids: list[int] = []
    for i, text in enumerate(texts):
        if i:
            ids.append(tok.eot_id)
        ids.extend(tok.encode(text))
    return np.array(ids, dtype=dtype_for(tok)), len(texts) - (0 if task.starts_document or not texts else 1)


def _ordered(corpus: Corpus, num_proc: int, piece_bytes: int,
             tokenizer: Tokenizer | None = None) -> Iterator[tuple[Piece, np.ndarray, int]]:
    """(task, ids, documents) in corpus order, tokenized by num_proc processes.

    Hand-written rather than Pool.imap: imap reads its whole input ahead, which would hold the
    corpus in memory; here at most 2 tasks per process are in flight.
    """
    global _TOKENIZER
    it, options = tasks(corpus, piece_bytes), reader_options(corpus)
    _TOKENIZER = tokenizer or gpt2()  # what tokenize_task uses, here and in the forked processes
    if num_proc <= 1:
        for t in it:
            yield (t, *tokenize_task(t, options))
        return
    _TOKENIZER.encode("")  # loaded once here, shared with the forked processes
    # fork: the workers need only the tokenizer and numpy, and fork neither re-imports torch nor this program.
    # Hugging Face tokenizers: each process encodes with one thread (the pool is the parallelism), which
    # also keeps the library from warning that it was forked after using its threads.
    was = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        pool_ctx = multiprocessing.get_context("fork").Pool(num_proc)
    finally:
        if was is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = was
    with pool_ctx as pool:
        pending: collections.deque = collections.deque()
        for t in it:
            pending.append((t, pool.apply_async(tokenize_task, (t, options))))
            if len(pending) >= 2 * num_proc:
                t0, r = pending.popleft()
                yield (t0, *r.get())
        while pending:
            t0, r = pending.popleft()
            yield (t0, *r.get())


def _disk_error(e: OSError, path: Path) -> UserError:
    fix = "set data.cache_dir=<a folder on a disk with room> or the GPTLIT_CACHE environment variable"
    if e.errno in DISK_FULL:
        return UserError(f"the disk filled while writing the token cache {path} ({e.strerror}); free space or {fix}")
    return UserError(f"could not write the token cache {path} ({e.strerror or e}); {fix}")


def build(corpus: Corpus, bin_path: Path, meta_path: Path, num_proc: int, piece_bytes: int = PIECE_BYTES,
          tokenizer: Tokenizer | None = None) -> dict:
    """Tokenize corpus into bin_path (+ meta_path), atomically. Call with the file lock held."""
    from tqdm import tqdm

    tokenizer = tokenizer or gpt2()
    dtype = dtype_for(tokenizer)
    total = sum(f.stat().st_size for f in corpus.files) + sum(len(d) for d in corpus.documents or ())
    use = max(1, min(num_proc, total // piece_bytes + 1))
    tag = f"{socket.gethostname()}-{os.getpid()}"
    t0 = time.perf_counter()
    n_tokens = n_docs = 0
    try:
        with atomic_file(bin_path, durable=True, tag=tag) as tmp_bin:
            with open(tmp_bin, "wb") as out, tqdm(
                total=total, unit="B", unit_scale=True, desc=f"tokenizing {corpus.name}", disable=None, leave=False
            ) as bar:
                for task, ids, docs in _ordered(corpus, use, piece_bytes, tokenizer):
                    if task.starts_document and n_docs and docs:
                        ids = np.concatenate([np.array([tokenizer.eot_id], dtype), ids])
                    out.write(ids.tobytes())
                    n_tokens, n_docs = n_tokens + len(ids), n_docs + docs
                    bar.update(task.progress)
        seconds = time.perf_counter() - t0
        meta = dict(
            format=FORMAT_VERSION, dtype=dtype.str, n_tokens=n_tokens, n_documents=n_docs, key=cache_key(corpus, tokenizer),
            corpus=corpus.name, files=[str(f.resolve()) for f in corpus.files], **reader_options(corpus),
            separator=tokenizer.eot_token, tokenizer=tokenizer.fingerprint, tokenizer_name=tokenizer.describe(),
            input_bytes=total, seconds=round(seconds, 3), processes=use,
        )
        atomic_write(meta_path, meta)  # the tokens first, the metadata that vouches for them last
    except OSError as e:
        raise _disk_error(e, bin_path) from None
    log.info(
        f"token cache: tokenized {corpus.name} ({total / 1e6:,.1f} MB) into {n_tokens:,} tokens in {seconds:.1f} s "
        f"({total / 1e6 / max(seconds, 1e-9):.1f} MB/s, {use} process{'es' if use > 1 else ''}): {bin_path}"
    )
    return meta


# ---- reading windows back ----------------------------------------------------------------------


class TokenFile:
    """Tokens [start, stop) of a token file, memory-mapped on first use in each process.

    Pickling (to DataLoader workers, DDP processes) sends the path and bounds, never the tokens.
    """

    def __init__(self, path: str | os.PathLike, start: int = 0, stop: int | None = None, dtype=DTYPE):
        self.path, self.dtype = str(path), np.dtype(dtype)
        size = os.path.getsize(self.path) // self.dtype.itemsize
        self.start, self.stop = start, size if stop is None else stop
        if not 0 <= self.start <= self.stop <= size:
            raise ValueError(f"tokens [{start}, {stop}) outside {self.path} ({size} tokens)")
        self._map: np.memmap | None = None

    def __len__(self) -> int:
        return self.stop - self.start

    def span(self, start: int, stop: int) -> "TokenFile":
        """Tokens [start, stop) of this span, as a span of the same file."""
        return TokenFile(self.path, self.start + start, self.start + stop, self.dtype)

    def __getitem__(self, s: slice) -> np.ndarray:
        if not isinstance(s, slice) or s.step not in (None, 1):
            raise TypeError("TokenFile takes contiguous slices only")
        a, b, _ = s.indices(len(self))
        if b <= a:
            return np.empty(0, self.dtype)
        if self._map is None:
            self._map = np.memmap(self.path, dtype=self.dtype, mode="r")
        return self._map[self.start + a : self.start + b]

    def __getstate__(self):
        return {**self.__dict__, "_map": None}
