"""App habits of ``ram-avatar live`` (issue 13, item 8): the camera picker and its resolutions,
``N@WxH`` webcam specs, and the remembered settings (gui.settings)."""

from __future__ import annotations

import argparse

import pytest

pytest.importorskip("PySide6.QtWidgets", reason="the live app needs PySide6 (extra [gui])")

from gui import sources  # noqa: E402
from gui.sources import CameraInfo, open_source, parse_source, parse_webcam  # noqa: E402


@pytest.fixture(scope="module")
def qapp():
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication([])


class _FakeCapture:
    """cv2.VideoCapture stand-in: devices 0 and 2 exist, 640x480 by default; records sets."""

    existing = {0, 2}
    opened: list = []

    def __init__(self, index):
        self.index, self.size = index, [640, 480]
        _FakeCapture.opened.append(self)

    def isOpened(self):  # noqa: N802 (OpenCV API)
        return self.index in self.existing

    def get(self, prop):
        import cv2

        return {cv2.CAP_PROP_FRAME_WIDTH: self.size[0], cv2.CAP_PROP_FRAME_HEIGHT: self.size[1],
                cv2.CAP_PROP_FPS: 30.0}.get(prop, 0.0)

    def set(self, prop, value):
        import cv2

        self.size[0 if prop == cv2.CAP_PROP_FRAME_WIDTH else 1] = int(value)
        return True

    def release(self):
        pass


def test_webcam_specs():
    assert parse_webcam("0") == (0, None) and parse_webcam(3) == (3, None)
    assert parse_webcam("1@1280x720") == (1, (1280, 720))
    assert parse_webcam("clip.mp4") is None and parse_webcam("1@720") is None
    assert parse_source("1@1280x720") == 1 and parse_source("clip.mp4") == "clip.mp4"
    assert CameraInfo(2, "cam", ((640, 480),)).spec((640, 480)) == "2@640x480"


def test_open_source_asks_the_camera_for_the_resolution(monkeypatch):
    import cv2

    monkeypatch.setattr(cv2, "VideoCapture", _FakeCapture)
    src = open_source("2@1280x720")
    assert src.name == "webcam 2 at 1280x720" and src.cap.size == [1280, 720]
    with pytest.raises(sources.SourceError, match="another program"):
        open_source("1")                       # missing or busy: the message says both


def test_opencv_camera_list(monkeypatch):
    """Without Qt Multimedia the cameras OpenCV opens are listed, current size first."""
    import cv2

    monkeypatch.setattr(cv2, "VideoCapture", _FakeCapture)
    monkeypatch.setattr(sources, "_qt_cameras", lambda: None)
    monkeypatch.setattr(sources.sys, "platform", "win32")      # probe indices 0..3
    cams, how = sources.list_cameras()
    assert how == "opencv" and [c.index for c in cams] == [0, 2]
    assert cams[0].resolutions[0] == (640, 480) and (1280, 720) in cams[0].resolutions


class _Runtime:
    """No avatar: the picker and the settings need none."""

    def __init__(self):
        raise RuntimeError("no avatar in this test")


def _window(qapp, **kw):
    from gui.app import LiveWindow

    cams = [CameraInfo(0, "Laptop camera", ((1280, 720), (640, 480))),
            CameraInfo(4, "USB camera", ((1920, 1080), (1280, 720)))]
    return LiveWindow("unused", source=None, runtime_factory=_Runtime,
                      camera_lister=lambda: (cams, "test"), **kw)


def _close(qapp, win):
    assert win.dispose(20000), "the worker thread did not stop"   # deleted on this thread
    qapp.processEvents()


def test_camera_picker_sets_the_source(qapp):
    win = _window(qapp)
    try:
        assert win.camera_box.count() == 2 and win.camera_box.itemText(1) == "USB camera (4)"
        win.camera_box.setCurrentIndex(1)
        win.camera_box.activated.emit(1)
        assert [win.resolution_box.itemText(i) for i in range(win.resolution_box.count())] == [
            "1920x1080", "1280x720"]
        assert win.source_edit.text() == "4@1920x1080"
        win.resolution_box.setCurrentIndex(1)
        win.resolution_box.activated.emit(1)
        assert win.source_edit.text() == "4@1280x720"
    finally:
        _close(qapp, win)


def test_no_camera_says_so(qapp):
    from gui.app import LiveWindow

    win = LiveWindow("unused", source=None, runtime_factory=_Runtime,
                     camera_lister=lambda: ([], "test"))
    try:
        assert not win.camera_box.isEnabled() and win.camera_box.itemText(0) == "no camera found"
        assert "Refresh" in win.camera_box.toolTip()
    finally:
        _close(qapp, win)


def test_settings_are_remembered_and_command_line_wins(qapp, tmp_path):
    from gui.cli import add_arguments
    from gui.settings import DEFAULTS, apply_saved, load_settings, settings_store

    store = settings_store(tmp_path / "live.ini")
    win = _window(qapp, settings_store=store)
    try:
        win.source_edit.setText("4@1280x720")
        win.framing_box.setCurrentText("upper")
        win.zoom_spin.setValue(1.5)
        win.background_box.setCurrentText("#112233")
        win.lower_body_box.setCurrentText("sit")
        win.overlay_box.setChecked(True)
    finally:
        win.close()                              # closing writes the settings
        _close(qapp, win)
    saved = load_settings(settings_store(tmp_path / "live.ini"))
    assert saved["source"] == "4@1280x720" and saved["framing"] == "upper"
    assert saved["zoom"] == 1.5 and saved["background"] == "#112233"
    assert saved["lower_body"] == "sit" and saved["overlay"] is True and saved["mda"] is False

    p = argparse.ArgumentParser()
    add_arguments(p)
    a = p.parse_args(["subj", "--framing", "head"])       # given on the command line: kept
    used = apply_saved(a, saved)
    assert a.framing == "head" and a.source == "4@1280x720" and a.zoom == 1.5
    assert a.overlay is True and "framing" not in used
    fresh = p.parse_args(["subj"])
    apply_saved(fresh, {})
    assert all(getattr(fresh, k) == v for k, v in DEFAULTS.items())


def test_scripted_runs_ignore_remembered_settings(qapp, tmp_path, monkeypatch, capsys):
    """--frames runs use the defaults: a remembered source does not replace the default."""
    from gui.settings import save_settings, settings_store

    path = tmp_path / "live.ini"
    save_settings(settings_store(path), {"source": "7", "framing": "head"})
    monkeypatch.setenv("RAM_AVATAR_LIVE_SETTINGS", str(path))
    from ram_avatar.cli import main

    # the default webcam 0 (not the remembered 7) is tried, and fails fast here
    assert main(["live", str(tmp_path / "s"), "--frames", "2"]) == 2
    err = capsys.readouterr().err
    assert "webcam 0" in err and "webcam 7" not in err
