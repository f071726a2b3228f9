"""The PySide6 live app (issue 5), offscreen: real window, real runtime, video-file sources.

* the app driven from a video file draws the avatar and updates the FPS / latency readouts;
* a reader that raises after k frames, and the end of a video, are survived: a message is
  shown, the window keeps responding and frames resume after the retry / a new Start;
* a missing webcam shows a message and keeps retrying;
* ``ram-avatar live --frames N --screenshot PNG`` (the CLI verb) saves a grab of the window.

A screenshot of the first test is saved in its tmp dir, and copied to
``$RAM_AVATAR_LIVE_SCREENSHOT`` when that is set.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6.QtWidgets", reason="the live app needs PySide6 (extra [gui])")

from live_fixture import (BASKETBALL, TAIJI, FakeStageRuntime,  # noqa: E402,F401
                          live_subject)  # live_subject: session fixture


@pytest.fixture(scope="module")
def qapp():
    from PySide6.QtWidgets import QApplication

    # no rasterizer set-up: the worker thread gets its own moderngl context (one per thread)
    return QApplication.instance() or QApplication([])


def _wait(app, cond, timeout: float, what: str) -> float:
    """Process events until ``cond()``; returns the longest gap between event-loop passes (s)."""
    t0 = last = time.monotonic()
    gap = 0.0
    while not cond():
        app.processEvents()
        now = time.monotonic()
        gap, last = max(gap, now - last), now
        if now - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
    return gap


def _grab(widget) -> np.ndarray:
    from PySide6.QtGui import QImage

    img = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    rows = np.frombuffer(img.constBits(), np.uint8, count=h * bpl).reshape(h, bpl)
    return rows[:, :3 * w].reshape(h, w, 3).copy()


def _window(qapp, subject, **kw):
    from gui.app import LiveWindow

    win = LiveWindow(subject, backend="onnx", device="cpu", retry_s=0.2, **kw)
    win.resize(win.sizeHint())
    win.show()
    return win


def _close(qapp, win) -> None:
    assert win.dispose(20000), "the worker thread did not stop"   # deleted on this thread
    qapp.processEvents()


def test_app_drives_avatar_from_video_file(qapp, live_subject, tmp_path):  # noqa: F811
    win = _window(qapp, live_subject, source=str(BASKETBALL))
    try:
        win.overlay_box.setChecked(True)
        gap = _wait(qapp, lambda: win.frames_shown >= 4, 180, "4 avatar frames")
        assert gap < 5.0, f"the GUI event loop stalled for {gap:.1f} s"
        shot = tmp_path / "live_window.png"
        assert win.grab().save(str(shot)) and shot.stat().st_size > 0
        if os.environ.get("RAM_AVATAR_LIVE_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["RAM_AVATAR_LIVE_SCREENSHOT"])
        view = _grab(win.avatar_view)
        assert view.shape[0] >= 256 and view.reshape(-1, 3).std(0).max() > 5.0   # avatar drawn
        fps = float(win.fps_label.text().split(":")[1])
        assert fps > 0
        for name in ("track", "fit", "maps", "render", "total"):
            assert float(win.latency_labels[name].text()) >= 0
        assert float(win.latency_labels["total"].text()) > 0
        p50, p95 = (float(v) for v in win.latency_pct_label.text().split("/"))
        assert len(win.latencies) >= 4 and 0 < p50 <= p95   # rolling end-to-end latency
        S = win.worker.runtime.resolution
        assert win.last_packet["avatar"].shape == (S, S, 3)
        assert not win.mda_box.isEnabled()       # no motion aligner fitted for this subject
        assert "onnx" in win.info_label.text()
        # record a few frames to mp4
        from ram_avatar.capture.video import probe_video

        rec, n0 = tmp_path / "rec.mp4", win.frames_shown
        win.start_recording(rec)
        _wait(qapp, lambda: win.frames_shown >= n0 + 2 and win.recording, 120, "recorded frames")
        win.stop_recording()
        _wait(qapp, lambda: any(m.startswith("saved") for _, m in win.messages), 30, "the saved recording")
        assert rec.is_file() and probe_video(rec).frame_count >= 1
    finally:
        _close(qapp, win)


class _FlakySource:
    """A video-file source that raises after ``fail_after`` frames, or ends after ``end_after``.

    It behaves like a slow camera: frame k is delivered once ``processed()`` says the app has
    processed the k - 1 frames before it, so the test does not depend on the machine's speed.
    """

    def __init__(self, processed, fail_after=None, end_after=None):
        from gui.sources import VideoFileSource

        self.inner = VideoFileSource(TAIJI)
        self.name, self.fps, self.live = "flaky camera", 30.0, True
        self.fail_after, self.end_after, self.n = fail_after, end_after, 0
        self.processed, self.base = processed, processed()

    def read(self):
        deadline = time.monotonic() + 120
        while self.processed() - self.base < self.n and time.monotonic() < deadline:
            time.sleep(0.02)
        self.n += 1
        if self.fail_after is not None and self.n > self.fail_after:
            raise OSError("device unplugged")
        if self.end_after is not None and self.n > self.end_after:
            return None
        return self.inner.read()

    def close(self):
        self.inner.close()


def test_app_survives_failing_reader_and_end_of_video(qapp, live_subject):  # noqa: F811
    opened, holder = [], {}

    def factory(spec):
        opened.append(spec)
        processed = lambda: holder["win"].worker.frames  # noqa: E731
        # first open: unplugged after 3 frames; second: plays 3 frames and ends; later: the same
        if len(opened) == 1:
            return _FlakySource(processed, fail_after=3)
        return _FlakySource(processed, end_after=3)

    win = holder["win"] = _window(qapp, live_subject, source="cam", source_factory=factory)
    try:
        _wait(qapp, lambda: any("lost" in m for _, m in win.messages), 180, "the 'lost' message")
        assert any(lvl == "error" and "device unplugged" in m for lvl, m in win.messages)
        n_at_error = win.worker.frames
        assert n_at_error >= 2
        # the reader reopens the source by itself and frames flow again, then the video ends
        _wait(qapp, lambda: any(lvl == "ended" for lvl, _ in win.messages), 120, "the end of the video")
        assert len(opened) >= 2 and win.worker.frames > n_at_error
        assert "ended" in win.message.text()
        # the window keeps responding: a timer fires, the window can be grabbed
        fired = []
        from PySide6.QtCore import QTimer

        QTimer.singleShot(50, lambda: fired.append(True))
        _wait(qapp, lambda: fired, 10, "a GUI timer")
        assert _grab(win).size > 0
        assert win.thread.isRunning()
        # pressing Start again plays a new source
        before = win.frames_shown
        win.source_edit.setText("again")
        win.start_button.click()
        _wait(qapp, lambda: win.frames_shown > before, 120, "frames after Start")
    finally:
        _close(qapp, win)


class _FakeRuntime(FakeStageRuntime):
    """Stands in for AvatarRuntime where only the app's source handling is tested."""


