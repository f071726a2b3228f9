"""Video decoding, probing and H.264 writing with PyAV.

All frames handled here are RGB ``uint8`` arrays of shape ``(H, W, 3)`` (H rows, W columns,
pixels), upright: the stream's display matrix (the rotation/mirroring a phone records instead of
turning its pixels, which every player applies) is applied when decoding, exactly as FFmpeg's
``ffmpeg``/``ffplay`` apply it (``fftools`` ``autorotate``), so sizes, camera intrinsics,
keypoints and overlays are all in the upright frame. Frame indices count decoded frames from 0
in presentation order. Every failure a user
can fix (missing file, not a video, truncated download, no video stream) raises
:class:`ram_avatar.errors.VideoError` with a message that says what was wrong and what to do.

Example::

    info = probe_video("me.mp4")            # VideoInfo(fps=23.976..., frame_count=412, ...)
    for rgb in iter_frames("me.mp4", start=10, end=20):
        ...                                 # (H, W, 3) uint8
    with VideoWriter("out.mp4", info.fps, (info.width, info.height)) as w:
        w.write(rgb)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from ram_avatar.errors import VideoError
from ram_avatar.utils import atomic_path

log = logging.getLogger(__name__)

__all__ = ["VideoInfo", "probe_video", "iter_frames", "read_frames", "VideoWriter",
           "AlphaVideoWriter", "fps_to_fraction"]

_FIX_HINT = ("re-export or re-copy the video (for example `ffmpeg -i in.mov -c:v libx264 "
             "-pix_fmt yuv420p out.mp4`)")


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found out about a video file.

    Attributes:
        path: the probed file.
        fps: average frame rate in frames per second (the stream's ``average_rate``,
            e.g. 23.976023976 for 24000/1001).
        frame_count: number of frames that can actually be decoded (counted by demuxing the
            stream's packets, leaving out packets that are cut off or marked discardable),
            which is what :func:`iter_frames` yields for the whole file.
        width: frame width W in pixels, upright (after the display rotation).
        height: frame height H in pixels, upright.
        duration_s: ``frame_count / fps`` in seconds.
        rotation: counter-clockwise quarter turns x 90 (0, 90, 180, 270) applied to the stored
            pixels to show them upright (from the stream's display matrix).
        mirrored: a left-right mirror is applied after that rotation.
    """

    path: Path
    fps: float
    frame_count: int
    width: int
    height: int
    duration_s: float
    rotation: int = 0
    mirrored: bool = False


def _display_orientation(matrix) -> tuple[int, bool]:
    """Upright transform of a display matrix as (counter-clockwise quarter turns k, mirror).

    ``matrix``: FFmpeg's 9 int32 ``AV_FRAME_DATA_DISPLAYMATRIX`` (16.16 fixed point). The cases
    follow FFmpeg's ``fftools`` (``get_rotation`` + the ``transpose``/``hflip``/``vflip`` filters
    it inserts), so the picture comes out as FFmpeg-based players show it; the returned pair
    means ``fliplr(rot90(stored, k))`` when mirror, else ``rot90(stored, k)``. Angles that are
    not a multiple of 90 degrees are rounded to the nearest one (with a warning).
    """
    m = [int(v) for v in matrix]
    a, b, c, d = (v / 65536.0 for v in (m[0], m[1], m[3], m[4]))
    sx, sy = math.hypot(a, c), math.hypot(b, d)
    if sx == 0 or sy == 0:
        return 0, False
    # av_display_rotation_get() is counter-clockwise; fftools' get_rotation() is clockwise
    theta = -round(-math.degrees(math.atan2(b / sy, a / sx)))
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:                      # transpose=cclock_flip | clock
        return (3, True) if m[3] > 0 else (3, False)
    if abs(theta - 180) < 1:                     # hflip and/or vflip
        h, v = m[0] < 0, m[4] < 0
        return {(True, True): (2, False), (True, False): (0, True),
                (False, True): (2, True), (False, False): (0, False)}[(h, v)]
    if abs(theta - 270) < 1:                     # transpose=clock_flip | cclock
        return (1, True) if m[3] < 0 else (1, False)
    if abs(theta) < 1 or abs(theta - 360) < 1:   # vflip only
        return (2, True) if m[4] < 0 else (0, False)
    k = int(round(theta / 90.0)) % 4
    log.warning("display rotation of %.1f degrees is not a multiple of 90; showing the video "
                "rotated by %d degrees instead", theta, 90 * k)
    return (-k) % 4, False


