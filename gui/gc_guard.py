"""Python's cyclic garbage collector kept on the GUI thread while the live worker runs.

PySide6 deletes a Python-owned ``QObject`` (a window without a parent, its widgets) when the
Python wrapper is collected. The cyclic collector runs on whichever thread happens to allocate
when a generation's threshold is crossed: here often the avatar worker, its pipeline stages
or the frame reader. A window that became garbage is then destroyed off the GUI thread while
the GUI thread is drawing, and Qt crashes (seen in CI: a segmentation fault "Garbage-collecting"
inside the worker thread while it loaded the next avatar).

Two measures, both used by :class:`gui.app.LiveWindow`:

* :func:`acquire` / :func:`release`: while any window's worker runs, automatic collection is
  off and a ``QTimer`` on the GUI thread collects instead (the approach of pyqtgraph's
  ``pyqtgraph.util.garbage_collector.GarbageCollector``: the same thresholds, checked every
  second). The previous automatic setting comes back when the last window releases.
* :func:`delete_now`: delete a widget's C++ side on the GUI thread at once
  (``deleteLater`` + the posted ``DeferredDelete`` events), so a wrapper collected later, on
  any thread, holds nothing Qt still owns.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QCoreApplication, QEvent, QObject, QTimer

INTERVAL_MS = 1000
_state: dict = {"count": 0, "was_enabled": True, "timer": None}


def _collect_due() -> None:
    """One collection of the oldest generation whose count passed its threshold (GUI thread)."""
    counts, limits = gc.get_count(), gc.get_threshold()
    for generation in (2, 1, 0):
        if counts[generation] > limits[generation]:
            gc.collect(generation)
            return


def acquire() -> None:
    """Start collecting on the GUI thread only (call from the GUI thread; counted).

    The first call collects everything now, on the GUI thread: garbage left by earlier windows
    cannot then be collected by the worker that is about to start.
    """
    if _state["count"] == 0:
        gc.collect()
        _state["was_enabled"] = gc.isenabled()
        gc.disable()
        timer = QTimer(QCoreApplication.instance())
        timer.setObjectName("gui-thread-gc")
        timer.timeout.connect(_collect_due)
        timer.start(INTERVAL_MS)
        _state["timer"] = timer
    _state["count"] += 1


def release() -> None:
    """Undo one :func:`acquire`; the last one collects now and restores automatic collection.

    Raises:
        RuntimeError: more releases than acquires.
    """
    if _state["count"] <= 0:
        raise RuntimeError("gc_guard.release() without a matching acquire()")
    _state["count"] -= 1
    if _state["count"] == 0:
        timer, _state["timer"] = _state["timer"], None
        if timer is not None:
            timer.stop()
            timer.deleteLater()
        gc.collect()
        if _state["was_enabled"]:
            gc.enable()


def active() -> int:
    """How many acquires are outstanding (0: automatic collection is as it was)."""
    return int(_state["count"])


def delete_now(obj: QObject) -> None:
    """Delete ``obj``'s C++ object now, on the calling (GUI) thread.

    ``deleteLater`` alone waits for the event loop's next pass at the right level, which
    ``processEvents`` does not give; the posted ``DeferredDelete`` events are sent here.
    """
    obj.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
