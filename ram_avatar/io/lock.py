"""Exclusive folder locks (one ``train`` per run, one ``capture`` / ``export`` per subject).

:class:`FolderLock` takes an advisory ``flock(LOCK_EX | LOCK_NB)`` on ``<folder>/<name>``
(POSIX ``fcntl``; on Windows the cross-platform ``filelock`` package). The kernel drops the lock
when its process ends in any way, kill -9 included, so a stale lock never blocks the next run;
the file itself holds the holder's PID, host and command, so a refused second process can name
it. On release the file is removed again (first unlinked, then unlocked, and an acquirer that
locked a file already unlinked retries on the new one), and so are the folders the lock had to
create when they are still empty, so a finished or failed run leaves nothing behind.

:func:`run_lock` is the lock of a training run: under ``torchrun`` only rank 0 takes it (the
other ranks of the same job work in the same run).

Example::

    with FolderLock(run_dir, what="training run"):
        train(...)        # a second `ram-avatar train` on run_dir exits at once:
                          # RunLockedError: ... is in use by PID 1234 (ram-avatar train ...)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from ram_avatar.errors import RunLockedError

log = logging.getLogger(__name__)

__all__ = ["FolderLock", "LOCK_NAME", "run_lock"]

#: default lock file name inside the locked folder
LOCK_NAME = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def _holder(path: Path) -> str:
    """Human-readable description of who holds ``path`` (from the JSON it contains)."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "another process"
    since = time.strftime("%H:%M:%S", time.localtime(info.get("since", 0)))
    host = info.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return (f"PID {info['pid']}{where} (`{info.get('command', '?')}`, since {since})")


class FolderLock:
    """An exclusive, non-blocking lock on a folder (module docstring).

    Args:
        folder: the folder to lock (created when missing).
        what: what the folder is, for the error message (``"training run"``, ``"subject"``).
        name: lock file name inside ``folder``.
        hint: what else the user can do, for the error message (default: use another folder).

    Raises (from :meth:`acquire` / ``__enter__``):
        RunLockedError: another live process holds the lock; the message names its PID and
            command and says what to do.
    """

    def __init__(self, folder: str | os.PathLike, what: str = "folder", name: str = LOCK_NAME,
                 hint: str = "write into another folder"):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.what = what
        self.hint = hint
        self._fd: int | None = None
        self._fallback = None
        self._created: list[Path] = []

    @property
    def locked(self) -> bool:
        return self._fd is not None or self._fallback is not None

    def _refuse(self) -> RunLockedError:
        return RunLockedError(
            f"the {self.what} {self.folder} is in use by {_holder(self.path)}: wait for it to "
            f"finish or stop it, or {self.hint}. A process that was killed releases its lock by "
            "itself.")

    def acquire(self) -> "FolderLock":
        """Take the lock now or raise :class:`RunLockedError` (never waits)."""
        if self.locked:
            return self
        missing = []
        for d in (self.folder, *self.folder.parents):
            if d.exists():
                break
            missing.append(d)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._created = missing  # deepest first
        if fcntl is None:  # pragma: no cover - Windows
            import filelock

            lock = filelock.FileLock(str(self.path))
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                raise self._refuse() from None
            self._fallback = lock
            return self
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._created = []  # the holder is using them
                raise self._refuse() from None
            except BaseException:
                os.close(fd)
                raise
            try:  # the holder may have unlinked this file just before releasing it: retry
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                    "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])[:300]}
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
            self._fd = fd
            return self
        raise self._refuse()  # pragma: no cover - lost the race 20 times in a row

    def release(self) -> None:
        """Remove the lock file and drop the lock (no-op when not held)."""
        if self._fallback is not None:  # pragma: no cover - Windows
            self._fallback.release()
            self._fallback = None
            return
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None
        for d in self._created:  # folders made for the lock and still empty: remove them
            try:
                d.rmdir()
            except OSError:
                break
        self._created = []

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):  # pragma: no cover - safety net; the kernel drops it at exit anyway
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass


def run_lock(run_dir: str | os.PathLike) -> contextlib.AbstractContextManager:
    """The lock of a training run ``run_dir`` (``<subject>/runs/<name>``).

    Returns:
        a :class:`FolderLock` (``what="training run"``) on rank 0 / a single process, a no-op
        context on the other ranks of a ``torchrun`` job (env ``RANK`` > 0), which share the run.
    """
    if int(os.environ.get("RANK", "0") or 0) > 0:
        return contextlib.nullcontext()
    return FolderLock(run_dir, what="training run", hint="train another run (--run NAME)")
