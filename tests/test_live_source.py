"""`live --frames N` fails fast on a missing source; the app says when nobody is in view."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6.QtWidgets", reason="the live app needs PySide6 (extra [gui])")

from live_fixture import FakeStageRuntime  # noqa: E402
from ram_avatar.cli import main  # noqa: E402


def test_live_frames_missing_file_exits_at_once(tmp_path, capsys):
    t0 = time.monotonic()
    code = main(["live", str(tmp_path / "subject"), "--source", str(tmp_path / "nope.mp4"),
                 "--frames", "3", "--timeout", "600"])
    took = time.monotonic() - t0
    assert code == 2 and took < 5.0, took
    err = capsys.readouterr().err
    assert "nope.mp4" in err and "does not exist" in err


def test_live_frames_missing_webcam_retries_then_fails(tmp_path, capsys):
    t0 = time.monotonic()
    code = main(["live", str(tmp_path / "subject"), "--source", "9", "--frames", "3"])
    took = time.monotonic() - t0
    assert code == 2 and took < 30.0, took  # the --timeout default is 600 s
    err = capsys.readouterr().err
    assert "webcam 9" in err and "tried 3 times" in err


def test_reader_gives_up_after_max_failures():
    from gui.sources import LatestFrameReader, SourceError

    calls, statuses = [], []

    def factory():
        calls.append(1)
        raise SourceError("webcam 7 not found")

    r = LatestFrameReader(factory, retry_s=0.01, max_failures=3,
                          on_status=lambda lvl, msg: statuses.append((lvl, msg))).start()
    r._thread.join(5)
    assert not r.alive and r.ended and len(calls) == 3
    assert statuses[-1][0] == "ended" and "gave up after 3" in statuses[-1][1]


class _Runtime(FakeStageRuntime):
    """A stand-in runtime whose tracker sees a person only while ``person`` is True."""

    person = False


class _Frames:
    name, fps, live = "frames", 100.0, True

    def read(self):
        time.sleep(0.01)
        return np.zeros((48, 64, 3), np.uint8)

    def close(self):
        pass


def _wait(app, cond, timeout):
    t0 = time.monotonic()
    while not cond():
        app.processEvents()
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.01)


def test_no_person_in_view_is_shown():
    from PySide6.QtWidgets import QApplication

    from gui.app import NO_PERSON_MESSAGE, LiveWindow

    app = QApplication.instance() or QApplication([])
    _Runtime.person = False
    win = LiveWindow("unused", source="cam", runtime_factory=_Runtime,
                     source_factory=lambda spec: _Frames())
    win.show()
    try:
        _wait(app, lambda: any(m == NO_PERSON_MESSAGE for _, m in win.messages), 30)
        assert win.message.text() == NO_PERSON_MESSAGE
        assert sum(m == NO_PERSON_MESSAGE for _, m in win.messages) == 1   # once, not per frame
        _Runtime.person = True
        _wait(app, lambda: win.messages[-1][1] == "person in view: tracking", 30)
        n = len(win.messages)
        _wait(app, lambda: win.frames_shown > 10, 30)
        assert len(win.messages) == n                                      # no flicker
    finally:
        win.dispose(10000)
        app.processEvents()


class _Marker:
    """Records the thread that finalises it; kept in a reference cycle, so only the cyclic
    collector frees it."""

    freed_on: list = []

    def __init__(self):
        self.me = self

    def __del__(self):
        _Marker.freed_on.append(threading.get_ident())


def test_garbage_is_collected_on_the_gui_thread_while_the_worker_runs():
    """CI crashed when a collection on the worker thread destroyed an earlier test's window
    (gui.gc_guard): while a window's worker runs, automatic collection is off and the GUI
    thread's timer collects; ``dispose`` deletes the window's C++ side at once, on this
    thread, and hands automatic collection back."""
    import gc

    import shiboken6
    from PySide6.QtWidgets import QApplication

    from gui import gc_guard
    from gui.app import LiveWindow

    app = QApplication.instance() or QApplication([])
    assert gc.isenabled() and gc_guard.active() == 0
    win = LiveWindow("unused", source="cam", runtime_factory=_Runtime,
                     source_factory=lambda spec: _Frames())
    win.show()
    try:
        _wait(app, lambda: win.frames_shown > 3, 30)
        assert not gc.isenabled() and gc_guard.active() == 1
        _Marker.freed_on.clear()
        _Marker()
        # past generation 0's threshold (the count is allocations less deallocations: kept)
        junk = [[i] for i in range(3 * gc.get_threshold()[0])]
        _wait(app, lambda: _Marker.freed_on, 10)   # the GUI timer collects within ~1 s
        del junk
        assert _Marker.freed_on == [threading.get_ident()]
    finally:
        assert win.dispose(10000)
    assert not shiboken6.isValid(win)               # the C++ window is gone already
    assert gc.isenabled() and gc_guard.active() == 0
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        gc_guard.release()


def test_banner_marks_the_displayed_frame_only():
    from gui.app import _banner

    img = np.full((128, 128, 3), 200, np.uint8)
    out = _banner(img, "no person in view")
    assert out.shape == img.shape and not np.array_equal(out[:10], img[:10])
    assert np.array_equal(out[20:], img[20:]) and np.all(img == 200)


@pytest.mark.parametrize("args,words", [
    (["--background", "transparent", "--record", "x.mp4"], ["x.webm", "alpha"]),
    (["--framing", "upper", "--out-size", "641x360"], ["641x360", "even"]),
    (["--vcam-key", "green"], ["#RRGGBB"]),
    (["--background", "no-such-file.png"], ["no-such-file.png", "not understood"]),
    (["--record", "x.avi"], [".webm", ".mov"]),
])
def test_live_output_options_fail_before_loading(tmp_path, capsys, args, words):
    # the subject and the source do not exist: the option is reported before either is read
    code = main(["live", str(tmp_path / "subject"), "--source", str(tmp_path / "nope.mp4"),
                 "--frames", "3", *args])
    assert code == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words) and "nope.mp4" not in err, err
