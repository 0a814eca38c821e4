"""Corpus formats: one Reader class per format, every reader in the one table READERS.

A reader says which files it takes (a suffix match), how to cut a file into pieces for the
tokenizing processes (`pieces`, in the main process, reading the file as a stream), and how a piece
becomes documents' text (`texts`, in a tokenizing process). `read_corpus(corpus)` gives what the token
cache and the BPE trainer need of a corpus, asked once: its readers' settings and its pieces in order.
They know readers only through it and this table; a new format is a new class here and one entry in READERS.

The pieces of a file must tokenize, piece by piece, to exactly the ids of the whole file: plain
text is cut only where `safe_cut` allows, record formats only between records.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import zlib
from pathlib import Path
from typing import Any, Iterator

from gptlit.core.errors import UserError


@dataclasses.dataclass(frozen=True)
class Corpus:
    """What to tokenize: files in order, each read by the reader of its format, or in-memory documents
    (pydocs). options: values of the settings the readers declare (Reader.options, e.g. text_key);
    reader_options takes DataConfig's default for one left out (the caller hands DataConfig in)."""

    name: str
    files: tuple[Path, ...] = ()
    documents: tuple[str, ...] | None = None
    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Piece:
    """One piece of work for a tokenizing process: a part of one file (or in-memory documents)."""

    reader: "Reader"  # what turns the payload into text (`Reader.texts`)
    payload: Any  # what the reader cut: bytes of text, whole JSON lines, documents' text
    label: str  # the file, for errors
    offset: int  # where the payload starts in its file, for errors (a byte offset; JSON Lines: a line number)
    starts_document: bool  # its first text starts a document (else it continues the previous piece's last one)
    progress: int  # bytes of input (as stored on disk) this piece accounts for


class Reader:
    """A corpus format. Subclasses set `suffixes` and `options`, and override `texts` plus either
    `cut` (formats read as a byte stream, gzip-compressed when the name ends in .gz) or `pieces`."""

    suffixes: tuple[str, ...] = ()  # the file names it takes (what a folder contributes)
    # DataConfig fields that change the text it reads (e.g. text_key); they go into the token cache's key
    options: tuple[str, ...] = ()

    def takes(self, f: Path) -> bool:
        return f.name.endswith(self.suffixes)

    def check(self, f: Path) -> None:
        """Raise UserError, naming f, when this format cannot be read here (a library missing)."""

    def pieces(self, f: Path, piece_bytes: int, options: dict) -> Iterator[Piece]:
        """The file as pieces of about piece_bytes, in order. `options`: as for `texts`."""
        raw = open(f, "rb")
        try:
            with raw, (gzip.GzipFile(fileobj=raw, mode="rb") if f.name.endswith(".gz") else raw) as stream:
                yield from self.cut(f, stream, raw, piece_bytes)
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise UserError(f"data.path: {f} is not a complete gzip file ({e}); re-download it or decompress it") from None

    def cut(self, f: Path, stream, raw, piece_bytes: int) -> Iterator[Piece]:
        """Pieces from `stream` (the file's uncompressed bytes); raw.tell() is how far the file was read."""
        raise NotImplementedError

    def texts(self, piece: Piece, options: dict) -> list[str]:
        """The piece's documents' text, in order; the first continues the previous piece's document
        unless piece.starts_document. `options`: the corpus' values of every reader's `options`."""
        raise NotImplementedError


def safe_cut(data: bytes) -> int:
    """The last index i > 0 where data[i] is a newline and data[i-1] a printable ASCII character, or -1.

    Tokenizing data[:i] and data[i:] apart gives the ids of tokenizing data whole: no alternative of
    GPT-2's pre-tokenizer regex matches a non-space character followed by a space, so no pre-token
    spans i; the regex has no look-behind, so matching data[i:] alone starts as it would at i; and
    its look-aheads (`\\s+(?!\\S)`, `\\s++$`) only follow whitespace, which in data[:i] is always
    followed by data[i-1]. `<|endoftext|>` holds no newline, "\\r\\n" is never split, and both
    bytes are ASCII, so the cut is also a UTF-8 character boundary.
    """
    i = data.rfind(b"\n")
    while i > 0:
        if 0x21 <= data[i - 1] <= 0x7E:
            return i
        i = data.rfind(b"\n", 0, i)
    return -1


