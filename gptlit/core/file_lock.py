"""One lock between processes on a file (the `filelock` library: flock on POSIX), taken without waiting.

  ProcessLock   try_acquire() -> bool, release(); `note` is written into the held file for a process that
                finds it taken to read (holder()); the file is removed on release, so no empty lock files stay

Used by the token cache (one process tokenizes a corpus while the others wait: gptlit.data.token_cache)
and the Optuna search (one process runs a sweep's search: gptlit.run.search).

Removing a lock file is safe only while it is held: filelock (>= 4.3) takes the lock on an open file
and, when that file was removed from its path meanwhile, lets go of it and reports the lock taken (a
process that opened the file before the removal never holds a removed file).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


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