def _frame_orientation(frame: av.VideoFrame) -> tuple[int, bool]:
    """(k, mirror) of :func:`_display_orientation` for a decoded frame (identity without a
    display matrix)."""
    try:
        sd = frame.side_data.get("DISPLAYMATRIX")
    except Exception:  # noqa: BLE001 - no side data support / unreadable entry
        sd = None
    if sd is None:
        return 0, False
    raw = bytes(sd)
    if len(raw) < 36:
        return 0, False
    return _display_orientation(np.frombuffer(raw[:36], dtype=np.int32))


def _to_rgb(frame: av.VideoFrame, orientation: tuple[int, bool]) -> np.ndarray:
    """Decoded frame -> upright (H, W, 3) uint8 RGB, ``orientation`` the stream's (k, mirror)
    of :func:`_frame_orientation`."""
    rgb = frame.to_ndarray(format="rgb24")
    k, mirror = orientation
    if k:
        rgb = np.rot90(rgb, k)
    if mirror:
        rgb = rgb[:, ::-1]
    return np.ascontiguousarray(rgb) if (k or mirror) else rgb


def _open_input(path: str | os.PathLike
                ) -> tuple[av.container.InputContainer, av.video.VideoStream]:
    """Open ``path`` and return (container, first video stream); VideoError on any failure."""
    path = Path(path)
    if not path.exists():
        raise VideoError(f"video file not found: {path} — check the path (it is resolved "
                         f"relative to {Path.cwd()}).")
    if not path.is_file():
        raise VideoError(f"{path} is not a file; pass the path of a video file such as a .mp4.")
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise VideoError(
            f"cannot open {path} as a video ({e.__class__.__name__}: {e}); the file is not a "
            f"video, is corrupt, or was only partly downloaded/copied — {_FIX_HINT}."
        ) from e
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path} has no video stream (is it an audio or image file?); "
                         f"record or export a video with a picture track.")
    stream = container.streams.video[0]
    if not stream.width or not stream.height:
        container.close()
        raise VideoError(f"the video stream of {path} reports no frame size; {_FIX_HINT}.")
    return container, stream