def decode(data: bytes, label: str, offset: int) -> str:
    """UTF-8 bytes as text with universal newlines (as Python's text mode reads files); one line if not UTF-8."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"data.path: {label} is not UTF-8 text ({e.reason} at byte {offset + e.start}); convert it to UTF-8"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


class TextReader(Reader):
    """Plain text: the whole file is one document, cut at safe points (`safe_cut`)."""

    suffixes = (".txt", ".txt.gz")

    def cut(self, f, stream, raw, piece_bytes):
        carry, offset, first, seen = b"", 0, True, 0
        while block := stream.read(piece_bytes):
            data = carry + block
            cut = safe_cut(data)
            if cut <= 0:  # no safe point yet: a line longer than a piece; keep reading
                carry = data
                continue
            pos = raw.tell()
            yield Piece(self, data[:cut], str(f), offset, first, pos - seen)
            first, offset, carry, seen = False, offset + cut, data[cut:], pos
        if first and not carry:
            raise UserError(f"data.path: {f} is empty; delete it or add text to it")
        if carry:
            yield Piece(self, carry, str(f), offset, first, raw.tell() - seen)

    def texts(self, piece, options):
        return [decode(piece.payload, piece.label, piece.offset)]


class JsonLinesReader(Reader):
    """JSON Lines: one document per non-blank line, its text under data.text_key; cut between lines."""

    suffixes = (".jsonl", ".jsonl.gz")
    options = ("text_key",)

    def cut(self, f, stream, raw, piece_bytes):
        lines, size, first_line, seen, any_doc = [], 0, 1, 0, False
        for n, line in enumerate(stream, 1):
            if not lines:
                first_line = n
            lines.append(line)
            size += len(line)
            any_doc = any_doc or bool(line.strip())
            if size >= piece_bytes:
                pos = raw.tell()
                yield Piece(self, b"".join(lines), str(f), first_line, True, pos - seen)
                lines, size, seen = [], 0, pos
        if not any_doc:
            raise UserError(f"data.path: {f} is empty (no JSON lines); delete it or add documents to it")
        if lines:
            yield Piece(self, b"".join(lines), str(f), first_line, True, raw.tell() - seen)

    def texts(self, piece, options):
        key, out = options["text_key"], []
        for n, line in enumerate(piece.payload.splitlines(), piece.offset):
            if not line.strip():
                continue
            try:
                record = json.loads(decode(line, f"line {n} of {piece.label}", 0))
            except ValueError as e:
                raise UserError(f"data.path: line {n} of {piece.label} is not JSON ({e}); fix or remove that line") from None
            text = record.get(key) if isinstance(record, dict) else None
            if not isinstance(text, str):
                keys = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
                raise UserError(
                    f"data.text_key={key}: line {n} of {piece.label} has no text under {key!r} (it holds: {keys}); "
                    f"set data.text_key to the key of the text"
                )
            out.append(text)
        return out


class ParquetReader(Reader):
    """Apache Parquet (needs pyarrow: pip install -e ".[parquet]"): one document per row, its text in
    the column data.text_key; the pieces are record batches of about piece_bytes of that column.

    The text is read here, in the main process, and the pieces carry it as strings: the tokenizing
    processes are forked, and pyarrow's thread pools should not be used across a fork."""

    suffixes = (".parquet",)
    options = ("text_key",)

    def check(self, f):
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise UserError(f'data.path: {f} is Parquet, which needs pyarrow: pip install -e ".[parquet]"') from None

    def pieces(self, f, piece_bytes, options):
        self.check(f)
        import pyarrow as pa
        import pyarrow.parquet as pq

        key = options["text_key"]
        try:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            if key not in names:
                raise UserError(f"data.text_key={key}: {f} has no column {key!r} (its columns: {', '.join(names)}); "
                                f"set data.text_key to the column of the text")
            kind = pf.schema_arrow.field(key).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise UserError(f"data.text_key={key}: column {key!r} of {f} holds {kind}, not text; "
                                f"set data.text_key to the column of the text")
            md, size = pf.metadata, f.stat().st_size
            if md.num_rows == 0:
                raise UserError(f"data.path: {f} is empty (no rows); delete it or add documents to it")
            text_bytes = sum(md.row_group(g).column(c).total_uncompressed_size for g in range(md.num_row_groups)
                             for c in range(md.num_columns) if md.row_group(g).column(c).path_in_schema == key)
            rows = max(1, piece_bytes * md.num_rows // max(1, text_bytes))  # rows per piece, from the column's size
            first = seen = 0
            for batch in pf.iter_batches(batch_size=rows, columns=[key]):
                texts = batch.column(0).to_pylist()
                if None in texts:
                    raise UserError(f"data.text_key={key}: row {first + texts.index(None)} of {f} has no text "
                                    f"(null); remove that row or fill it")
                end = first + len(texts)
                done = size * end // md.num_rows  # bytes on disk, counted in proportion to the rows
                yield Piece(self, texts, str(f), first, True, done - seen)
                first, seen = end, done
        except pa.ArrowException as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"data.path: {f} is not a readable Parquet file ({why}); check or re-export it") from None

    def texts(self, piece, options):
        return piece.payload


