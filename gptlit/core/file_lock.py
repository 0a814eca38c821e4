"""One lock between processes on a file (the `filelock` library: flock on POSIX), and the files that one
process among several writes while the others wait.

  ProcessLock   try_acquire() -> bool, release(); `note` is written into the held file for a process that
                finds it taken to read (holder()); the file is removed on release, so no empty lock files stay
  sole_writer   a block that writes some files as the one process that does: the lock held (waiting for
                it), killed writers' temporary files removed, the files published whole, in order

Used by the token cache and the BPE trainer (one process tokenizes a corpus or trains a tokenizer while
the others wait: gptlit.data.token_cache, gptlit.data.tokenizer_cache, through sole_writer) and the Optuna
search (one process runs a sweep's search: gptlit.run.search).

Removing a lock file is safe only while it is held: filelock (>= 4.3) takes the lock on an open file
and, when that file was removed from its path meanwhile, lets go of it and reports the lock taken (a
process that opened the file before the removal never holds a removed file).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Callable, Iterator

from gptlit.core.files import partial_name, publish, remove_stale_partials


class ProcessLock:
    def __init__(self, path, note: str | None = None, remove: bool = True):
        self.path, self.note, self.remove = Path(path), note, remove
        self._lock = None

    def _write_note(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.note.encode("utf-8"), 0)

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it; False (at once) when one does."""
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.path), on_acquired=self._write_note if self.note else None)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False
        self._lock = lock
        return True

    def holder(self) -> str:
        """What the holding process wrote into the file ('' when it wrote nothing or the file is gone)."""
        try:
            return self.path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""

    def release(self) -> None:
        if self._lock is None:
            return
        if self.remove:
            with contextlib.suppress(OSError):
                self.path.unlink()  # while held: see the module docstring
        self._lock.release()
        self._lock = None


@contextlib.contextmanager
def sole_writer(*paths: Path, lock: Path, waiting: Callable[[], None] | None = None, poll_s: float = 1.0,
                tag: str | None = None) -> Iterator[tuple[Path, ...]]:
    """Write `paths` as the one process among several that does, whole or not at all.

    Holds the lock file `lock` (a ProcessLock), waiting while another process holds it: every poll_s
    seconds it calls waiting(), which may raise to end the wait, and tries again. With the lock held, the
    temporary files that killed writers of `paths` left are removed, and the block gets a temporary path
    for each file (gptlit.core.files.partial_name, named by `tag`). When the block ends without an error,
    the temporary files it wrote are made durable and renamed into place in the order of `paths` (so the
    file that vouches for the others goes last); a block that finds the files made by the process it
    waited for writes none, and nothing changes. When it fails, they are removed. The lock is let go
    either way.

        with sole_writer(tokens, meta, lock=lock) as (tmp_tokens, tmp_meta):
            if not complete(tokens, meta):
                write(tmp_tokens); write(tmp_meta)
    """
    paths = tuple(Path(p) for p in paths)
    held = ProcessLock(lock)
    while not held.try_acquire():
        if waiting is not None:
            waiting()
        time.sleep(poll_s)
    temps = tuple(partial_name(p, tag) for p in paths)
    try:
        for p in paths:
            remove_stale_partials(p)  # left by a killed writer: no other writer is alive while the lock is held
        yield temps
        for tmp, path in zip(temps, paths):
            if tmp.exists():
                publish(tmp, path, durable=True)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        held.release()