def _stream_rate(stream: av.video.VideoStream, path: Path) -> Fraction:
    """Average frame rate of ``stream`` as a Fraction (falls back to the guessed/base rate)."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    raise VideoError(f"{path} has no frame rate in its video stream; {_FIX_HINT}.")


def _decodes_a_frame(decode, path: Path) -> list:
    """Run ``decode()``; the frames it returned (empty: none yet), VideoError on a decoder
    error."""
    try:
        return list(decode())
    except av.error.FFmpegError as e:
        raise VideoError(
            f"{path}: decoding the first frame failed ({e}); the file is corrupt or truncated "
            f"(it may have been only partly downloaded) — {_FIX_HINT}."
        ) from e


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read the frame rate, size and real frame count of a video, and check it decodes.

    The frame count is obtained by demuxing the packets of the video stream (cheap: only the
    first frame is decoded, to make sure the codec works), counting packets that hold a frame
    and are not marked discardable by an edit list (``is_discard``), up to the first packet
    that is cut off by the end of a truncated file or damaged (``is_corrupt``). So
    ``frame_count`` is exactly the number of frames :func:`iter_frames` can yield. When it is
    smaller than the count the container header claims, a warning is logged (the file is
    probably truncated) and the real count is returned.

    Args:
        path: video file (any container/codec FFmpeg reads).

    Returns:
        :class:`VideoInfo`.

    Raises:
        VideoError: the file is missing, is not a video / is corrupt, has no video stream or
            has no decodable frame.
    """
    path = Path(path)
    container, stream = _open_input(path)
    with contextlib.closing(container):
        rate = _stream_rate(stream, path)
        width, height = int(stream.width), int(stream.height)
        header_count = int(stream.frames or 0)

        # One pass over the packets: count them, and decode from the start until the first
        # frame comes out (proves the codec can produce pictures from this file). Counting
        # stops at the first cut-off/damaged packet, where iter_frames stops too.
        count = 0
        truncated = False
        got_frame: list = []
        try:
            for packet in container.demux(stream):
                if packet.size and packet.is_corrupt:
                    truncated = True
                    break
                if not got_frame:
                    got_frame = _decodes_a_frame(packet.decode, path)
                if packet.size and not packet.is_discard:  # skip flush / edit-list-discarded
                    count += 1
        except av.error.FFmpegError as e:
            log.warning("%s: reading stopped after %d packets (%s)", path, count, e)
            truncated = True
        if not got_frame and truncated:
            got_frame = _decodes_a_frame(lambda: stream.codec_context.decode(None), path)  # flush
        if not got_frame:
            raise VideoError(
                f"{path} contains no decodable video frames; it is empty, corrupt or was cut "
                f"off before the end of the first frame — {_FIX_HINT}.")
        k, mirror = _frame_orientation(got_frame[0])
    if k % 2:
        width, height = height, width
    if k or mirror:
        log.info("%s: stored %s with a display rotation of %d degrees%s; decoding it upright "
                 "(%dx%d)", path, "sideways" if k % 2 else "rotated", 90 * k,
                 " and a mirror" if mirror else "", width, height)
    if truncated or (header_count and count < header_count):
        log.warning("%s: the header lists %d frames but only the first %d are complete; the "
                    "file looks truncated — using those %d frames", path, header_count, count,
                    count)
    fps = float(rate)
    return VideoInfo(path=path, fps=fps, frame_count=count, width=width, height=height,
                     duration_s=count / fps, rotation=90 * k, mirrored=mirror)


def iter_frames(path: str | os.PathLike, start: int = 0, end: int | None = None
                ) -> Iterator[np.ndarray]:
    """Decode frames ``start <= i < end`` of a video as RGB arrays, in order.

    Frames before ``start`` are decoded and skipped (exact frame indices, no keyframe
    seeking), so a large ``start`` costs decoding time.

    Args:
        path: video file.
        start: index of the first frame to yield (>= 0).
        end: index one past the last frame to yield; None reads to the end of the stream.

    Yields:
        (H, W, 3) uint8 RGB frames, upright (the stream's display rotation/mirror applied).

    Raises:
        VideoError: the file cannot be opened (see :func:`probe_video`); decoding fails part
            way (truncated or corrupt file — the message names the frame index); or ``end`` is
            past the last frame of the video.
        ValueError: ``start`` < 0 or ``end`` < ``start``.
    """
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"invalid frame range [{start}, {end})")
    path = Path(path)
    if end is not None and end == start:
        return
    container, stream = _open_input(path)
    stream.thread_type = "AUTO"  # frame + slice threading; frames still come out in order
    with contextlib.closing(container):
        header_count = int(stream.frames or 0)
        of_total = f" of {header_count}" if header_count else ""
        index = 0  # index of the next frame the decoder will return
        failure: str | None = None
        # the display matrix is read from the first frame only: reading a frame's side data
        # in PyAV keeps that frame's buffers alive until the cyclic garbage collector runs,
        # 1 GB of 1080p frames (2 GB at 4K over 150 frames) when read for every frame
        orientation: tuple[int, bool] | None = None
        packets = container.demux(stream)
        while failure is None:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as e:
                failure = f"reading the file failed ({e})"
                break
            if packet.size and packet.is_corrupt:
                # A packet cut off by the end of the file (or damaged): stop here. Threaded
                # decoding would silently drop it, so check the flag instead of relying on it.
                failure = "the next frame's data is cut off or damaged"
                break
            try:
                frames = packet.decode()  # the final empty packet flushes the decoder
            except av.error.FFmpegError as e:
                failure = f"the decoder reported: {e}"
                break
            for frame in frames:
                if orientation is None:
                    orientation = _frame_orientation(frame)
                if index >= start:
                    yield _to_rgb(frame, orientation)
                index += 1
                if end is not None and index >= end:
                    return
        if failure is not None:
            # Emit the good frames still buffered in the decoder, so `index` is exact.
            try:
                buffered = stream.codec_context.decode(None)
            except av.error.FFmpegError:
                buffered = []
            for frame in buffered:
                if orientation is None:
                    orientation = _frame_orientation(frame)
                if index >= start:
                    yield _to_rgb(frame, orientation)
                index += 1
                if end is not None and index >= end:
                    return
            raise VideoError(
                f"{path}: decoding failed at frame {index}{of_total}: {failure}. The file is "
                f"truncated or corrupt (it may have been only partly downloaded/copied). "
                + (f"Frames 0..{index - 1} are readable (pass end={index} to use only them), "
                   f"or {_FIX_HINT}." if index else f"No frame is readable: {_FIX_HINT}.")
            )
    if end is not None and index < end:
        raise VideoError(f"{path} has only {index} frames, but frames [{start}, {end}) were "
                         f"requested; use end <= {index} (see probe_video(path).frame_count).")
    if header_count and index < header_count:
        log.warning("%s: stream ended after %d frames but the header lists %d; the file may be "
                    "truncated", path, index, header_count)