class DocumentsReader(Reader):
    """Documents already in memory (the pydocs source): each piece is one whole document."""

    def documents(self, documents, label: str) -> Iterator[Piece]:
        for doc in documents:
            yield Piece(self, doc, label, 0, True, len(doc))

    def texts(self, piece, options):
        return [piece.payload]


# The formats a corpus file can have. A folder contributes the files some reader here takes; a file
# named directly that none takes is read as plain text (gzip-compressed if its name ends in .gz).
READERS: tuple[Reader, ...] = (TextReader(), JsonLinesReader(), ParquetReader())
PLAIN = READERS[0]
DOCUMENTS = DocumentsReader()


def corpus_suffixes() -> tuple[str, ...]:
    """Every suffix a reader takes, in table order (what a folder contributes)."""
    return tuple(s for r in READERS for s in r.suffixes)


def reader_for(f: Path) -> Reader:
    """The reader of a file: the table's first that takes its name, else plain text."""
    return next((r for r in READERS if r.takes(f)), PLAIN)


# ---- a corpus as its readers read it ------------------------------------------------------------


def reader_options(corpus: Corpus, defaults) -> dict:
    """The values of the settings its files' readers declare (what they read depends on): the
    corpus' own, else the attribute of that name of `defaults` (DataConfig, where each default is
    written: the readers import no settings)."""
    return {k: corpus.options.get(k, getattr(defaults, k)) for f in corpus.files for k in reader_for(f).options}


def read_corpus(corpus: Corpus, piece_bytes: int, defaults) -> tuple[dict, Iterator[Piece]]:
    """What the readers make of a corpus, asked once: the values of their settings (reader_options)
    and the corpus' pieces in order, in-memory documents first, then each file read by its reader
    about piece_bytes at a time. The pieces are lazy: no file is opened before they are iterated. A
    piece becomes documents' text by `piece.reader.texts(piece, options)`."""
    options = reader_options(corpus, defaults)
    return options, _pieces(corpus, piece_bytes, options)


def _pieces(corpus: Corpus, piece_bytes: int, options: dict) -> Iterator[Piece]:
    yield from DOCUMENTS.documents(corpus.documents or (), corpus.name)
    for f in corpus.files:
        try:
            yield from reader_for(f).pieces(f, piece_bytes, options)
        except OSError as e:
            raise UserError(f"data.path: cannot read {f} ({e.strerror or e}); check the file and its permissions") from None
