"""The run's tokenizer for a corpus: the `tokenizer` group resolved, a trained BPE cached beside the token
cache, and what the tokenizer does to the corpus (bytes per token).

  resolve(settings, corpus, val_fraction, cache_dir)   tokenizer=gpt2 | file | bpe -> a Tokenizer
  training_texts(corpus, val_fraction, max_bytes)      the text a BPE learns from (bounded, streamed)
  compression_line(tokenizer, corpus, val_fraction)    `tokenizer: bpe 16,384, 3.4 bytes/token on the training text (gpt2: 1.3)`
  compression_table(files, tokenizers)                 bytes per token of each file under each tokenizer (compress.py)

The training text. gptlit.data.windows.split_point cuts the corpus' *tokens*: train is their first
(1 - val_fraction), val the rest, so the validation text is the corpus' tail. Before the BPE exists its
token count is unknown, so the BPE learns from the first (1 - val_fraction) of the corpus' *text* (its
UTF-8 bytes, documents in corpus order, as the readers give them), and at most tokenizer.sample_mb MB
of it, from its start. The two cuts coincide when the tokenizer compresses the
head and the tail of the corpus alike; where they differ, the training text can reach a little past the
token split into the val text, or stop short of it, by that difference in compression (a tokenizer that
compresses the tail 10% better than the head moves the token split by about val_fraction * 10% of the
corpus). With a corpus over sample_mb / (1 - val_fraction) MB the training text ends long before the val text.

A trained BPE is a `<slug>-bpe<vocab>-<key>.tokenizer.json` in the token cache's folder, keyed by the
corpus (as its token file is), the settings, the `tokenizers` version and BPE_FORMAT; it is trained once,
by one process holding its lock while others wait, and written whole (gptlit.core.file_lock.sole_writer).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Iterable, Iterator

from gptlit.core.errors import UserError
from gptlit.core.file_lock import sole_writer
from gptlit.data.config import DataConfig
from gptlit.data.readers import Corpus, read_corpus, reader_options
from gptlit.data.token_cache import cache_key, corpus_slug, writable_dir
from gptlit.model.tokenizer import Tokenizer, check_bpe_vocab, from_file, from_settings, gpt2, train_bpe

log = logging.getLogger(__name__)

BPE_FORMAT = 1
READ_PIECE = 1 << 20  # bytes per piece when reading the training text
REPORT_BYTES = 1 << 20  # text the compression line measures


def training_texts(corpus: Corpus, val_fraction: float, max_bytes: int, step: int = 1 << 16) -> Iterator[str]:
    """The first (1 - val_fraction) of the corpus' text (UTF-8 bytes, documents in order), at most max_bytes of it,
    streamed: having read n bytes, the first (1 - val_fraction) * n are before the cut whatever follows, so they
    are given out (in chunks of at least `step` bytes) and at most val_fraction * n + step are held."""
    keep, (options, pieces) = 1.0 - val_fraction, read_corpus(corpus, READ_PIECE, DataConfig)
    held: collections.deque[bytes] = collections.deque()
    read = given = 0

    def release(upto: int) -> Iterator[str]:
        nonlocal given
        while given < upto and held:
            head = held.popleft()
            n = min(len(head), upto - given)
            if n < len(head):
                held.appendleft(head[n:])
            given += n
            text = head[:n].decode("utf-8", "ignore")
            if text:
                yield text

    for piece in pieces:
        for t in piece.reader.texts(piece, options):
            b = t.encode("utf-8", "surrogatepass")
            held.append(b)
            read += len(b)
            upto = min(int(keep * read), max_bytes)
            if upto - given >= step:
                yield from release(upto)
            if given >= max_bytes:
                return
    yield from release(min(int(keep * read), max_bytes))  # the whole corpus read: the cut is exact


def bpe_path(corpus: Corpus, cache_dir: Path, vocab_size: int, sample_mb: float, val_fraction: float) -> Path:
    import tokenizers

    head = dict(format=BPE_FORMAT, corpus=cache_key(corpus, reader_options(corpus, DataConfig)), vocab_size=vocab_size, sample_mb=sample_mb,
                val_fraction=val_fraction, library=f"tokenizers {tokenizers.__version__}")
    key = hashlib.sha256(json.dumps(head, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir / f"{corpus_slug(corpus)}-bpe{vocab_size}-{key}.tokenizer.json"


def check_sample_mb(sample_mb) -> float:
    if isinstance(sample_mb, bool) or not isinstance(sample_mb, (int, float)) or not sample_mb > 0:
        raise UserError(f"tokenizer.sample_mb={sample_mb} must be a positive number of megabytes (e.g. 100)")
    return float(sample_mb)


def trained_bpe(corpus: Corpus, cache_dir: Path, vocab_size: int, sample_mb: float, val_fraction: float) -> Tokenizer:
    """The BPE of these settings for this corpus: from the cache, else trained now (one process; others wait)."""
    check_bpe_vocab(vocab_size)
    sample_mb = check_sample_mb(sample_mb)
    path = bpe_path(corpus, Path(cache_dir), vocab_size, sample_mb, val_fraction)
    if path.is_file():
        return _read(path)
    writable_dir(path.parent)
    told = False

    def waiting() -> None:  # called at each look while another process trains it: one line, the first time
        nonlocal told
        if not told:
            log.info(f"tokenizer: another process is training {path}; waiting for it")
            told = True

    with sole_writer(path, lock=Path(f"{path}.lock"), waiting=waiting, poll_s=0.2) as (tmp,):
        if path.is_file():  # the process we waited for trained it
            return _read(path)
        max_bytes = int(sample_mb * 1e6)
        log.info(f"tokenizer: training a {vocab_size:,}-token byte-level BPE on the training text of {corpus.name} "
                 f"(at most {sample_mb:g} MB, tokenizer.sample_mb)")
        t0, counted = time.perf_counter(), [0]

        def counting() -> Iterator[str]:
            last = 0
            for t in training_texts(corpus, val_fraction, max_bytes):
                counted[0] += len(t.encode("utf-8", "surrogatepass"))
                if counted[0] - last >= 10_000_000:
                    last = counted[0]
                    log.info(f"tokenizer: read {counted[0] / 1e6:,.0f} MB of training text")
                yield t

        tok = train_bpe(counting(), vocab_size)
        if counted[0] == 0:
            raise UserError(f"the training text of {corpus.name} is empty: tokenizer=bpe has nothing to learn from; "
                            f"use a corpus with text before its validation part")
        tmp.write_text(tok.hf_json(), encoding="utf-8")
        secs = time.perf_counter() - t0
        short = "" if tok.vocab_size == vocab_size else f" (the text has no more pairs to merge than {tok.vocab_size:,})"
        log.info(f"tokenizer: trained {tok.vocab_size:,} tokens{short} on {counted[0] / 1e6:,.2f} MB in {secs:.1f} s: {path}")
        return tok


def _read(path: Path) -> Tokenizer:
    tok = from_file(path, key="the trained tokenizer")
    tok.kind = tok.name = "bpe"
    return tok


def resolve(settings: dict | None, corpus_of, val_fraction: float, cache_dir: Path) -> Tokenizer:
    """The tokenizer a `tokenizer` group node names; corpus_of() gives the corpus (read only for bpe)."""
    settings = dict(settings or {"kind": "gpt2"})
    tok = from_settings(settings)
    if tok is not None:
        return tok
    return trained_bpe(corpus_of(), cache_dir, settings["vocab_size"], settings.get("sample_mb", 100), val_fraction)


def compression_line(tokenizer: Tokenizer, corpus: Corpus, val_fraction: float) -> str:
    """What the tokenizer does to the training text (its first REPORT_BYTES), beside GPT-2's."""
    texts = list(training_texts(corpus, val_fraction, REPORT_BYTES))
    own = tokenizer.bytes_per_token(texts)
    line = f"tokenizer: {tokenizer.describe()}, {own:.2f} bytes/token on the training text"
    if tokenizer.kind != "gpt2":
        line += f" (gpt2: {gpt2().bytes_per_token(texts):.2f})"
    return line


def file_texts(path: Path, max_bytes: int) -> list[str]:
    """At most max_bytes of a text file, cut at a character boundary."""
    with open(path, "rb") as f:
        data = f.read(max_bytes)
    return [data.decode("utf-8", "ignore")]


def compression_table(files: Iterable[Path], tokenizers: dict[str, Tokenizer], max_bytes: int) -> str:
    """A Markdown table: for each file its bytes and bytes/token under each tokenizer (GPT-2's first)."""
    tokenizers = {"gpt2": gpt2(), **tokenizers}
    rows = ["| file | bytes | " + " | ".join(f"{n} bytes/token" for n in tokenizers) + " |",
            "|---|---:|" + "---:|" * len(tokenizers)]
    for f in files:
        texts = file_texts(f, max_bytes)
        nbytes = sum(len(t.encode("utf-8")) for t in texts)
        cells = [f"{t.bytes_per_token(texts):.2f}" for t in tokenizers.values()]
        rows.append(f"| {f} | {nbytes:,} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