def read_frames(path: str | os.PathLike, start: int = 0, end: int | None = None) -> np.ndarray:
    """Decode frames ``[start, end)`` into one array.

    Returns:
        (T, H, W, 3) uint8 RGB, T = number of frames read (memory: T*H*W*3 bytes).

    Raises:
        VideoError: as :func:`iter_frames`, or when the range holds no frame.
    """
    frames = list(iter_frames(path, start, end))
    if not frames:
        raise VideoError(f"{path}: no frames in the range [{start}, {end}); the video has "
                         f"{probe_video(path).frame_count} frames.")
    return np.stack(frames)


_NTSC_BASES = (24, 30, 48, 60, 120, 240)


def fps_to_fraction(fps: float | int | Fraction) -> Fraction:
    """Exact frame rate for a float fps: NTSC rates snap to k*1000/1001.

    ``23.976`` / ``23.976023976`` -> 24000/1001, ``29.97`` -> 30000/1001, ``30`` -> 30,
    ``12.5`` -> 25/2; a Fraction is returned unchanged.

    Raises:
        ValueError: fps is not a positive finite number.
    """
    if isinstance(fps, Fraction):
        rate = fps
    else:
        fps_f = float(fps)
        if not np.isfinite(fps_f) or fps_f <= 0:
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        rate = None
        for base in _NTSC_BASES:
            ntsc = Fraction(base * 1000, 1001)
            if abs(fps_f - float(ntsc)) < 1e-3 * base / 24:
                rate = ntsc
                break
        if rate is None:
            rate = Fraction(fps_f).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return rate


