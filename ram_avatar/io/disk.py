"""Disk-full detection and the one-line messages for it.

Writers fail in several ways when a disk fills up: ``OSError`` with ``errno.ENOSPC`` /
``EDQUOT`` from Python I/O, PyAV's ``av.error.OSError`` (also errno 28), and safetensors'
``SafetensorError("... No space left on device (os error 28)")``, sometimes wrapped by our own
errors. :func:`is_disk_full` recognises all of them; :func:`free_bytes` and :func:`fmt_bytes`
help to say how much space is needed and free.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

__all__ = ["is_disk_full", "free_bytes", "fmt_bytes", "remove_stale_temp_files"]

_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def is_disk_full(exc: BaseException | None) -> bool:
    """True when ``exc`` or an exception it wraps (``__cause__`` / ``__context__``) says the disk
    or the user's quota is full."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if any(t in text for t in _TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return int(shutil.disk_usage(p).free)


def fmt_bytes(n: float) -> str:
    """``12 MB`` / ``340 kB`` / ``1.2 GB``."""
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.0f} MB"
    return f"{n / 1e3:.0f} kB"


def remove_stale_temp_files(folder: str | os.PathLike, stems: tuple[str, ...]) -> list[Path]:
    """Remove temporary files of :func:`ram_avatar.utils.atomic_path` (``.<stem>.<random>.tmp<suffix>``)
    whose ``<stem>`` starts with one of ``stems``, left in ``folder`` by a killed process.

    Call only while holding the lock of whatever writes them (no live writer is using them).

    Returns:
        the files removed.
    """
    removed = []
    d = Path(folder)
    if not d.is_dir():
        return removed
    for p in d.glob(".*.tmp*"):
        name = p.name[1:]
        if p.is_file() and ".tmp" in name and name.startswith(stems):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed
