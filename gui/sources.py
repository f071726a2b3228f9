"""Frame sources of the live app and the reader thread that keeps only the newest frame.

No Qt here (usable and testable without a display):

* :class:`WebcamSource` — an OpenCV ``VideoCapture`` device (index);
* :class:`VideoFileSource` — a video file decoded with PyAV (:func:`ram_avatar.capture.video.iter_frames`),
  played at its own frame rate like a camera;
* :func:`open_source` — ``"0"`` / ``0`` -> webcam 0 (``"0@1280x720"``: at that resolution),
  anything else -> a video file;
* :func:`list_cameras` — the cameras for the app's picker, with their resolutions: Qt
  Multimedia's device list where it loads, else the devices OpenCV can open;
* :func:`check_source` — open a source once (a webcam: a few tries) and close it again, so
  ``live --frames N`` fails within seconds on a missing file or camera instead of retrying;
* :class:`LatestFrameReader` — a thread that reads a source as fast as it delivers, keeps only
  the latest frame (older ones are dropped, never queued), reports status changes, and when
  the source fails (webcam unplugged, reader error, missing device) closes it and retries
  every ``retry_s`` seconds until stopped (or, with ``max_failures``, gives up after that
  many failures in a row). The end of a video file is reported and, with ``loop``, the file
  starts again.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from ram_avatar.errors import RamAvatarError

log = logging.getLogger(__name__)

__all__ = ["SourceError", "FrameSource", "WebcamSource", "VideoFileSource", "open_source",
           "parse_source", "parse_webcam", "webcam_spec", "CameraInfo", "list_cameras",
           "check_source", "LatestFrameReader"]


class SourceError(RamAvatarError):
    """A frame source cannot be opened or stopped delivering frames."""


class FrameSource(Protocol):
    """What the reader needs: ``read() -> RGB uint8 (H, W, 3)`` or None at the end of the
    stream (raises on failure), ``fps`` (None: unknown), ``live`` (a camera paces itself; a
    file is paced by the reader), ``name`` and ``close()``."""

    name: str
    fps: float | None
    live: bool

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class WebcamSource:
    """Webcam ``index`` through OpenCV; raises :class:`SourceError` when absent or lost."""

    live = True

    def __init__(self, index: int, width: int | None = None, height: int | None = None):
        import cv2

        self.name = f"webcam {index}" + (f" at {width}x{height}" if width and height else "")
        self.cap = cv2.VideoCapture(int(index))
        if not self.cap.isOpened():
            self.cap.release()
            raise SourceError(f"webcam {index} cannot be opened: it is not plugged in, or another "
                              "program (a video call, OBS, a browser tab) is using it. Close that "
                              "program, or pick another camera or a video file")
        if width:
            self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if fps > 0 else None

    def read(self) -> np.ndarray | None:
        import cv2

        ok, frame = self.cap.read()
        if not ok or frame is None:
            raise SourceError(f"{self.name} stopped delivering frames (unplugged, or in use by "
                              "another program?)")
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self.cap.release()


class VideoFileSource:
    """A video file, decoded frame by frame (PyAV); ``read`` returns None at its end."""

    live = False

    def __init__(self, path: str | Path):
        from ram_avatar.capture.video import iter_frames, probe_video

        self.path = Path(path)
        self.name = self.path.name
        if not self.path.is_file():
            raise SourceError(f"video file {self.path} does not exist (resolved from "
                              f"{Path.cwd()}): check the path, or give a webcam index such as 0")
        info = probe_video(self.path)  # VideoError (a RamAvatarError) for broken files
        self.fps = float(info.fps) if info.fps and info.fps > 0 else None
        self._it = iter_frames(self.path)

    def read(self) -> np.ndarray | None:
        return next(self._it, None)

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


_WEBCAM_RE = re.compile(r"^(\d+)(?:@(\d+)x(\d+))?$")


def parse_webcam(spec: str | int) -> tuple[int, tuple[int, int] | None] | None:
    """``0`` / ``"0"`` -> ``(0, None)``; ``"0@1280x720"`` -> ``(0, (1280, 720))`` (webcam 0 asked
    for 1280x720 pixels); anything else (a file) -> None."""
    if isinstance(spec, int):
        return spec, None
    m = _WEBCAM_RE.match(str(spec).strip())
    if m is None:
        return None
    return int(m.group(1)), ((int(m.group(2)), int(m.group(3))) if m.group(2) else None)


def webcam_spec(index: int, size: tuple[int, int] | None = None) -> str:
    """The source spec of webcam ``index`` at ``size`` (inverse of :func:`parse_webcam`)."""
    return f"{int(index)}" + (f"@{size[0]}x{size[1]}" if size else "")


def parse_source(spec: str | int) -> int | str:
    """``0`` / ``"0"`` / ``"0@1280x720"`` -> webcam index 0; anything else -> a file path string."""
    cam = parse_webcam(spec)
    return cam[0] if cam is not None else str(spec).strip()


def open_source(spec: str | int) -> FrameSource:
    """Open a webcam (``N`` or ``N@WxH``) or a video file.

    Raises:
        SourceError / VideoError: missing or busy camera, missing file, unreadable video.
    """
    cam = parse_webcam(spec)
    if cam is None:
        return VideoFileSource(str(spec).strip())
    index, size = cam
    return WebcamSource(index, *(size or (None, None)))


@dataclass(frozen=True)
class CameraInfo:
    """A camera of the app's picker.

    Attributes:
        index: OpenCV device index (what :class:`WebcamSource` opens).
        name: the device's name (Qt Multimedia), else ``camera N``.
        resolutions: (width, height) pixels it offers, largest first.
    """

    index: int
    name: str
    resolutions: tuple[tuple[int, int], ...]

    def spec(self, size: tuple[int, int] | None = None) -> str:
        return webcam_spec(self.index, size)


#: resolutions offered for a camera whose formats are unknown (OpenCV cannot list them)
COMMON_SIZES = ((1920, 1080), (1280, 720), (960, 540), (640, 480))


def _qt_cameras() -> list[CameraInfo] | None:
    """Cameras from Qt Multimedia's ``QMediaDevices.videoInputs()`` (names and video
    formats); None when the module does not load (PySide6-Addons not installed, or its
    system libraries missing)."""
    try:
        from PySide6.QtMultimedia import QMediaDevices
    except ImportError:
        return None
    cams = []
    for order, dev in enumerate(QMediaDevices.videoInputs()):
        ident = bytes(dev.id()).decode(errors="replace")
        m = re.search(r"video(\d+)$", ident)         # Linux: /dev/videoN is OpenCV's index N
        sizes = {(f.resolution().width(), f.resolution().height()) for f in dev.videoFormats()}
        cams.append(CameraInfo(int(m.group(1)) if m else order, dev.description() or ident,
                               tuple(sorted(sizes, key=lambda wh: -wh[0] * wh[1]))))
    return cams


def _opencv_cameras(candidates) -> list[CameraInfo]:
    """The candidate indices OpenCV opens, each with its current resolution first, then the
    smaller :data:`COMMON_SIZES`."""
    import cv2

    cams = []
    for i in candidates:
        cap = cv2.VideoCapture(int(i))
        try:
            if not cap.isOpened():
                continue
            w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        finally:
            cap.release()
        sizes = [(w, h)] if w > 0 and h > 0 else []
        sizes += [s for s in COMMON_SIZES if s not in sizes]
        cams.append(CameraInfo(int(i), f"camera {i}", tuple(sizes)))
    return cams


def list_cameras(max_index: int = 4) -> tuple[list[CameraInfo], str]:
    """The cameras the app can open, for its picker.

    Qt Multimedia (``PySide6-Addons``) gives names and the video formats of each device; where
    it does not load, the cameras OpenCV opens are listed (on Linux the ``/dev/video*``
    devices, elsewhere indices 0 .. ``max_index - 1``) with their current resolution and
    the common sizes below it.

    Returns:
        (cameras, how): ``how`` names the method used (``qt-multimedia`` / ``opencv``).
    """
    cams = _qt_cameras()
    if cams is not None:
        return cams, "qt-multimedia"
    devs = sorted(Path("/dev").glob("video*")) if Path("/dev").is_dir() else []
    nums = [int(d.name[5:]) for d in devs if d.name[5:].isdigit()]
    return _opencv_cameras(nums if sys.platform.startswith("linux") else range(max_index)), "opencv"


def check_source(spec: str | int, tries: int = 3, wait_s: float = 1.0,
                 factory: Callable[[object], FrameSource] = open_source) -> None:
    """Open ``spec`` once and close it again, to fail fast before a run that needs it.

    A video file is opened (and probed) once; a webcam up to ``tries`` times, ``wait_s``
    seconds apart (a camera that is just being plugged in or released by another program).

    Raises:
        SourceError / VideoError: the file is missing or unreadable, or the webcam could not be
            opened in ``tries`` attempts (the message says how often and why).
    """
    s = parse_source(spec)
    attempts = max(1, int(tries)) if isinstance(s, int) else 1
    for i in range(attempts):
        try:
            src = factory(spec)
        except RamAvatarError as e:
            if i + 1 >= attempts:
                if attempts > 1:
                    raise SourceError(f"{e} (tried {attempts} times, {wait_s:g} s apart)") from None
                raise
            time.sleep(wait_s)
            continue
        _close(src)
        return


class LatestFrameReader:
    """Reads a source on its own thread and keeps only the newest frame (module docstring).

    Args:
        factory: opens the source (called again on every retry).
        retry_s: seconds between reopening attempts after a failure.
        loop: restart a finished (non-live) source from its beginning.
        realtime: pace non-live sources at their fps (default 30 when unknown), as a camera
            would deliver them; False reads as fast as possible (frames are still dropped when
            the consumer is slower).
        on_status: ``callback(level, message)`` with level ``info`` | ``warning`` | ``error`` |
            ``ended``, called from the reader thread on every status change.
        max_failures: give up (status ``ended``) after this many failures in a row to open or
            read the source; None retries until stopped (the interactive app).

    Attributes:
        frames_read, frames_dropped (never consumed), failures, ended (a non-looping source
        reached its end), status (last (level, message)).
    """

    def __init__(self, factory: Callable[[], FrameSource], retry_s: float = 1.0, loop: bool = False,
                 realtime: bool = True, on_status: Callable[[str, str], None] | None = None,
                 max_failures: int | None = None):
        self.factory = factory
        self.max_failures = max_failures
        self._in_a_row = 0
        self.retry_s = float(retry_s)
        self.loop = loop
        self.realtime = realtime
        self.on_status = on_status
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._seq = 0
        self._consumed = 0
        self._stop = threading.Event()
        self.frames_read = 0
        self.frames_dropped = 0
        self.failures = 0
        self.ended = False
        self.status: tuple[str, str] = ("info", "starting")
        self.source_name = "?"
        self.source_fps: float | None = None
        self._thread = threading.Thread(target=self._run, name="frame-reader", daemon=True)

    # -- control ------------------------------------------------------------------------------
    def start(self) -> "LatestFrameReader":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def get(self, timeout: float = 0.1, after: int = 0) -> tuple[int, np.ndarray] | None:
        """The newest frame with a sequence number greater than ``after``, waiting up to
        ``timeout`` seconds; None when none arrived. Returns ``(seq, frame)``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._seq <= after or self._frame is None:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return None
                self._cond.wait(left)
            self._consumed = self._seq
            return self._seq, self._frame

    # -- thread -------------------------------------------------------------------------------
    def _set_status(self, level: str, message: str) -> None:
        self.status = (level, message)
        (log.warning if level in ("warning", "error") else log.info)("%s", message)
        if self.on_status is not None:
            try:
                self.on_status(level, message)
            except Exception:  # noqa: BLE001 - a broken callback must not kill the reader
                log.exception("status callback failed")

    def _give_up(self, reason: str) -> bool:
        """Count a failure in a row; True (status ``ended``) once ``max_failures`` is reached."""
        self._in_a_row += 1
        if self.max_failures is None or self._in_a_row < self.max_failures:
            return False
        self.ended = True
        self._set_status("ended", f"{reason}; gave up after {self._in_a_row} failed attempts")
        return True

    def _push(self, frame: np.ndarray) -> None:
        with self._cond:
            if self._frame is not None and self._consumed < self._seq:
                self.frames_dropped += 1
            self._frame = frame
            self._seq += 1
            self.frames_read += 1
            self._in_a_row = 0
            self._cond.notify_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                src = self.factory()
            except Exception as e:  # noqa: BLE001 - missing camera, bad file, ...
                self.failures += 1
                if self._give_up(f"cannot open the source: {e}"):
                    break
                self._set_status("error", f"cannot open the source: {e} (retrying every {self.retry_s:g} s)")
                self._stop.wait(self.retry_s)
                continue
            self.source_name, self.source_fps = getattr(src, "name", "?"), getattr(src, "fps", None)
            self.ended = False
            self._set_status("info", f"reading {self.source_name}")
            period = 1.0 / (src.fps or 30.0) if (self.realtime and not getattr(src, "live", True)) else 0.0
            next_t = time.monotonic()
            try:
                while not self._stop.is_set():
                    frame = src.read()
                    if frame is None:
                        break
                    frame = np.asarray(frame)
                    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                        raise SourceError(f"{self.source_name} delivered a {frame.shape} {frame.dtype} "
                                          "frame, expected (H, W, 3) uint8")
                    self._push(frame)
                    if period:
                        next_t += period
                        delay = next_t - time.monotonic()
                        if delay > 0:
                            self._stop.wait(delay)
                        else:
                            next_t = time.monotonic()
                else:
                    break  # stopped
            except Exception as e:  # noqa: BLE001 - unplugged camera, decoder error, ...
                self.failures += 1
                _close(src)
                if self._give_up(f"{self.source_name} lost: {e}"):
                    break
                self._set_status("error", f"{self.source_name} lost: {e} (retrying every {self.retry_s:g} s)")
                self._stop.wait(self.retry_s)
                continue
            _close(src)
            if self._stop.is_set():
                break
            # end of a finite source
            if self.loop:
                self._set_status("info", f"{self.source_name} ended; starting again")
                continue
            self.ended = True
            self._set_status("ended", f"{self.source_name} ended: choose a source and press Start")
            break


def _close(src) -> None:
    try:
        src.close()
    except Exception:  # noqa: BLE001
        log.debug("closing the source failed", exc_info=True)
