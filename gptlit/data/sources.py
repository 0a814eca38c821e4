"""Where a corpus comes from: one Source class per origin, every source in the one table SOURCES.

A source checks the settings it needs (`validate`, when the datamodule is made, so a bad path fails
before the model is built) and says what to tokenize (`corpus`, a gptlit.data.token_cache.Corpus).
data.source picks one by name; a new origin is a new class here and one entry in SOURCES.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import socket
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path

from gptlit.core.errors import UserError
from gptlit.core.files import atomic_file, user_path
from gptlit.data.config import DataConfig
from gptlit.data.readers import Corpus, corpus_suffixes, reader_for

log = logging.getLogger(__name__)

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


HF_EXTRA = 'pip install -e ".[hf]"'
TRUE = {"1", "ON", "YES", "TRUE"}


def import_datasets():
    """The `datasets` package (the [hf] extra), or one line saying how to install it."""
    try:
        import datasets
    except ImportError as e:
        raise UserError(f"data.source=hf needs the datasets package ({e}): {HF_EXTRA}") from None
    return datasets


def plain(value):
    """A data.data_files value as load_dataset takes it: Hydra's DictConfig and ListConfig as a dict and a list."""
    if value is None or isinstance(value, str):
        return value
    if hasattr(value, "items"):
        return {str(k): plain(v) for k, v in value.items()}
    return [plain(v) for v in value]


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection (HF_ENDPOINT, else huggingface.co)."""
    host = re.sub(r"^https?://", "", os.environ.get("HF_ENDPOINT") or "huggingface.co").split("/")[0]
    host, _, port = host.partition(":")
    try:
        socket.create_connection((host, int(port or 443)), timeout=timeout).close()
        return True
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def hf_offline(datasets):
    """Hugging Face offline mode (what HF_HUB_OFFLINE=1 sets) for the block: load_dataset then reads
    the local cache and fails at once, never waiting on the network."""
    import huggingface_hub.constants as hub

    saved = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = saved


@contextlib.contextmanager
def datasets_quiet(datasets):
    """datasets' own log lines off for the block (its "using the latest cached version" warnings
    would come once per load; gptlit says where the text came from in one line)."""
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class HuggingFace(Source):
    """A Hugging Face dataset (needs the [hf] extra): data.name is a Hub id already in the local
    Hugging Face cache or a local folder (files load_dataset reads, or a save_to_disk folder), with
    data.split, data.config and data.data_files as datasets.load_dataset takes them; each row's
    data.text_key column is a document.

    The dataset is read offline first. Only when it is not in the local cache, the Hub answers and
    HF_HUB_OFFLINE is not set does load_dataset download it. The split's text column is written once
    into a Parquet file under GPTLIT_CACHE/hf/, streamed a batch at a time (memory stays flat), and
    tokenized from there like any Parquet corpus (gptlit.data.readers.ParquetReader). That file's name
    carries the dataset's identity and datasets' fingerprint of its contents, so a changed dataset
    is written and tokenized again, and an unchanged one never is."""

    name = "hf"
    BATCH_ROWS = 1000  # rows per batch written to the Parquet file

    def validate(self, cfg):
        if not cfg.name or not isinstance(cfg.name, str):
            raise UserError("data.source=hf needs data.name=<a dataset in the Hugging Face cache, or a local folder>")
        if not isinstance(cfg.split, str) or not cfg.split:
            raise UserError(f"data.split={cfg.split} must name a split of the dataset (e.g. train)")
        if cfg.config is not None and not isinstance(cfg.config, str):
            raise UserError(f"data.config={cfg.config} must be the name of a configuration of the dataset")
        self.column(cfg, self.load(cfg))  # a missing dataset or column fails now, before the model is built

    def corpus(self, cfg):
        ds = self.column(cfg, self.load(cfg))
        where = os.path.dirname(ds.cache_files[0]["filename"]) if ds.cache_files else "memory"
        log.info(f"hf: {cfg.name} ({cfg.split}): {len(ds):,} rows from {where}")
        return Corpus(f"hf-{self.label(cfg)}", files=(self.materialize(cfg, ds),), options={"text_key": "text"})

    # ---- loading ---------------------------------------------------------------------------------

    @staticmethod
    def label(cfg) -> str:
        return f"{Path(cfg.name.rstrip('/')).name or 'dataset'}-{cfg.split}"

    def load(self, cfg):
        """The split as a datasets.Dataset (memory-mapped Arrow), read offline when it can be."""
        datasets = import_datasets()
        folder = user_path(cfg.name)
        local = folder.is_dir()
        if local and ((folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()):
            return self.load_saved(cfg, datasets, folder)
        args = dict(path=str(folder) if local else cfg.name, name=cfg.config, data_files=plain(cfg.data_files),
                    split=cfg.split)
        forced = str(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE") or "").upper() in TRUE
        try:
            with hf_offline(datasets), datasets_quiet(datasets):
                return self.call(cfg, datasets.load_dataset, **args)
        except ConnectionError:
            pass  # not in the local cache
        if forced or local:
            why = "HF_HUB_OFFLINE is set" if forced else "a local folder"
        elif not hub_reachable():
            why = "the Hugging Face Hub is not reachable"
        else:
            log.info(f"hf: {cfg.name} is not in the local Hugging Face cache; downloading it with datasets.load_dataset")
            try:
                return self.call(cfg, datasets.load_dataset, **args)
            except ConnectionError as e:
                why = f"the download failed: {first_line(e)}"
        cache = datasets.config.HF_DATASETS_CACHE
        raise UserError(
            f"data.name={cfg.name} is not in the local Hugging Face cache ({cache}) nor a local folder ({why}): "
            f"load it once online (datasets.load_dataset), or give a folder of .jsonl/.parquet/.txt/.csv files "
            f"or a save_to_disk folder"
        ) from None

    def load_saved(self, cfg, datasets, folder: Path):
        """A folder written by Dataset.save_to_disk (one split) or DatasetDict.save_to_disk (data.split picks one)."""
        with datasets_quiet(datasets):
            ds = self.call(cfg, datasets.load_from_disk, str(folder))
        if isinstance(ds, datasets.DatasetDict):
            if cfg.split not in ds:
                raise UserError(f"data.split={cfg.split}: {cfg.name} has the splits {', '.join(ds)}; "
                                f"set data.split to one of them (a save_to_disk folder takes no slices)")
            ds = ds[cfg.split]
        return ds

    @staticmethod
    def call(cfg, fn, *args, **kwargs):
        """fn(...) with datasets' errors as one line naming the setting to fix (ConnectionError passes)."""
        datasets = import_datasets()
        try:
            return fn(*args, **kwargs)
        except ConnectionError:
            raise
        except ValueError as e:
            msg = first_line(e).rstrip(".")
            if "split" in msg.lower():
                raise UserError(f"data.split={cfg.split}: {msg}; set data.split to one of them") from None
            if "config" in msg.lower():
                raise UserError(f"data.config={cfg.config}: {msg}; set data.config to one of them") from None
            raise UserError(f"data.name={cfg.name}: datasets could not load it ({msg})") from None
        except (FileNotFoundError, datasets.exceptions.DatasetsError) as e:
            setting = "data_files" if cfg.data_files is not None and "data file" in str(e).lower() else "name"
            value = cfg.data_files if setting == "data_files" else cfg.name
            raise UserError(f"data.{setting}={value}: datasets could not load it ({first_line(e)})") from None
        except Exception as e:  # noqa: BLE001 - anything else datasets raises (StopIteration for no data files)
            files = f", data.data_files={cfg.data_files}" if cfg.data_files is not None else ""
            raise UserError(f"data.name={cfg.name}{files}: datasets could not load it ({type(e).__name__}: "
                            f"{first_line(e)}); check the name, data.config and data.data_files") from None

    @staticmethod
    def column(cfg, ds):
        """ds with only its text column, checked: data.text_key names a column of text."""
        datasets = import_datasets()
        if not isinstance(ds, datasets.Dataset):  # e.g. no split given: a DatasetDict
            raise UserError(f"data.split={cfg.split}: datasets returned a {type(ds).__name__}, not one split; "
                            f"set data.split to one split (e.g. train)")
        key, features = cfg.text_key, ds.features
        if key not in features:
            raise UserError(f"data.text_key={key}: {cfg.name} (split {cfg.split}) has no column {key!r} "
                            f"(its columns: {', '.join(features)}); set data.text_key to the column of the text")
        kind = features[key]
        if getattr(kind, "dtype", None) not in ("string", "large_string"):
            raise UserError(f"data.text_key={key}: column {key!r} of {cfg.name} holds {kind}, not text "
                            f"(its columns: {', '.join(features)}); set data.text_key to the column of the text")
        if len(ds) == 0:
            raise UserError(f"data.split={cfg.split}: {cfg.name} has no rows in that split; pick another split")
        return ds.select_columns([key])

    # ---- the text column, written once ------------------------------------------------------------

    @staticmethod
    def identity(cfg, ds) -> str:
        """A hash of what decides the text: the dataset as named, its settings and its contents
        (datasets' fingerprint, and the size and time of its Arrow files)."""
        folder = user_path(cfg.name)
        files = []
        for f in ds.cache_files:
            st = os.stat(f["filename"])
            files.append([f["filename"], st.st_size, st.st_mtime_ns])
        who = dict(name=str(folder.resolve()) if folder.is_dir() else cfg.name, config=cfg.config,
                   data_files=plain(cfg.data_files), split=cfg.split, text_key=cfg.text_key,
                   fingerprint=getattr(ds, "_fingerprint", None), rows=len(ds), files=files)
        return hashlib.sha256(json.dumps(who, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def materialize(self, cfg, ds) -> Path:
        """The split's text column as one Parquet file (column `text`) under GPTLIT_CACHE/hf/, written
        once (under a file lock: other processes wait, then reuse it) and atomically."""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label(cfg)).strip("._")[:60] or "dataset"
        dest = cache_dir() / "hf" / f"{slug}-{self.identity(cfg, ds)}.parquet"
        if dest.is_file():
            return dest
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            return self.write(cfg, ds, dest)
        except OSError as e:
            raise UserError(f"data.source=hf: cannot write {dest} ({e.strerror or e}); set GPTLIT_CACHE to a "
                            f"writable folder with room for the dataset's text") from None

    def write(self, cfg, ds, dest: Path) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from filelock import FileLock

        with FileLock(str(dest.with_name(f".{dest.name}.lock"))):  # hidden; stays (empty) for the next writer
            if dest.is_file():  # another process wrote it while this one waited
                return dest
            t0, rows, size = time.perf_counter(), 0, 0
            log.info(f"hf: writing the {cfg.text_key!r} column of {cfg.name} ({cfg.split}, {len(ds):,} rows) to {dest}")
            schema = pa.schema([pa.field("text", pa.large_string())])
            with atomic_file(dest, durable=True) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as out:
                for batch in ds.with_format("arrow").iter(batch_size=self.BATCH_ROWS):
                    col = batch.column(0)
                    if col.null_count:
                        at = rows + col.to_pylist().index(None)
                        raise UserError(f"data.text_key={cfg.text_key}: row {at} of {cfg.name} ({cfg.split}) has no "
                                        f"text (null); fix the dataset or pick another column")
                    col = col.cast(pa.large_string())
                    out.write_table(pa.table({"text": col}))
                    rows, size = rows + len(col), size + col.nbytes
            log.info(f"hf: wrote {rows:,} documents ({size / 1e6:,.1f} MB) in {time.perf_counter() - t0:.1f} s")
        return dest


SOURCES: dict[str, Source] = {s.name: s for s in (PyDocs(), Files(), Url(), HuggingFace())}


def source_for(cfg: DataConfig) -> Source:
    """The source data.source names, its settings checked."""
    source = SOURCES.get(cfg.source) if isinstance(cfg.source, str) else None
    if source is None:
        raise UserError(f"data.source={cfg.source} is unknown: use one of {', '.join(SOURCES)}")
    source.validate(cfg)
    return source
