"""The live app's processing worker: runs the avatar runtime off the GUI thread.

:class:`LiveWorker` lives on its own ``QThread``. Its loop takes the newest frame from a
:class:`~gui.sources.LatestFrameReader` (stale frames are dropped, never queued), feeds it to
the runtime's three-stage pipeline (:class:`ram_avatar.runtime.pipeline.LivePipeline`: track |
fit + maps | render in threads, the same code path as ``ram-avatar bench live``), records / forwards the avatar
frame and emits one packet per frame to the GUI. Controls (source, overlay, MDA, recording,
virtual camera, output settings) are plain thread-safe setters read by the loop, so the GUI
never waits for the worker.

Output (issue 13): the runtime composes each frame
(:class:`~ram_avatar.render.framing.OutputSettings`: framing, zoom, offset, size, background;
the same :class:`~ram_avatar.render.framing.AvatarComposer` as ``drive``). Where it goes:

* recording: ``.mp4`` (H.264, opaque) through :class:`ram_avatar.capture.video.VideoWriter`;
  ``.webm`` (VP9 + alpha) or ``.mov`` (ProRes 4444) through
  :class:`~ram_avatar.capture.video.AlphaVideoWriter`, with the renderer's alpha for
  ``transparent`` (alpha 255 otherwise). A transparent output into ``.mp4`` is refused. The file
  is opened at the first frame's size; frames of another size (the framing changed while
  recording) are letterboxed into it;
* virtual camera (``pyvirtualcam``, optional): virtual cameras carry no alpha, so a transparent
  output is put over a key colour (:data:`DEFAULT_KEY`, green; :meth:`LiveWorker.set_key_colour`)
  for OBS's chroma-key filter (:func:`virtual_camera_frame`);
* the window: a transparent output is shown over a checkerboard, with the optional skeleton
  overlay mapped into the framed output. Nothing that goes wrong in the loop
(source lost, a failing frame, a recorder error) ends it: it is reported through
:attr:`LiveWorker.status` and the loop goes on.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PySide6.QtCore import QObject, Signal, Slot

from gui.overlay import draw_keypoints, draw_skeleton
from gui.sources import LatestFrameReader, open_source
from ram_avatar.render.composite import over_colour, over_image
from ram_avatar.render.framing import OutputSettings, letterbox
from ram_avatar.runtime.pipeline import LivePipeline

log = logging.getLogger(__name__)

#: width in pixels of the source preview sent to the GUI
PREVIEW_WIDTH = 256
#: default key colour of the virtual camera (RGB): chroma-key green
DEFAULT_KEY = (0, 255, 0)
#: recording suffixes written with an alpha channel
ALPHA_SUFFIXES = (".webm", ".mov")
#: side of the checkerboard squares behind a transparent avatar in the window (pixels)
CHECKER = 16


def virtual_camera_frame(image: np.ndarray, size: tuple[int, int] | None = None,
                         key=DEFAULT_KEY) -> np.ndarray:
    """The frame sent to a virtual camera: virtual cameras carry no alpha, so straight RGBA
    is put over the ``key`` colour (RGB 0..255), then fitted into the camera's ``size`` (W, H)
    with key-coloured borders (:func:`ram_avatar.render.framing.letterbox`).

    Args:
        image: (H,W,3) RGB or (H,W,4) straight RGBA uint8.
    Returns:
        (H',W',3) uint8 C-contiguous RGB.
    """
    rgb = over_colour(image, key)
    if size is not None:
        rgb = letterbox(rgb, size, fill=key)
    return np.ascontiguousarray(rgb)


def display_frame(image: np.ndarray, square: int = CHECKER) -> np.ndarray:
    """RGB for the window: straight RGBA over a light/dark grey checkerboard, RGB as is."""
    if image.shape[2] == 3:
        return image
    return over_image(image, _checkerboard(image.shape[0], image.shape[1], square))


@functools.lru_cache(maxsize=4)
def _checkerboard(h: int, w: int, square: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    board = np.where(((yy // square + xx // square) % 2 == 0)[..., None], 200, 150)
    board = np.repeat(board, 3, axis=2).astype(np.uint8)
    board.flags.writeable = False
    return board


def to_output_pixels(points: np.ndarray | None, box, out_size: tuple[int, int]):
    """Map training-crop pixels (overlay landmarks) into the framed output: ``box`` (x0, y0,
    w, h) of the crop fills ``out_size`` (W, H). None passes through."""
    if points is None or box is None:
        return points
    x0, y0, w, h = box
    W, H = out_size
    p = np.array(points, np.float64)
    p[..., 0] = (p[..., 0] - x0) * (W / w)
    p[..., 1] = (p[..., 1] - y0) * (H / h)
    return p


def virtual_camera_available() -> tuple[bool, str]:
    """(available, reason): pyvirtualcam importable (a backend is only checked when opened)."""
    try:
        import pyvirtualcam  # noqa: F401
    except ImportError as e:
        return False, f"pyvirtualcam is not installed ({e}): pip install 'ram-avatar-studio[gui]'"
    return True, "pyvirtualcam"


class LiveWorker(QObject):
    """Processing loop of the live app (module docstring).

    Args:
        runtime_factory: builds the :class:`~ram_avatar.runtime.avatar_runtime.AvatarRuntime`
            (called on the worker thread, so loading never blocks the GUI).
        source_factory: ``spec -> FrameSource`` (default :func:`gui.sources.open_source`).
        retry_s: seconds between attempts to reopen a failed source.
        loop: restart video files at their end.
        realtime: pace video files at their frame rate (as a camera would deliver them).
        max_source_failures: stop reading a source after this many failures in a row (the
            reader reports ``ended``); None retries until stopped.

    Signals:
        frame_ready(dict): ``avatar`` (S,S,3) uint8 for display, ``preview`` (h,w,3) uint8 source
            thumbnail, ``stats`` (per-stage ms), ``fps``, ``frames`` (processed so far),
            ``dropped`` (frames the reader dropped), ``person``.
        status(str, str): level (``info`` | ``warning`` | ``error`` | ``ended``) and message.
        runtime_ready(dict): resolution, backend, providers, mda_available, mda_status.
        recording_changed(bool, str): recording on/off and the file path / error message.
        virtual_camera_changed(bool, str): virtual camera on/off and a message.
        finished(): the loop has ended (after :meth:`stop`, or when the avatar cannot load).
    """

    frame_ready = Signal(object)
    status = Signal(str, str)
    runtime_ready = Signal(object)
    recording_changed = Signal(bool, str)
    virtual_camera_changed = Signal(bool, str)
    finished = Signal()

    def __init__(self, runtime_factory: Callable[[], object],
                 source_factory: Callable[[object], object] = open_source, retry_s: float = 1.0,
                 loop: bool = False, realtime: bool = True, max_source_failures: int | None = None):
        super().__init__()
        self.max_source_failures = max_source_failures
        self.runtime_factory = runtime_factory
        self.source_factory = source_factory
        self.retry_s = retry_s
        self.loop = loop
        self.realtime = realtime
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pending_source = None
        self._has_pending = False
        self.overlay = False
        self.mda = False
        self.lower_body: str | None = None
        self._record_request: tuple[str, str | None] | None = None  # ("start", path) | ("stop", None)
        self._vcam_request: bool | None = None
        self.output = OutputSettings()
        self._output_request: OutputSettings | None = None
        self.key_colour = DEFAULT_KEY
        #: the last frame sent to the virtual camera (what OBS receives), for tests and checks
        self.last_vcam_frame: np.ndarray | None = None
        self.runtime = None
        self.reader: LatestFrameReader | None = None
        self.frames = 0
        self.errors = 0
        self.fps = 0.0

    # -- controls (any thread) ----------------------------------------------------------------
    def set_source(self, spec) -> None:
        """Switch to another source (webcam index or file); restarts tracking."""
        with self._lock:
            self._pending_source, self._has_pending = spec, True

    def set_overlay(self, on: bool) -> None:
        self.overlay = bool(on)

    def set_mda(self, on: bool) -> None:
        self.mda = bool(on)

    def set_lower_body(self, mode: str) -> None:
        """``stand`` | ``sit``: the pose of legs that are not in view (from the next frame)."""
        self.lower_body = str(mode)
        if self.runtime is not None:
            self.runtime.set_lower_body(self.lower_body)

    def start_recording(self, path: str | Path) -> None:
        with self._lock:
            self._record_request = ("start", str(path))

    def stop_recording(self) -> None:
        with self._lock:
            self._record_request = ("stop", None)

    def set_virtual_camera(self, on: bool) -> None:
        with self._lock:
            self._vcam_request = bool(on)

    def set_output(self, settings: OutputSettings) -> None:
        """Framing, zoom, offset, size and background of the output (validated
        :class:`~ram_avatar.render.framing.OutputSettings`), from the next frame."""
        with self._lock:
            self._output_request = settings

    def set_key_colour(self, rgb) -> None:
        """Key colour (r, g, b 0..255) behind a transparent avatar on the virtual camera."""
        self.key_colour = tuple(int(v) for v in rgb)

    def stop(self) -> None:
        """Ask the loop to end (returns at once; the thread finishes within ~0.1 s + one frame)."""
        self._stop.set()

    # -- loop (worker thread) -----------------------------------------------------------------
    @Slot()
    def run(self) -> None:
        self.status.emit("info", "loading the avatar ...")
        try:
            self.runtime = self.runtime_factory()
        except Exception as e:  # noqa: BLE001 - shown to the user, the window stays usable
            log.exception("cannot load the avatar")
            self.status.emit("error", f"cannot load the avatar: {e}")
            self.finished.emit()
            return
        rt = self.runtime
        if self.lower_body is not None:
            rt.set_lower_body(self.lower_body)
        self.runtime_ready.emit({
            "resolution": rt.resolution, "backend": rt.engine.name,
            "providers": list(getattr(rt.engine, "providers", [])),
            "mda_available": rt.mda_available, "mda_status": rt.mda_status})
        self.status.emit("info", "avatar loaded; waiting for a source")
        with self._lock:
            if self._output_request is None and self.output != OutputSettings():
                self._output_request = self.output
        writer = vcam = None
        last_seq = 0
        last_done = None
        pipe: LivePipeline | None = None
        pending_frames: dict[int, np.ndarray] = {}  # submitted frames by pipeline number (previews)
        frame = None
        try:
            while not self._stop.is_set():
                with self._lock:
                    pending, has_pending = self._pending_source, self._has_pending
                    self._has_pending = False
                    rec, self._record_request = self._record_request, None
                    vreq, self._vcam_request = self._vcam_request, None
                    oreq, self._output_request = self._output_request, None
                if oreq is not None:
                    self._apply_output(oreq)
                if rec is not None:
                    writer = self._handle_record(rec, writer)
                if vreq is not None:
                    vcam = self._handle_vcam(vreq, vcam)
                if has_pending:
                    if self.reader is not None:
                        self.reader.stop()
                    if pipe is not None:
                        pipe.stop()
                    rt.reset()
                    pipe = LivePipeline(rt).start()
                    pending_frames.clear()
                    last_seq, last_done = 0, None
                    self.reader = LatestFrameReader(
                        lambda spec=pending: self.source_factory(spec), retry_s=self.retry_s,
                        loop=self.loop, realtime=self.realtime, on_status=self._reader_status,
                        max_failures=self.max_source_failures).start()
                if self.reader is None:
                    self._stop.wait(0.05)
                    continue
                item = self.reader.get(timeout=0.01, after=last_seq)
                if item is not None:
                    last_seq, frame = item
                    if rt.mda_enabled != (self.mda and rt.mda_available):
                        rt.set_mda(self.mda)
                    rt.want_landmarks = self.overlay
                    n = pipe.submit(frame)
                    pending_frames[n] = frame
                    for k in [k for k in pending_frames if k < n - 8]:
                        del pending_frames[k]
                res = pipe.get(timeout=0.0 if item is not None else 0.02)
                if res is None:
                    continue
                img, stats = res
                frame = pending_frames.get(stats.get("seq"), frame)
                if img is None:  # a stage failed on this frame: report, keep going
                    self.errors += 1
                    self.status.emit("error", f"processing a frame failed: {stats.get('error')}")
                    continue
                now = time.perf_counter()
                if last_done is not None:
                    inst = 1.0 / max(now - last_done, 1e-6)
                else:
                    inst = 1000.0 / max(stats["total"], 1e-3)
                self.fps = inst if self.frames == 0 else 0.8 * self.fps + 0.2 * inst
                last_done = now
                self.frames += 1
                if writer is not None:
                    writer = self._record_frame(writer, img)
                if vcam is not None:
                    vcam = self._send_vcam(vcam, img)
                self.frame_ready.emit(self._packet(img, frame, stats))
        finally:
            if pipe is not None:
                pipe.stop()
            if self.reader is not None:
                self.reader.stop()
            if writer is not None:
                self._close_writer(writer)
            if vcam is not None:
                _close_quietly(vcam)
            try:
                rt.close()  # the pipeline's maps thread released its moderngl context
            except Exception:  # noqa: BLE001
                log.debug("closing the runtime failed", exc_info=True)
            self.finished.emit()

    def _apply_output(self, settings: OutputSettings) -> None:
        rt = self.runtime
        if settings == getattr(rt, "output", None) or (settings == OutputSettings()
                                                       and not hasattr(rt, "set_output")):
            self.output = settings
            return
        try:
            rt.set_output(settings)
        except Exception as e:  # noqa: BLE001 - shown to the user, the old settings stay
            self.status.emit("error", f"cannot use the output settings: {e}")
            return
        self.output = settings
        mode = settings.framing or "rendered square"
        self.status.emit("info", f"output: {mode}, background {settings.spec}"
                         + (f", zoom {settings.zoom:g} ({settings.zoom_mode})" if settings.framing else ""))

    def _reader_status(self, level: str, message: str) -> None:
        self.status.emit(level, message)

    def _packet(self, img: np.ndarray, frame: np.ndarray, stats: dict) -> dict:
        rt = self.runtime
        last = rt.last
        h, w = frame.shape[:2]
        s = PREVIEW_WIDTH / w
        preview = cv2.resize(frame, (PREVIEW_WIDTH, max(1, int(round(h * s)))), interpolation=cv2.INTER_AREA)
        display = display_frame(img)
        if self.overlay:
            preview = draw_keypoints(preview, last.keypoints, scale=s)
            box, size = stats.get("box"), (img.shape[1], img.shape[0])
            display = draw_skeleton(display, to_output_pixels(last.avatar_pose_2d, box, size),
                                    last.pose_mask, to_output_pixels(last.avatar_hands_2d, box, size))
        return {"avatar": display, "output": img, "preview": preview, "stats": stats, "fps": self.fps,
                "frames": self.frames, "dropped": self.reader.frames_dropped if self.reader else 0,
                "person": bool(stats.get("person"))}

    # -- recording / virtual camera -----------------------------------------------------------
    def _handle_record(self, request, writer):
        kind, path = request
        if writer is not None:
            self._close_writer(writer)
        writer = None
        if kind == "start":
            suffix = Path(path).suffix.lower()
            if suffix not in (".mp4",) + ALPHA_SUFFIXES:
                self.recording_changed.emit(False, f"cannot record to {path}: use .mp4 (H.264), "
                                                   ".webm (VP9 with alpha) or .mov (ProRes 4444)")
                return None
            if self.output.has_alpha and suffix not in ALPHA_SUFFIXES:
                self.recording_changed.emit(
                    False, f"cannot record a transparent avatar to {Path(path).name}: .mp4 has no "
                           f"alpha; record to {Path(path).with_suffix('.webm').name} (VP9, for "
                           "OBS) or .mov (ProRes 4444)")
                return None
            fps = max(1, int(round(self.fps))) if self.fps > 0 else 25
            writer = _PendingRecording(str(path), fps)  # opened at the first frame's size
            self.recording_changed.emit(True, f"recording to {path} at {fps} fps")
        return writer

    def _open_writer(self, pending: "_PendingRecording", img: np.ndarray):
        from ram_avatar.capture.video import AlphaVideoWriter, VideoWriter

        alpha = Path(pending.path).suffix.lower() in ALPHA_SUFFIXES
        if img.shape[2] == 4 and not alpha:  # the background became transparent meanwhile
            raise ValueError("the output became transparent: .mp4 has no alpha")
        Writer = AlphaVideoWriter if alpha else VideoWriter
        return Writer(pending.path, pending.fps, (img.shape[1], img.shape[0])).__enter__()

    def _record_frame(self, writer, img):
        try:
            if isinstance(writer, _PendingRecording):
                writer = self._open_writer(writer, img)
            from ram_avatar.capture.video import AlphaVideoWriter

            alpha = isinstance(writer, AlphaVideoWriter)
            if alpha and img.shape[2] == 3:
                img = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], 2)
            elif not alpha and img.shape[2] == 4:
                raise ValueError("the output became transparent: .mp4 has no alpha")
            writer.write(letterbox(img, writer.size))
            return writer
        except Exception as e:  # noqa: BLE001
            self.recording_changed.emit(False, f"recording stopped: {e}")
            _close_quietly(writer, error=e)
            return None

    def _close_writer(self, writer) -> None:
        if isinstance(writer, _PendingRecording):
            self.recording_changed.emit(False, f"nothing recorded to {writer.path}")
            return
        try:
            if writer.frames_written == 0:
                writer.__exit__(RuntimeError, RuntimeError("no frames"), None)  # discard the file
                self.recording_changed.emit(False, f"nothing recorded to {writer.path}")
            else:
                writer.__exit__(None, None, None)
                self.recording_changed.emit(False, f"saved {writer.frames_written} frames to {writer.path}")
        except Exception as e:  # noqa: BLE001
            self.recording_changed.emit(False, f"saving {writer.path} failed: {e}")

    def _handle_vcam(self, on: bool, vcam):
        if vcam is not None:
            _close_quietly(vcam)
            vcam = None
        if not on:
            self.virtual_camera_changed.emit(False, "virtual camera off")
            return None
        ok, why = virtual_camera_available()
        if not ok:
            self.virtual_camera_changed.emit(False, why)
            return None
        return _PendingCamera()  # opened at the first frame's size

    def _open_vcam(self, img: np.ndarray):
        import pyvirtualcam

        h, w = img.shape[:2]
        fps = max(1, int(round(self.fps))) if self.fps > 0 else 30
        try:
            vcam = pyvirtualcam.Camera(width=w, height=h, fps=fps, fmt=pyvirtualcam.PixelFormat.RGB)
        except Exception as e:  # noqa: BLE001 - no v4l2loopback / OBS backend, ...
            self.virtual_camera_changed.emit(False, f"virtual camera unavailable: {e}")
            return None
        key = "#%02X%02X%02X" % tuple(self.key_colour)
        self.virtual_camera_changed.emit(
            True, f"virtual camera on: {vcam.device} {w}x{h}"
                  + (f", transparent parts keyed in {key}" if self.output.has_alpha else ""))
        return vcam

    def _send_vcam(self, vcam, img):
        if isinstance(vcam, _PendingCamera):
            vcam = self._open_vcam(img)
            if vcam is None:
                return None
        try:
            frame = virtual_camera_frame(img, (vcam.width, vcam.height), self.key_colour)
            vcam.send(frame)
            self.last_vcam_frame = frame
            return vcam
        except Exception as e:  # noqa: BLE001
            self.virtual_camera_changed.emit(False, f"virtual camera stopped: {e}")
            _close_quietly(vcam)
            return None


class _PendingRecording:
    """A requested recording, opened at the first frame (its size is the output's)."""

    def __init__(self, path: str, fps: int):
        self.path, self.fps = path, fps


class _PendingCamera:
    """A requested virtual camera, opened at the first frame (its size is the output's)."""

    def close(self) -> None:
        pass


def _close_quietly(obj, error: BaseException | None = None) -> None:
    try:
        if hasattr(obj, "close"):
            obj.close()
        elif error is not None:
            obj.__exit__(type(error), error, None)
        else:
            obj.__exit__(None, None, None)
    except Exception:  # noqa: BLE001
        log.debug("closing %r failed", obj, exc_info=True)