class VideoWriter:
    """Write RGB frames to an H.264 (libx264, yuv420p) MP4 at an exact frame rate, atomically.

    Frames go to a temporary file next to ``path`` that is renamed to ``path`` only when the
    ``with`` block exits without an exception (and at least one frame was written); otherwise
    the temporary file is deleted and ``path`` is left untouched.

    yuv420p needs even dimensions: an odd width/height is padded by one pixel at the right /
    bottom edge (edge pixels repeated), so pixel coordinates of the content are unchanged;
    :attr:`encoded_size` gives the size actually written.

    Args:
        path: output .mp4 path.
        fps: frame rate; floats such as 23.976 snap to 24000/1001 (see :func:`fps_to_fraction`),
            a Fraction is used as is.
        size: (W, H) in pixels of the frames that will be written.
        crf: x264 constant rate factor (0 lossless .. 51; 18 is visually lossless).
        preset: x264 preset (speed/size trade-off).

    Example::

        with VideoWriter("out.mp4", 30, (640, 480)) as w:
            for rgb in frames:          # (480, 640, 3) uint8
                w.write(rgb)

    Raises:
        ValueError: bad size/fps, or a frame of the wrong shape/dtype in :meth:`write`.
        VideoError: the encoder fails, or the writer is closed without any frame.
    """

    #: colour channels of a frame, PyAV frame format, and their name in error messages
    _CHANNELS, _FRAME_FORMAT, _FRAME_KIND = 3, "rgb24", "RGB"
    #: the error of a write outside ``with``
    _NOT_OPEN = "use VideoWriter as a context manager: `with VideoWriter(...) as w`"

    def __init__(self, path: str | os.PathLike, fps: float | Fraction, size: tuple[int, int],
                 crf: int = 18, preset: str = "medium"):
        width, height = (int(v) for v in size)
        if width <= 0 or height <= 0:
            raise ValueError(f"size must be positive (W, H), got {size!r}")
        self.path = Path(path)
        self.rate = fps_to_fraction(fps)
        self.size = (width, height)
        self.encoded_size = (width + width % 2, height + height % 2)
        self.crf = int(crf)
        self.preset = preset
        self.frames_written = 0
        self._stack: contextlib.ExitStack | None = None
        self._container = None
        self._stream = None
        if self.encoded_size != self.size:
            log.info("%s: padding %dx%d frames to even size %dx%d for yuv420p", self.path,
                     width, height, *self.encoded_size)

    def _stream_settings(self) -> tuple[str, str, str, dict]:
        """(container format, codec, pixel format, codec options) of the output."""
        return "mp4", "libx264", "yuv420p", {"crf": str(self.crf), "preset": self.preset}

    def __enter__(self) -> "VideoWriter":
        if self._stack is not None:
            raise RuntimeError(f"{type(self).__name__} is already open")
        container_format, codec, pix_fmt, options = self._stream_settings()
        stack = contextlib.ExitStack()
        try:
            tmp = stack.enter_context(atomic_path(self.path))
            container = av.open(str(tmp), mode="w", format=container_format)
            stack.callback(container.close)
            stream = container.add_stream(codec, rate=self.rate)
            stream.width, stream.height = self.encoded_size
            stream.pix_fmt = pix_fmt
            stream.codec_context.time_base = 1 / self.rate
            stream.options = options
        except BaseException as e:
            stack.__exit__(type(e), e, e.__traceback__)
            if isinstance(e, av.error.FFmpegError):
                raise VideoError(f"cannot create video {self.path}: {e}") from e
            raise
        self._stack, self._container, self._stream = stack, container, stream
        return self

    def write(self, frame: np.ndarray) -> None:
        """Encode one frame.

        Args:
            frame: (H, W, 3) uint8 RGB with (W, H) equal to ``size``.

        Raises:
            ValueError: wrong shape or dtype. RuntimeError: writer not opened with ``with``.
        """
        if self._stream is None:
            raise RuntimeError(self._NOT_OPEN)
        frame = np.asarray(frame)
        width, height = self.size
        if frame.dtype != np.uint8 or frame.shape != (height, width, self._CHANNELS):
            raise ValueError(f"expected a ({height}, {width}, {self._CHANNELS}) uint8 {self._FRAME_KIND} "
                             f"frame, got {frame.shape} {frame.dtype}")
        pad_w, pad_h = self.encoded_size[0] - width, self.encoded_size[1] - height
        if pad_w or pad_h:
            frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format=self._FRAME_FORMAT)
        video_frame.pts = self.frames_written
        video_frame.time_base = 1 / self.rate
        try:
            for packet in self._stream.encode(video_frame):
                self._container.mux(packet)
        except av.error.FFmpegError as e:
            raise VideoError(
                f"encoding frame {self.frames_written} of {self.path} failed: {e}") from e
        self.frames_written += 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        stack, self._stack = self._stack, None
        try:
            if exc_type is None:
                try:
                    if self.frames_written == 0:
                        raise VideoError(f"no frames were written to {self.path}; nothing saved.")
                    for packet in self._stream.encode(None):  # flush delayed (B-)frames
                        self._container.mux(packet)
                except BaseException as e:
                    stack.__exit__(type(e), e, e.__traceback__)
                    if isinstance(e, av.error.FFmpegError):
                        raise VideoError(f"finishing video {self.path} failed: {e}") from e
                    raise
                stack.close()  # closes the container, then renames the temp file onto path
                log.debug("wrote %d frames to %s", self.frames_written, self.path)
            else:
                stack.__exit__(exc_type, exc, tb)  # closes the container, deletes the temp file
        finally:
            self._container = self._stream = None
        return False


