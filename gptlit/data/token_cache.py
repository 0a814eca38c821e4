"""A corpus tokenized once into a flat token file on disk, and read back through a memory map.

`ensure(corpus)` returns the token file of a corpus, tokenizing it first if the cache holds no
complete file for it. The file is the corpus' ids under the run's tokenizer (GPT-2's by default;
gptlit.model.tokenizer), documents joined with its end-of-text token, as little-endian uint16 (uint32
for a vocabulary over 65,536), with a small JSON file beside it (dtype, token and document counts,
the cache key, the format version). Its name carries a hash of everything that decides the
tokens: the files' resolved paths, sizes and modification times (pydocs: the text itself),
the tokenizer's fingerprint, the separator, the settings the corpus' readers declare (e.g.
data.text_key for JSON Lines) and FORMAT_VERSION.

The corpus passes through in one direction: the readers are asked once what they make of it
(gptlit.data.readers.read_corpus: their settings, and its pieces), the key and the files are
decided from that (cache_entry), and, unless a complete file is there, one process (DDP rank,
sweep job) prepares it while the others wait (gptlit.core.file_lock.sole_writer: the lock, killed
writers' leftovers removed, the files published whole, the metadata last). Preparation streams:
each file is read by the reader of its format in pieces of about PIECE_BYTES, cut only where
tokenizing the pieces gives the same ids as tokenizing the whole (see gptlit.data.readers.safe_cut),
tokenized by a pool of processes in order, and appended to the temporary token file.
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
from gptlit.core.file_lock import sole_writer
from gptlit.data.config import DataConfig
from gptlit.data.readers import Corpus, Piece, read_corpus
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


def cache_key(corpus: Corpus, options: dict, tokenizer: Tokenizer | None = None) -> str:
    """The hash of what decides the tokens (options: the corpus' reader_options); GPT-2's (tokenizer=None)
    is the key of every cache made before the tokenizer group, so those files stay valid."""
    tok = tokenizer or gpt2()
    h = hashlib.sha256()
    head = dict(format=FORMAT_VERSION, tokenizer=tok.fingerprint, separator=tok.eot_token, newlines="universal")
    head.update(options)  # e.g. text_key, when a file is JSON Lines
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


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """One corpus under one tokenizer in a cache folder, decided once: the key and the files it names."""

    corpus: Corpus
    tokenizer: Tokenizer
    options: dict  # the corpus' readers' settings (gptlit.data.readers.reader_options): in the key and the metadata
    key: str
    tokens: Path  # the token file
    meta: Path  # its metadata, written last: it vouches for the tokens
    lock: Path  # held by the process that writes them


def cache_entry(corpus: Corpus, cache_dir: Path, tokenizer: Tokenizer, options: dict) -> CacheEntry:
    """The entry of corpus (options: its reader_options) under tokenizer in cache_dir."""
    key = cache_key(corpus, options, tokenizer)
    stem = f"{Path(cache_dir) / corpus_slug(corpus)}-{key}"
    return CacheEntry(corpus, tokenizer, options, key, Path(f"{stem}.bin"), Path(f"{stem}.json"), Path(f"{stem}.bin.lock"))


def read_meta(entry: CacheEntry) -> tuple[dict | None, str | None]:
    """(metadata, None) for a complete token file; (None, why) for a damaged one; (None, None) if absent."""
    try:
        meta = json.loads(entry.meta.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as e:
        return None, f"its metadata {entry.meta.name} is unreadable ({e})"
    if meta.get("format") != FORMAT_VERSION or meta.get("dtype") not in (DTYPE.str, "<u4"):
        return None, f"its metadata {entry.meta.name} has another format"
    want = meta["n_tokens"] * np.dtype(meta["dtype"]).itemsize
    size = entry.tokens.stat().st_size if entry.tokens.exists() else None
    if size != want:
        got = "is missing" if size is None else f"has {size:,} bytes"
        return None, f"{entry.tokens.name} {got}, but its metadata says {meta['n_tokens']:,} tokens ({want:,} bytes)"
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
    options, pieces = read_corpus(corpus, piece_bytes, DataConfig)  # lazy: nothing is read unless it is built
    entry = cache_entry(corpus, cache_dir, tokenizer or gpt2(), options)
    meta, _ = read_meta(entry)  # a complete file is used even from a read-only folder
    if meta is None and not preparer:
        meta = _wait_for_preparer(entry, poll_s, wait_s)
    built = False
    if meta is None:
        meta, built = _prepare(entry, pieces, num_proc or default_num_proc(), piece_bytes, poll_s, wait_s)
    if not built:
        log.info(f"token cache: {entry.tokens} ({meta['n_tokens']:,} tokens)")
    return CachedTokens(entry.tokens, meta["n_tokens"], meta["n_documents"], built, time.perf_counter() - t0,
                        np.dtype(meta["dtype"]))


# ---- one process prepares, the others wait (gptlit.core.file_lock.sole_writer) -------------------


def _wait_for_preparer(entry: CacheEntry, poll_s: float, wait_s: float | None) -> dict:
    """The metadata of the complete file that another process (the preparer) writes, once it is there."""
    watch = _Progress(entry, wait_s, f"token cache: waiting for the preparing process to write {entry.tokens}")
    meta = None
    while meta is None:
        watch.check(started_needed=True)
        time.sleep(poll_s)
        meta, _ = read_meta(entry)
    return meta


def _prepare(entry: CacheEntry, pieces: Iterator[Piece], num_proc: int, piece_bytes: int, poll_s: float,
             wait_s: float | None) -> tuple[dict, bool]:
    """(metadata, built): the token file tokenized here, as the one process that does, unless the
    process this one waited for made it meanwhile."""
    writable_dir(entry.tokens.parent)
    watch = _Progress(entry, wait_s, f"token cache: another process is tokenizing {entry.corpus.name} into "
                                     f"{entry.tokens}; waiting for it")
    try:
        with sole_writer(entry.tokens, entry.meta, lock=entry.lock, waiting=watch.check, poll_s=min(poll_s, 0.2),
                         tag=f"{socket.gethostname()}-{os.getpid()}") as (tmp_tokens, tmp_meta):
            meta, damaged = read_meta(entry)  # the process we waited for may have made it
            if meta is not None:
                return meta, False
            if damaged:
                log.warning(f"token cache: {entry.tokens} is damaged ({damaged}); rebuilding it")
            entry.meta.unlink(missing_ok=True)
            return build(entry, pieces, tmp_tokens, tmp_meta, num_proc, piece_bytes), True
    except OSError as e:
        raise _disk_error(e, entry.tokens) from None


class _Progress:
    """What a waiting process sees of the preparer: its lock file and the size of its partial token
    file. check() says `note` the first time, and raises the UserError that ends a wait bounded by wait_s."""

    def __init__(self, entry: CacheEntry, wait_s: float | None, note: str):
        self.entry, self.wait_s, self.note = entry, wait_s, note
        self.t0 = self.changed = time.monotonic()
        self.state = None

    def seen(self) -> tuple[bool, int]:
        sizes = 0
        for p in self.entry.tokens.parent.glob(f".{self.entry.tokens.name}.*.partial"):
            with contextlib.suppress(FileNotFoundError):
                sizes += p.stat().st_size
        return self.entry.lock.exists(), sizes

    def check(self, started_needed: bool = False) -> None:
        if self.note:
            log.info(self.note)
            self.note = ""
        if self.wait_s is None:
            return
        now, state = time.monotonic(), self.seen()
        if state != self.state:
            self.state, self.changed = state, now
        started = state[0] or state[1] > 0
        if read_meta(self.entry)[0] is not None:
            return  # done between two looks
        if started_needed and not started and now - self.t0 > self.wait_s:
            raise UserError(
                f"data.prepare_per_node=false: after {self.wait_s:.0f} s the preparing process (global rank 0) "
                f"has not started writing into {self.entry.tokens.parent}, so this node does not share its cache "
                f"folder; set data.prepare_per_node=true for a cache folder on each node's disk, or run task=prepare first"
            )
        if started and now - self.changed > self.wait_s:
            raise UserError(
                f"the process tokenizing into {self.entry.tokens} made no progress for {self.wait_s:.0f} s (its partial "
                f"file stayed at {state[1]:,} bytes): it died or hangs; stop it, remove {self.entry.lock.name} if it "
                f"stays, and run again (task=prepare tokenizes alone), or raise dist_timeout_s"
            )


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


def _ordered(pieces: Iterator[Piece], options: dict, num_proc: int,
             tokenizer: Tokenizer) -> Iterator[tuple[Piece, np.ndarray, int]]:
    """(piece, ids, documents) in corpus order, tokenized by num_proc processes.

    Hand-written rather than Pool.imap: imap reads its whole input ahead, which would hold the
    corpus in memory; here at most 2 pieces per process are in flight.
    """
    global _TOKENIZER
    _TOKENIZER = tokenizer  # what tokenize_task uses, here and in the forked processes
    if num_proc <= 1:
        for t in pieces:
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
        for t in pieces:
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


def build(entry: CacheEntry, pieces: Iterator[Piece], tmp_tokens: Path, tmp_meta: Path, num_proc: int,
          piece_bytes: int = PIECE_BYTES) -> dict:
    """Tokenize the corpus' pieces into tmp_tokens, then its metadata into tmp_meta: the temporary files
    of sole_writer, which publishes them (call within it)."""
    from tqdm import tqdm

    corpus, tokenizer = entry.corpus, entry.tokenizer
    dtype = dtype_for(tokenizer)
    total = sum(f.stat().st_size for f in corpus.files) + sum(len(d) for d in corpus.documents or ())
    use = max(1, min(num_proc, total // piece_bytes + 1))
    t0 = time.perf_counter()
    n_tokens = n_docs = 0
    with open(tmp_tokens, "wb") as out, tqdm(
        total=total, unit="B", unit_scale=True, desc=f"tokenizing {corpus.name}", disable=None, leave=False
    ) as bar:
        for task, ids, docs in _ordered(pieces, entry.options, use, tokenizer):
            if task.starts_document and n_docs and docs:
                ids = np.concatenate([np.array([tokenizer.eot_id], dtype), ids])
            out.write(ids.tobytes())
            n_tokens, n_docs = n_tokens + len(ids), n_docs + docs
            bar.update(task.progress)
    seconds = time.perf_counter() - t0
    meta = dict(
        format=FORMAT_VERSION, dtype=dtype.str, n_tokens=n_tokens, n_documents=n_docs, key=entry.key,
        corpus=corpus.name, files=[str(f.resolve()) for f in corpus.files], **entry.options,
        separator=tokenizer.eot_token, tokenizer=tokenizer.fingerprint, tokenizer_name=tokenizer.describe(),
        input_bytes=total, seconds=round(seconds, 3), processes=use,
    )
    tmp_meta.write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
    log.info(
        f"token cache: tokenized {corpus.name} ({total / 1e6:,.1f} MB) into {n_tokens:,} tokens in {seconds:.1f} s "
        f"({total / 1e6 / max(seconds, 1e-9):.1f} MB/s, {use} process{'es' if use > 1 else ''}): {entry.tokens}"
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
