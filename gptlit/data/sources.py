"""Where a corpus comes from: one Source class per origin, every source in the one table SOURCES.

A source checks the settings it needs (`validate`, when the datamodule is made, so a bad path fails
before the model is built) and says what to tokenize (`corpus`, a gptlit.data.token_cache.Corpus).
data.source picks one by name; a new origin is a new class here and one entry in SOURCES.
"""

from __future__ import annotations

import glob
import hashlib
import os
import stat
import urllib.error
import urllib.request
from pathlib import Path

from gptlit.core.errors import UserError
from gptlit.core.files import atomic_file, user_path
from gptlit.data.config import DataConfig
from gptlit.data.readers import Corpus, corpus_suffixes, reader_for


def cache_dir() -> Path:
    """gptlit's cache folder (downloads; token files under tokens/): GPTLIT_CACHE, else ~/.cache/gptlit."""
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


def not_a_regular_file(path: str, p: Path) -> str | None:
    """Why data.path cannot be read as a corpus although it exists (a named pipe, a device), else None."""
    try:
        mode = p.stat().st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    what = "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    # a corpus is read more than once (its hash keys the token cache; the tokenizing processes read pieces of it)
    return (f"data.path={path}: {p} is {what}, not a regular file; gptlit reads a corpus more than once, so write "
            f"the text to a file first (e.g. cat {path} > corpus.txt) and give that file")


def find_text_files(path: str) -> list[Path]:
    """A file, every file under a folder that a reader takes (gptlit.data.readers), or the matches of a glob, sorted."""
    p = user_path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        suffixes = corpus_suffixes()
        files = sorted(f for f in p.rglob("*") if f.name.endswith(suffixes) and f.is_file())
        if not files:
            raise UserError(
                f"data.path={path}: folder {p} holds no {', '.join(suffixes)} files; "
                f"add some or point at a file or glob"
            )
        return files
    if any(c in str(path) for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if os.path.isfile(f))
        if files:
            return files
        raise UserError(f"data.path={path}: the glob {p} matches no files; check the pattern")
    if why := not_a_regular_file(path, p):
        raise UserError(why)
    raise UserError(
        f"data.path={path}: no such file or folder ({p}); give a text file, a folder of .txt files or a glob"
    )


def check_readers(files: list[Path]) -> None:
    """Each format among `files` can be read here (e.g. its library is installed)."""
    first = {}  # one file of each reader
    for f in files:
        first.setdefault(type(reader_for(f)), f)
    for f in first.values():
        reader_for(f).check(f)


def reader_settings(cfg: DataConfig, files) -> dict:
    """The settings the readers of `files` declare (Reader.options), with their values in cfg."""
    return {k: getattr(cfg, k) for f in files for k in reader_for(f).options}


class Source:
    """An origin of text (data.source=<name>)."""

    name: str  # its data.source value

    def validate(self, cfg: DataConfig) -> None:
        """Raise UserError for a setting this source needs and lacks (cheap: no download, no tokenizing)."""

    def corpus(self, cfg: DataConfig) -> Corpus:
        """What to tokenize (downloading first where the source is remote)."""
        raise NotImplementedError


class PyDocs(Source):
    """The standard library's pydoc topics: English prose that every Python install carries."""

    name = "pydocs"

    def corpus(self, cfg):
        from pydoc_data.topics import topics

        return Corpus("pydocs", documents=tuple(topics[k] for k in sorted(topics)))


class Files(Source):
    """Local files: data.path is a file, a folder or a glob (relative to the directory you run from)."""

    name = "files"

    def validate(self, cfg):
        if not cfg.path:
            raise UserError("data.source=files (data=text) needs data.path=<text file, folder or glob>")
        check_readers(find_text_files(cfg.path))  # fail now, not after the model is built

    def corpus(self, cfg):
        files = find_text_files(cfg.path)
        name = files[0].name if len(files) == 1 else user_path(cfg.path).name or "corpus"
        return Corpus(name, files=tuple(files), options=reader_settings(cfg, files))


class Url(Source):
    """A file downloaded once into the cache folder and checked against data.sha256; data.path, if
    set, is a local copy to use instead."""

    name = "url"

    def validate(self, cfg):
        if not cfg.url and not cfg.path:
            raise UserError("data.source=url needs data.url=<address>")
        if cfg.path:
            p = user_path(cfg.path)
            if not p.is_file():
                if why := not_a_regular_file(cfg.path, p):
                    raise UserError(why)
                name = Path(cfg.url.split("?")[0]).name if cfg.url else "the file"
                fix = (f"give the path of your copy of {name}, or leave data.path out to download it once from {cfg.url}"
                       if cfg.url else "give the path of a local copy, or data.url=<address> to download it")
                raise UserError(f"data.path={cfg.path}: no such file ({p}); {fix}")
            check_readers([user_path(cfg.path)])

    def corpus(self, cfg):
        if cfg.path:
            f = user_path(cfg.path)
            if cfg.sha256 and sha256_of(f) != cfg.sha256:
                raise UserError(
                    f"data.path={cfg.path} has SHA-256 {sha256_of(f)}, not the expected {cfg.sha256}; "
                    f"for other text use data=text"
                )
        else:
            f = download(cfg.url, cfg.sha256, cache_dir() / Path(cfg.url.split("?")[0]).name)
        return Corpus(f.name, files=(f,), options=reader_settings(cfg, [f]))


SOURCES: dict[str, Source] = {s.name: s for s in (PyDocs(), Files(), Url())}


def source_for(cfg: DataConfig) -> Source:
    """The source data.source names, its settings checked."""
    source = SOURCES.get(cfg.source) if isinstance(cfg.source, str) else None
    if source is None:
        raise UserError(f"data.source={cfg.source} is unknown: use one of {', '.join(SOURCES)}")
    source.validate(cfg)
    return source