class AlphaVideoWriter(VideoWriter):
    """Write straight (non-premultiplied) RGBA frames to a video with an alpha channel, atomically.

    The codec follows the file suffix, the two formats OBS's media source plays with
    transparency:

    - ``.webm``: VP9 (``libvpx-vp9``, ``yuva420p``), the alpha plane coded as a second VP9
      stream in WebM's BlockAdditional. Decoders must be libvpx's: FFmpeg's native ``vp9``
      decoder drops the alpha (with PyAV: ``av.codec.CodecContext.create("libvpx-vp9", "r")``
      fed with the demuxed packets);
    - ``.mov``: ProRes 4444 (``prores_ks`` profile 4444, ``yuva444p10le``): large files,
      lossless-looking, alpha decoded by FFmpeg's native ``prores`` decoder.

    Like :class:`VideoWriter` the file appears only when the ``with`` block ends without an
    exception and with at least one frame; odd sizes are padded by one pixel (edge pixels
    repeated, alpha included) for the 4:2:0 chroma of VP9.

    Args:
        path: output ``.webm`` or ``.mov``.
        fps: frame rate (as :class:`VideoWriter`).
        size: (W, H) pixels of the frames.
        crf: VP9 constant quality (0..63, lower = better; 20 default). Unused for ProRes.

    Raises:
        ValueError: another suffix, bad size/fps, or a frame that is not (H,W,4) uint8 in
            :meth:`write`.
        VideoError: the encoder fails, or the writer is closed without any frame.
    """

    _CHANNELS, _FRAME_FORMAT, _FRAME_KIND = 4, "rgba", "RGBA"
    _NOT_OPEN = "use AlphaVideoWriter as a context manager"
    #: suffix -> (container format, codec, pixel format, codec options)
    FORMATS = {
        ".webm": ("webm", "libvpx-vp9", "yuva420p",
                  {"deadline": "good", "cpu-used": "4", "row-mt": "1", "auto-alt-ref": "0",
                   "b": "0"}),
        ".mov": ("mov", "prores_ks", "yuva444p10le", {"profile": "4444", "vendor": "apl0"}),
    }

    def __init__(self, path: str | os.PathLike, fps: float | Fraction, size: tuple[int, int],
                 crf: int = 20):
        suffix = Path(path).suffix.lower()
        if suffix not in self.FORMATS:
            raise ValueError(f"a video with alpha must be .webm (VP9) or .mov (ProRes 4444), "
                             f"got {Path(path).name}")
        super().__init__(path, fps, size, crf=crf)
        self.container_format, self.codec, self.pix_fmt, options = self.FORMATS[suffix]
        self.options = dict(options)
        if self.codec == "libvpx-vp9":
            self.options["crf"] = str(self.crf)

    def _stream_settings(self) -> tuple[str, str, str, dict]:
        """(container format, codec, pixel format, codec options) of the suffix's format."""
        return self.container_format, self.codec, self.pix_fmt, self.options

    def write(self, frame: np.ndarray) -> None:
        """Encode one frame: (H, W, 4) uint8 straight RGBA with (W, H) equal to ``size``.

        Raises:
            ValueError: wrong shape or dtype. RuntimeError: writer not opened with ``with``.
        """
        super().write(frame)