def test_app_missing_webcam_shows_message_and_retries(qapp):
    from gui.app import LiveWindow

    win = LiveWindow("unused", source="9", runtime_factory=_FakeRuntime, retry_s=0.1)
    win.show()
    try:
        _wait(qapp, lambda: sum("webcam 9" in m for _, m in win.messages) >= 2, 30,
              "repeated 'webcam 9' messages")
        # the error stays visible between retries (a status line may follow it under load)
        assert any(k == "error" and "cannot be opened" in m and "another program" in m
                   for k, m in win.messages)  # missing, or busy in another program
        assert win.worker.reader.failures >= 2                # it keeps retrying
        assert win.thread.isRunning()
    finally:
        _close(qapp, win)


def test_live_cli_frames_and_screenshot(qapp, live_subject, tmp_path, capsys):  # noqa: F811
    import json

    from ram_avatar.cli import main

    shot = tmp_path / "cli_shot.png"
    rc = main(["live", str(live_subject), "--source", str(TAIJI), "--device", "cpu",
               "--frames", "3", "--screenshot", str(shot), "--timeout", "180"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["completed"] and out["frames"] >= 3
    assert shot.is_file() and shot.stat().st_size > 1000


# ---------------------------------------------------------------------------------------------
# output controls (issue 13): framing, zoom, offset, background; recording with alpha; the
# virtual camera's colour key. A stand-in runtime composes a synthetic rendered frame (a disc
# with alpha) with the real AvatarComposer, as the runtime's render stage does.


class _ComposingRuntime(FakeStageRuntime):
    """FakeStageRuntime whose output follows set_output through the real AvatarComposer: a
    64x64 "rendered" frame with an opaque orange disc (alpha 255) on a grey learned
    background (alpha 0)."""

    person = True
    has_alpha = True

    def __init__(self):
        from ram_avatar.render.framing import OutputSettings

        super().__init__()
        self.output, self.composer, self.requests = OutputSettings(), None, []

    def set_output(self, settings):
        from ram_avatar.render.framing import AvatarComposer

        self.requests.append(settings)
        self.output = settings
        self.composer = AvatarComposer.from_settings(settings, np.full((64, 64, 3), 128, np.uint8))

    def stage_render(self, job):
        img, stats = super().stage_render(job)
        yy, xx = np.mgrid[:64, :64]
        disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 14 ** 2
        rgb = img.copy()
        rgb[disc] = (240, 120, 30)
        alpha = (disc * 255).astype(np.uint8)
        if self.composer is None:
            return rgb, stats
        lm = np.full((33, 2), np.nan)
        lm[0], lm[11], lm[12], lm[23], lm[24] = (32, 20), (24, 28), (40, 28), (26, 46), (38, 46)
        box = self.composer.next_box(lm, (18, 18, 46, 46), 64)
        out = self.composer.compose(rgb, alpha, box)
        return out, {**stats, "box": box}


def test_app_output_controls_reach_the_runtime(qapp, tmp_path):
    from gui.app import LiveWindow
    from ram_avatar.render.framing import OutputSettings

    win = LiveWindow("unused", source="cam", runtime_factory=_ComposingRuntime,
                     source_factory=lambda spec: _StillSource(), retry_s=0.1)
    win.show()
    try:
        _wait(qapp, lambda: win.frames_shown >= 2, 60, "frames")
        assert win.last_packet["output"].shape == (64, 64, 3)           # the rendered square
        win.framing_box.setCurrentText("upper")
        win.zoom_spin.setValue(1.5)
        win.offset_y_spin.setValue(-0.1)
        win.out_size_box.setCurrentText("640x360")
        win.out_size_box.lineEdit().editingFinished.emit()
        win.background_box.setCurrentText("transparent")
        win.background_box.lineEdit().editingFinished.emit()
        want = OutputSettings.parse("transparent", "upper", 1.5, (0.0, -0.1), "640x360")
        _wait(qapp, lambda: win.last_packet["output"].shape == (360, 640, 4), 60, "framed RGBA frames")
        rt = win.worker.runtime
        assert rt.output == want and win.worker.output == want
        out, shown = win.last_packet["output"], win.last_packet["avatar"]
        # transparent around the avatar, opaque on it; the window shows a checkerboard there
        assert out[0, 0, 3] == 0 and out[180, 320, 3] == 255
        assert shown.shape == (360, 640, 3)
        assert {int(shown[0, 0, 0]), int(shown[0, 16, 0])} == {150, 200}
        assert tuple(shown[180, 320]) == (240, 120, 30)
        # a bad value is reported and changes nothing
        n = len(rt.requests)
        win.background_box.setCurrentText("no-such-picture.png")
        win.background_box.lineEdit().editingFinished.emit()
        assert "not understood" in win.message.text()
        assert win.background_box.currentText() == "transparent"   # back to the one in use
        win.zoom_mode_box.setCurrentText("camera")        # a valid change still goes through
        _wait(qapp, lambda: len(rt.requests) > n, 30, "the zoom-mode change")
        assert rt.requests[-1].zoom_mode == "camera" and rt.requests[-1].spec == "transparent"
    finally:
        _close(qapp, win)


class _StillSource:
    name, fps, live = "still camera", 30.0, True

    def read(self):
        time.sleep(0.03)
        return np.full((48, 64, 3), 90, np.uint8)

    def close(self):
        pass


class _FakeCam:
    """pyvirtualcam.Camera stand-in: keeps what it is sent."""

    sent: list = []

    def __init__(self, width, height, fps, fmt=None):
        self.width, self.height, self.fps, self.device = width, height, fps, "/dev/video-fake"
        type(self).sent = []

    def send(self, frame):
        assert frame.shape == (self.height, self.width, 3) and frame.dtype == np.uint8
        type(self).sent.append(frame.copy())

    def close(self):
        pass


def test_virtual_camera_gets_a_colour_key_and_recording_keeps_alpha(qapp, tmp_path, monkeypatch):
    import sys
    import types

    import av

    from gui.app import LiveWindow
    from gui.worker import virtual_camera_frame
    from ram_avatar.render.framing import OutputSettings

    fake = types.ModuleType("pyvirtualcam")
    fake.Camera = _FakeCam
    fake.PixelFormat = types.SimpleNamespace(RGB="rgb")
    monkeypatch.setitem(sys.modules, "pyvirtualcam", fake)
    out = OutputSettings.parse("transparent", "upper", out_size="320x180")
    win = LiveWindow("unused", source="cam", runtime_factory=_ComposingRuntime,
                     source_factory=lambda spec: _StillSource(), retry_s=0.1, output=out,
                     key_colour=(255, 0, 255), record_dir=tmp_path)
    win.show()
    try:
        assert win.background_box.currentText() == "transparent"
        assert win.framing_box.currentText() == "upper" and win.key_edit.text() == "#FF00FF"
        win.worker.set_virtual_camera(True)
        _wait(qapp, lambda: len(_FakeCam.sent) >= 2, 60, "virtual camera frames")
        sent = _FakeCam.sent[-1]
        assert sent.shape == (180, 320, 3)                       # opened at the output size
        assert tuple(sent[0, 0]) == (255, 0, 255)                # transparent -> key colour
        assert tuple(sent[90, 160]) == (240, 120, 30)            # the avatar as rendered
        assert any("keyed in #FF00FF" in m for _, m in win.messages)
        win.key_edit.setText("#00FF00")
        win.key_edit.editingFinished.emit()
        n = len(_FakeCam.sent)
        _wait(qapp, lambda: len(_FakeCam.sent) > n + 1, 30, "frames after the key change")
        assert tuple(_FakeCam.sent[-1][0, 0]) == (0, 255, 0)
        # the frame that would be sent for a square output (framing changed): letterboxed
        rgba = np.zeros((64, 64, 4), np.uint8)
        sq = virtual_camera_frame(rgba, (320, 180), (0, 255, 0))
        assert sq.shape == (180, 320, 3) and (sq == (0, 255, 0)).all()
        # a transparent recording: the Record button picks .webm (VP9 with alpha)
        win.record_button.click()
        _wait(qapp, lambda: win.recording, 30, "recording on")
        n0 = win.frames_shown
        _wait(qapp, lambda: win.frames_shown >= n0 + 3, 60, "recorded frames")
        win.record_button.click()
        _wait(qapp, lambda: any(m.startswith("saved") for _, m in win.messages), 60, "the saved file")
        rec = next(tmp_path.glob("ram_avatar_live_*.webm"))
        with av.open(str(rec)) as c:
            st = c.streams.video[0]
            ctx = av.codec.CodecContext.create("libvpx-vp9", "r")
            frames = [f for pkt in c.demux(st) for f in ctx.decode(pkt)]
        rgba = frames[-1].to_ndarray(format="rgba")
        assert rgba.shape == (180, 320, 4)
        assert rgba[0, 0, 3] <= 4 and rgba[90, 160, 3] >= 250   # alpha 0 around, 255 inside
        # .mp4 has no alpha: refused with a message saying what to use
        win.start_recording(tmp_path / "x.mp4")
        _wait(qapp, lambda: any("x.webm" in m for _, m in win.messages), 30, "the refusal")
        assert not (tmp_path / "x.mp4").exists()
    finally:
        _close(qapp, win)


def test_live_cli_transparent_upper_records_webm(qapp, live_subject, tmp_path, capsys):  # noqa: F811
    """``live --framing upper --background transparent --record x.webm``: RGBA frames of the
    output size, recorded with alpha (0 around the avatar, opaque on it), decoded by PyAV."""
    import json

    import av

    from ram_avatar.cli import main

    rec = tmp_path / "live.webm"
    rc = main(["live", str(live_subject), "--source", str(TAIJI), "--device", "cpu",
               "--frames", "3", "--timeout", "180", "--framing", "upper", "--out-size", "320x180",
               "--background", "transparent", "--record", str(rec)])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["completed"], out
    assert out["output_size"] == [320, 180] and out["output_channels"] == 4
    with av.open(str(rec)) as c:
        st = c.streams.video[0]
        ctx = av.codec.CodecContext.create("libvpx-vp9", "r")
        frames = [f.to_ndarray(format="rgba") for pkt in c.demux(st) for f in ctx.decode(pkt)]
    a = frames[-1][..., 3]
    assert a.shape == (180, 320)
    assert np.percentile(a, 10) <= 20 and a.max() >= 230   # background ~0, the avatar opaque
