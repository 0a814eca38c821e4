"""Files: paths as the user typed them, and writes that a kill or a full disk never leaves half done.

  user_path      a path relative to where the command ran (Hydra's original working directory)
  atomic_write   text, bytes or JSON into a file: a temporary file beside it, then a rename
  atomic_file    the same for a writer that needs a path or an open file (torch.save, savefig)
  publish        the rename both end with: a finished temporary file (partial_name) over its path
  fsync_dir      make a rename in a folder durable
  write_failure  the failed write (path, cause) behind an exception, e.g. a full disk or a read-only folder

Every file gptlit writes for a reader to come (checkpoints, job records, sweep summaries, plots,
downloads) goes through atomic_file, and the files that one process among several writes (token
files, trained tokenizers) through gptlit.core.file_lock.sole_writer: a reader sees the old file or
the new one, whole.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Iterator


def user_path(path: str | os.PathLike) -> Path:
    """A path as the user typed it: `~` expanded, relative paths taken from the directory the
    command ran in (Hydra's original working directory under train.py/sample.py, else the cwd)."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute():
        return p
    base = os.getcwd()
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            base = HydraConfig.get().runtime.cwd
    except ImportError:  # pragma: no cover - hydra is a dependency; Python callers may not run it
        pass
    return Path(base) / p


def partial_name(path: Path, tag: str | None = None) -> Path:
    """Where `path` is written before it is renamed into place: hidden, beside it (same filesystem,
    so the rename is atomic), named by the writing process so that writers never share one."""
    return path.with_name(f".{path.name}.{tag or os.getpid()}.partial")


def remove_stale_partials(path: Path) -> None:
    """Temporary files of `path` that killed writers left behind."""
    for p in path.parent.glob(f".{path.name}.*.partial"):
        p.unlink(missing_ok=True)


def fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def publish(tmp: Path, path: Path, durable: bool = False) -> None:
    """Rename the finished temporary file tmp over path; durable=True fsyncs the file before and the
    folder after, so that the rename survives a power loss in the order the renames were made."""
    if durable:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, durable: bool = False, tag: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without an error it is renamed over
    `path`, else removed. durable=True also fsyncs the file and the folder (checkpoints, token files).

        with atomic_file(ckpt, durable=True) as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    tmp = partial_name(path, tag)
    try:
        yield tmp
        publish(tmp, path, durable)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: str | bytes | dict | list, durable: bool = False) -> Path:
    """Write text, bytes or (a dict or list) JSON to `path` atomically (see atomic_file)."""
    path = Path(path)
    if isinstance(data, (dict, list)):
        data = json.dumps(data, indent=1, ensure_ascii=False)
    with atomic_file(path, durable) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return path


# errors that mean "this location cannot take the write", as opposed to a bug: said in one line
_WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for the file system",
    errno.EIO: "input/output error",
}


def describe_os_error(e: OSError) -> str:
    """The cause of an OSError in words ("no space left on the device"), without the traceback."""
    return _WRITE_ERRNOS.get(e.errno) or (e.strerror or str(e)).lower()


def final_name(path: str | os.PathLike) -> Path:
    """The file a temporary `.<name>.<tag>.partial` (partial_name) stands for; other paths unchanged."""
    p = Path(path)
    parts = p.name.split(".")
    if p.name.startswith(".") and p.name.endswith(".partial") and len(parts) >= 4:
        return p.with_name(".".join(parts[1:-2]))
    return p


def write_failure(exc: BaseException) -> tuple[str, str, int] | None:
    """(path, cause, errno) of the failed write behind `exc`, the first one in its chain of causes, or None
    when `exc` is no such failure. A failure counts when an OSError says the location cannot take the
    write (full, read-only, no permission, quota, I/O error)."""
    chain, e = [], exc
    while e is not None and len(chain) < 20:
        chain.append(e)
        e = e.__cause__ or e.__context__
    # the first failure (later ones are often its consequences), preferring one that names its file
    failed = [e for e in reversed(chain) if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS]
    if not failed:
        return None
    e = next((e for e in failed if e.filename), failed[0])
    path = str(final_name(e.filename)) if e.filename else "a file"
    return path, describe_os_error(e), e.errno


def write_error(path: str | os.PathLike, cause: BaseException) -> OSError | None:
    """An OSError naming `path` for a writer that failed with `cause`, such as torch.save's "RuntimeError:
    [enforce fail at inline_container.cc] unexpected pos" when the disk fills up: the errno of an OSError
    among its causes, else ENOSPC or EROFS when the file system of `path` is full or read-only at the
    time of the failure. None when it is none of these (a bug, not the disk)."""
    e = cause
    for _ in range(20):  # the OSError behind it, if any (torch wraps the file's ENOSPC in a RuntimeError)
        if e is None:
            break
        if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
            return OSError(e.errno, os.strerror(e.errno), str(path))
        e = e.__cause__ or e.__context__
    try:
        st = os.statvfs(Path(path).parent)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        code = errno.EROFS
    elif min(st.f_bavail, st.f_bfree) * st.f_frsize < 1 << 20:  # under 1 MiB left: the write filled it
        code = errno.ENOSPC
    else:
        return None
    return OSError(code, os.strerror(code), str(path))
