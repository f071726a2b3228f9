"""Framing of rendered avatar frames into a 16:9 output: ``--framing full|upper|head``.

The renderer draws the avatar in its training crop, a square of ``S x S`` pixels. A streamer's
output is a wider frame (1280x720 by default, the usual virtual-camera size) that shows the whole
person, the upper body (head to a bit below the hips) or head and shoulders. This module:

- :func:`framing_box`: the box to show, in rendered-frame pixels, from the avatar's own pose
  landmarks projected into the rendered frame (MediaPipe pose-33 layout) and its silhouette's
  bounding box; ``zoom`` and ``offset`` adjust it;
- :class:`BoxSmoother`: a One-Euro filter (Casiez et al., CHI 2012) with a deadband on the box
  centre and height, so the virtual camera neither jitters nor lags behind real moves;
- :func:`compose_frame`: crop the box out of the rendered frame and resize it to the output
  (OpenCV), filling what lies outside the rendered square with a colour (RGB) or alpha 0 (RGBA);
- :class:`AvatarComposer`: rendered rgb + alpha -> the output image of one frame, background
  mode (:mod:`ram_avatar.render.composite`) then framing (used by ``drive`` and by the live
  runtime, :class:`ram_avatar.runtime.avatar_runtime.AvatarRuntime`);
- :class:`OutputSettings`: the validated ``--framing/--zoom/--offset/--out-size/--background/
  --zoom-mode`` of one output, shared by the live CLI, the app and the runtime;
- :func:`letterbox`: fit a frame into a fixed size (a recording or a virtual camera opened at
  another size).

Crop and upscale of the rendered frame is the baseline of issue 13 (``zoom_mode="crop"``). Where
the renderer was trained with scale augmentation, the same box can instead move the virtual camera
(``zoom_mode="camera"``): the maps are rendered with the intrinsics of a square view around the
box (:func:`camera_view`, :func:`box_intrinsics`), so the renderer draws the framed part at its
full resolution, and the box is then cut out of that view (:func:`box_in_view`).

Units: pixels of the rendered frame, x right and y down, pixel centres at integer + 0.5 in
continuous coordinates (a box ``(0, 0, S, S)`` is exactly the rendered square).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ram_avatar.errors import RamAvatarError
from ram_avatar.render.composite import (Background, compose_uint8, over_image,
                                         replace_background_uint8)

FRAMINGS = ("full", "upper", "head")
#: how the framing gets closer: crop + upscale of the rendered frame, or a closer virtual camera
ZOOM_MODES = ("crop", "camera")
#: default output size (W, H) in pixels: the usual virtual-camera size
DEFAULT_OUT_SIZE = (1280, 720)

# MediaPipe pose-33 landmark indices
NOSE, L_SHOULDER, R_SHOULDER, L_HIP, R_HIP = 0, 11, 12, 23, 24
#: face landmarks (nose, eyes, ears, mouth)
FACE = tuple(range(0, 11))
#: the landmarks each framing keeps inside its box
MODE_LANDMARKS = {
    "full": tuple(range(33)),
    "upper": tuple(range(0, 17)) + (L_HIP, R_HIP),  # head, shoulders, arms (wrists), hips
    "head": tuple(range(0, 13)),  # face and shoulders
}
#: head top above the nose, in units of the nose-to-shoulder-centre distance (adult
#: proportions: ~12 cm from the nose to the top of the skull, ~25 cm from the nose to the
#: shoulder line)
HEAD_TOP = 0.6
#: margins around the kept content, in units of the nose-to-shoulder-centre distance
MARGIN = {"full": 0.3, "upper": 0.2, "head": 0.25}
#: headroom above the estimated head top (hair, a tilted head), same unit
HEADROOM = 0.4
#: ``upper``: bottom edge below the hip centre, as a fraction of the torso (shoulder to hip)
UPPER_BELOW_HIPS = 0.15
#: ``head``: bottom edge below the shoulder line, in nose-to-shoulder distances
HEAD_BELOW_SHOULDERS = 0.6
#: torso length (shoulder centre to hip centre) in nose-to-shoulder distances, used when the
#: hips are unknown
TORSO_PER_NECK = 2.0
#: lower bound of the nose-to-shoulder unit as a fraction of the shoulder width (MediaPipe's
#: shoulder landmarks ~36 cm apart, nose ~25 cm above their centre upright: 0.6 stays below an
#: upright person's ratio and holds the scale when leaning towards the camera shrinks it)
NECK_PER_SHOULDER_WIDTH = 0.6


class FramingError(RamAvatarError, ValueError):
    """A framing option (mode, zoom, offset, output size) that cannot be used."""


def parse_out_size(spec: str | tuple[int, int]) -> tuple[int, int]:
    """``"1280x720"`` (or a (W, H) tuple) -> (W, H) positive even integers (video encoders need
    even sizes).

    Raises:
        FramingError: not ``WxH`` with positive even integers.
    """
    if isinstance(spec, str):
        parts = spec.lower().replace("*", "x").split("x")
        try:
            w, h = (int(p) for p in parts)
        except ValueError:
            raise FramingError(f"--out-size {spec!r}: give WIDTHxHEIGHT in pixels, e.g. 1280x720") from None
    else:
        w, h = (int(v) for v in spec)
    if w <= 0 or h <= 0 or w % 2 or h % 2:
        raise FramingError(f"--out-size {w}x{h}: width and height must be positive and even "
                           "(video encoders need even sizes), e.g. 1280x720")
    return w, h


def parse_offset(spec: str | tuple[float, float]) -> tuple[float, float]:
    """``"0.1,-0.05"`` -> (dx, dy): the shift of the box as fractions of its width and height.

    Raises:
        FramingError: not two finite numbers.
    """
    try:
        dx, dy = (float(v) for v in (spec.split(",") if isinstance(spec, str) else spec))
    except (ValueError, TypeError):
        raise FramingError(f"--offset {spec!r}: give X,Y as fractions of the box, e.g. 0,-0.1") from None
    if not (math.isfinite(dx) and math.isfinite(dy)):
        raise FramingError(f"--offset {spec!r}: X and Y must be finite numbers")
    return dx, dy


def check_framing(mode: str, zoom: float) -> None:
    """Raise :class:`FramingError` for an unknown ``mode`` or a non-positive ``zoom``."""
    if mode not in FRAMINGS:
        raise FramingError(f"--framing {mode!r}: use one of {', '.join(FRAMINGS)}")
    if not (math.isfinite(zoom) and zoom > 0):
        raise FramingError(f"--zoom {zoom}: must be a positive number (1 = the framing itself, "
                           "2 = twice as close)")


def mask_bbox(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Bounding box ``(x0, y0, x1, y1)`` in pixels (continuous: x1 = last column + 1) of a
    (H,W) boolean mask, or None when it is empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def project_landmarks(points: np.ndarray, K: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Project camera-frame landmarks to pixels, NaN where unknown.

    Args:
        points: (..., N, 3) metres in the OpenCV camera frame (e.g. ``BodyOutput.pose_landmarks``).
        K: (3, 3) intrinsics of the rendered frame (``crop_intrinsics``), pixels.
        valid: (N,) bool, False for landmarks the body model does not define
            (``BodyModel.pose_landmark_mask``).
    Returns:
        (..., N, 2) float64 pixels (pixel-centre convention of ``K``: +0.5 gives the continuous
        coordinates used by :func:`framing_box`; the half pixel is negligible for framing),
        NaN for invalid landmarks and points behind the camera.
    """
    P = np.asarray(points, np.float64)
    z = P[..., 2:3]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = P[..., :2] / z * np.array([K[0][0], K[1][1]]) + np.array([K[0][2], K[1][2]])
    bad = ~(z[..., 0] > 1e-6)
    if valid is not None:
        bad = bad | ~np.asarray(valid, bool)
    uv[bad] = np.nan
    return uv


def _finite(points: np.ndarray) -> np.ndarray:
    return points[np.isfinite(points).all(-1)]


def _mean(landmarks: np.ndarray, idx: tuple[int, ...]) -> np.ndarray | None:
    p = _finite(landmarks[list(idx)])
    return p.mean(0) if len(p) else None


def framing_box(mode: str, landmarks: np.ndarray | None, mask_bbox: tuple | None, frame_size: int,
                out_aspect: float = 16 / 9, zoom: float = 1.0,
                offset: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float, float, float]:
    """The part of the rendered frame to show for a framing mode.

    - ``full``: every known landmark, the estimated head top and the silhouette's box, with a
      margin;
    - ``upper``: from the head top to a bit below the hips (``UPPER_BELOW_HIPS`` of the torso),
      wide enough for the shoulders, elbows and wrists (a raised arm enlarges the box);
    - ``head``: head and shoulders (``HEAD_BELOW_SHOULDERS`` below the shoulder line).

    The scale unit is the nose-to-shoulder-centre distance (``u``, pixels; at least
    ``NECK_PER_SHOULDER_WIDTH`` times the shoulder width, so a lean towards the camera does not
    shrink the box), so the framing depends on the avatar's size in the frame, not on the
    frame. Horizontally the box is centred
    on the body axis (shoulder centre, else nose) and symmetric about it. The box is then widened
    (never narrowed) to ``out_aspect``, shrunk by ``zoom`` about its centre and shifted by
    ``offset`` times its size. The box may extend beyond the rendered square:
    :func:`compose_frame` fills the outside.

    Without the landmarks a mode needs (e.g. no shoulders), ``mask_bbox`` with a margin is used,
    and without either the whole rendered square.

    Args:
        mode: ``full``, ``upper`` or ``head``.
        landmarks: (33, 2) pixels of the avatar's pose landmarks in the rendered frame,
            MediaPipe pose layout, NaN where unknown; or None.
        mask_bbox: ``(x0, y0, x1, y1)`` pixels of the avatar's silhouette, or None.
        frame_size: S, the rendered square's side in pixels.
        out_aspect: width / height of the output (16/9).
        zoom: > 1 tightens the box (2 = twice as close), < 1 widens it.
        offset: (dx, dy) shift of the box as fractions of its width and height (+x right,
            +y down: (0, -0.1) moves the view up by a tenth of its height).
    Returns:
        ``(x0, y0, w, h)`` floats in rendered-frame pixels, ``w / h == out_aspect``.
    Raises:
        FramingError: unknown mode, zoom <= 0 or aspect <= 0.
    """
    check_framing(mode, zoom)
    if not out_aspect > 0:
        raise FramingError(f"output aspect {out_aspect} must be positive")
    lm = np.full((33, 2), np.nan) if landmarks is None else np.asarray(landmarks, np.float64).reshape(33, 2)
    bbox = None if mask_bbox is None or not np.all(np.isfinite(mask_bbox)) else \
        tuple(float(v) for v in mask_bbox)
    nose = lm[NOSE] if np.isfinite(lm[NOSE]).all() else _mean(lm, FACE)
    sh = _mean(lm, (L_SHOULDER, R_SHOULDER)) if np.isfinite(lm[[L_SHOULDER, R_SHOULDER]]).all() else None
    hip = _mean(lm, (L_HIP, R_HIP)) if np.isfinite(lm[[L_HIP, R_HIP]]).all() else None
    box = None
    if nose is not None and sh is not None and np.linalg.norm(nose - sh) > 1e-3:
        d = float(np.linalg.norm(nose - sh))
        up = (nose - sh) / d  # the body's up direction in the image (towards the head)
        # the unit: nose-to-shoulder distance, which collapses when the person leans towards
        # the camera (the head in front of the chest), so never less than a fraction of the
        # shoulder width (which a forward lean does not shorten)
        width = float(np.linalg.norm(lm[L_SHOULDER] - lm[R_SHOULDER]))
        u = max(d, NECK_PER_SHOULDER_WIDTH * width)
        head_top = nose + HEAD_TOP * u * up
        pts = [_finite(lm[list(MODE_LANDMARKS[mode])]), head_top[None]]
        if mode == "full" and bbox is not None:
            pts.append(np.array([[bbox[0], bbox[1]], [bbox[2], bbox[3]]]))
        elif mode == "upper":
            torso = hip - sh if hip is not None else -up * TORSO_PER_NECK * u
            pts.append((sh + (1 + UPPER_BELOW_HIPS) * torso)[None])
        elif mode == "head":
            pts.append((sh - HEAD_BELOW_SHOULDERS * u * up)[None])
        P = np.concatenate(pts)
        if mode == "upper":  # the bottom edge is the point below the hips, not the hanging hands
            floor = (sh + (1 + UPPER_BELOW_HIPS) * torso)[1]
            P = P[P[:, 1] <= floor + 1e-6]
        elif mode == "head":
            floor = (sh - HEAD_BELOW_SHOULDERS * u * up)[1]
            P = P[P[:, 1] <= floor + 1e-6]
        m = MARGIN[mode] * u
        cx = float(sh[0])
        half_w = float(np.abs(P[:, 0] - cx).max()) + m
        y0 = min(float(P[:, 1].min()) - m, float(head_top[1]) - HEADROOM * u)
        y1 = float(P[:, 1].max()) + (m if mode == "full" else 0.0)
        box = (cx - half_w, y0, cx + half_w, y1)
    elif bbox is not None:
        m = 0.05 * (bbox[3] - bbox[1])
        box = (bbox[0] - m, bbox[1] - m, bbox[2] + m, bbox[3] + m)
    else:
        box = (0.0, 0.0, float(frame_size), float(frame_size))
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    if w / h < out_aspect:
        w = h * out_aspect
    else:
        h = w / out_aspect
    w, h = w / zoom, h / zoom
    cx, cy = cx + offset[0] * w, cy + offset[1] * h
    return cx - w / 2, cy - h / 2, w, h


@dataclass
class _OneEuro:
    """One scalar One-Euro filter state (Casiez, Roussel, Vogel, CHI 2012)."""

    x: float
    dx: float = 0.0


class BoxSmoother:
    """Temporal smoothing of framing boxes: One-Euro filter with a deadband.

    The box centre (cx, cy) and height h are filtered; the width follows from the input box's
    aspect. Speeds are measured in box heights per second, so the filter behaves the same at any
    resolution. A change smaller than ``deadband`` (fraction of the box height) from the
    filtered value is ignored (a soft deadband: larger changes count by their excess), so a
    still avatar gives a still camera, and a real move is followed with the One-Euro filter's
    speed-dependent cutoff (slow moves smooth, fast moves with little lag); the box may rest up
    to ``deadband`` away from the input.

    Args:
        fps: frame rate of the calls, Hz.
        min_cutoff: cutoff frequency at rest, Hz (lower = smoother).
        beta: cutoff increase per unit speed (box heights / s).
        d_cutoff: cutoff of the speed estimate, Hz.
        deadband: ignored change, fraction of the box height.
    """

    def __init__(self, fps: float = 30.0, min_cutoff: float = 0.3, beta: float = 1.0,
                 d_cutoff: float = 1.0, deadband: float = 0.02):
        if not fps > 0:
            raise FramingError(f"BoxSmoother fps {fps} must be positive")
        self.dt = 1.0 / fps
        self.min_cutoff, self.beta, self.d_cutoff, self.deadband = min_cutoff, beta, d_cutoff, deadband
        self.reset()

    def reset(self) -> None:
        """Forget the history (the next box is taken as is)."""
        self._state: list[_OneEuro] | None = None
        self._t: float | None = None
        self._aspect = 16 / 9
        self._last: tuple[float, float, float, float] | None = None

    def _alpha(self, cutoff: float, dt: float | None = None) -> float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / (self.dt if dt is None else dt))

    def __call__(self, box: tuple[float, float, float, float] | None,
                 t: float | None = None) -> tuple[float, float, float, float] | None:
        """Smooth one box ``(x0, y0, w, h)`` pixels; None (no person) returns the last box.

        ``t``: the frame's time in seconds (e.g. its capture timestamp). With timestamps the
        filter runs on the real time between frames (a live stream's rate varies and may be far
        below ``fps``); without, frames are ``1 / fps`` apart. A step is clamped to 1 s.
        """
        if box is None:
            return self._last
        dt = self.dt
        if t is not None:
            if self._t is not None:
                dt = min(max(float(t) - self._t, 1e-3), 1.0)
            self._t = float(t)
        x0, y0, w, h = (float(v) for v in box)
        self._aspect = w / h
        z = np.array([x0 + w / 2, y0 + h / 2, h])
        if self._state is None:
            self._state = [_OneEuro(float(v)) for v in z]
        else:
            scale = self._state[2].x
            band = self.deadband * scale
            for i, s in enumerate(self._state):
                # soft deadband about the filtered value: changes within the band are ignored,
                # larger ones count by their excess (no jump at the band's edge)
                e = z[i] - s.x
                target = s.x + math.copysign(max(abs(e) - band, 0.0), e)
                dx = (target - s.x) / dt / scale
                s.dx += self._alpha(self.d_cutoff, dt) * (dx - s.dx)
                cutoff = self.min_cutoff + self.beta * abs(s.dx)
                s.x += self._alpha(cutoff, dt) * (target - s.x)
        cx, cy, hh = (s.x for s in self._state)
        ww = hh * self._aspect
        self._last = (cx - ww / 2, cy - hh / 2, ww, hh)
        return self._last


def compose_frame(image: np.ndarray, box: tuple[float, float, float, float],
                  out_size: tuple[int, int] = DEFAULT_OUT_SIZE,
                  fill: tuple[int, int, int] | None = (0, 0, 0)) -> np.ndarray:
    """Crop ``box`` out of a rendered frame and resize it to ``out_size``.

    Downscaling goes through ``cv2.INTER_AREA`` first (no aliasing), the sub-pixel crop and any
    upscaling through an affine warp with bilinear interpolation.

    Args:
        image: (S,S,C) uint8, C = 3 (RGB) or 4 (straight RGBA); any (H,W,C) works.
        box: ``(x0, y0, w, h)`` in image pixels (continuous coordinates, :func:`framing_box`).
        out_size: (W, H) output pixels.
        fill: RGB colour (0..255) of the area outside the image; None repeats the edge pixels
            (e.g. to extend a learned background). With RGBA input the outside has alpha 0
            (and RGB ``fill`` or black).
    Returns:
        (H,W,C) uint8.
    Raises:
        FramingError: an empty box or output, or an image that is not (H,W,3|4) uint8.
    """
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise FramingError(f"compose_frame needs an (H,W,3|4) uint8 image, got {image.shape} {image.dtype}")
    W, H = (int(v) for v in out_size)
    x0, y0, w, h = (float(v) for v in box)
    if W <= 0 or H <= 0 or not (w > 0 and h > 0):
        raise FramingError(f"empty framing box {box} or output size {out_size}")
    C = image.shape[2]
    sx, sy = W / w, H / h
    src = image
    if min(sx, sy) < 1:  # pre-shrink with area averaging, the warp then scales by ~1
        f = min(sx, sy)
        ih, iw = image.shape[:2]
        nw, nh = max(1, int(round(iw * f))), max(1, int(round(ih * f)))
        src = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        fx, fy = nw / iw, nh / ih
        x0, y0, sx, sy = x0 * fx, y0 * fy, sx / fx, sy / fy
    # output pixel centre u + 0.5 <- continuous x0 + (u + 0.5)/sx <- source index that - 0.5
    M = np.array([[sx, 0.0, sx * (0.5 - x0) - 0.5], [0.0, sy, sy * (0.5 - y0) - 0.5]])
    if fill is None and C == 3:
        border, value = cv2.BORDER_REPLICATE, 0
    else:
        rgb = tuple(int(v) for v in (fill if fill is not None else (0, 0, 0)))
        border, value = cv2.BORDER_CONSTANT, rgb + (0,) if C == 4 else rgb
    return cv2.warpAffine(src, M, (W, H), flags=cv2.INTER_LINEAR, borderMode=border, borderValue=value)


def box_intrinsics(K: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """Intrinsics of a virtual camera that sees exactly ``box`` of the rendered frame at ``size``.

    The alternative to crop-and-upscale: render the maps with these intrinsics (the virtual
    camera moved closer) instead of cropping the rendered frame. Only meaningful for a renderer
    trained with scale augmentation.

    Args:
        K: (3, 3) intrinsics of the rendered frame (``crop_intrinsics``), pixels.
        box: ``(x0, y0, w, h)`` rendered-frame pixels.
        size: (W, H) pixels of the new image.
    Returns:
        (3, 3) float64 intrinsics.
    """
    x0, y0, w, h = box
    W, H = size
    Kb = np.array(K, np.float64).copy()
    Kb[0, 2] -= x0
    Kb[1, 2] -= y0
    Kb[0] *= W / w
    Kb[1] *= H / h
    return Kb


def camera_view(box: tuple[float, float, float, float], frame_size: int,
                max_zoom: float | None = None) -> tuple[float, float, float, float]:
    """The square the virtual camera sees in ``zoom_mode="camera"``: centred on ``box`` and just
    large enough to hold it (side ``max(w, h)``; the renderer's output is square).

    Args:
        box: ``(x0, y0, w, h)`` the framing box, rendered-frame pixels.
        frame_size: S, the side of the renderer's training crop (pixels).
        max_zoom: the largest magnification of the view over the training crop
            (``S / side``), e.g. the upper end of the renderer's scale augmentation; None: no
            limit. A box smaller than that is cut out of the view afterwards (crop + upscale
            for the rest of the way).
    Returns:
        ``(x0, y0, side, side)`` rendered-frame pixels.
    Raises:
        FramingError: an empty box, or ``max_zoom`` <= 0.
    """
    x0, y0, w, h = (float(v) for v in box)
    if not (w > 0 and h > 0):
        raise FramingError(f"empty framing box {box}")
    side = max(w, h)
    if max_zoom is not None:
        if not max_zoom > 0:
            raise FramingError(f"max camera zoom {max_zoom} must be positive")
        side = max(side, frame_size / float(max_zoom))
    cx, cy = x0 + w / 2, y0 + h / 2
    return cx - side / 2, cy - side / 2, side, side


def box_in_view(box: tuple[float, float, float, float], view: tuple[float, float, float, float],
                size: int) -> tuple[float, float, float, float]:
    """``box`` (rendered-frame pixels) in the pixels of the ``size`` x ``size`` image that the
    virtual camera of :func:`camera_view` renders (``view`` maps onto that image exactly, as
    :func:`box_intrinsics` with ``(size, size)``)."""
    x0, y0, w, h = (float(v) for v in box)
    vx, vy, vw, vh = (float(v) for v in view)
    sx, sy = size / vw, size / vh
    return (x0 - vx) * sx, (y0 - vy) * sy, w * sx, h * sy


def letterbox(image: np.ndarray, size: tuple[int, int], fill=(0, 0, 0)) -> np.ndarray:
    """Fit ``image`` into ``size`` keeping its aspect (centred, borders in ``fill``; alpha 0 for
    RGBA). Used where a sink has a fixed size (a recording or a virtual camera opened before the
    framing changed); an image of that size is returned as is.

    Args:
        image: (H,W,3|4) uint8.
        size: (W, H) pixels.
        fill: RGB colour 0..255 of the borders.
    Returns:
        (H,W,C) uint8 with the sink's H, W.
    """
    W, H = (int(v) for v in size)
    h, w = image.shape[:2]
    if (w, h) == (W, H):
        return image
    f = min(W / w, H / h)
    nw, nh = max(1, int(round(w * f))), max(1, int(round(h * f)))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    small = cv2.resize(image, (nw, nh), interpolation=interp)
    C = image.shape[2]
    out = np.empty((H, W, C), np.uint8)
    out[...] = tuple(int(v) for v in fill)[:3] + ((0,) if C == 4 else ())
    x, y = (W - nw) // 2, (H - nh) // 2
    out[y:y + nh, x:x + nw] = small
    return out


@dataclass(frozen=True)
class OutputSettings:
    """What one output shows and how: background mode, framing, zoom, offset, size, zoom mode.

    Built from user values with :meth:`parse` (``--background``, ``--framing``, ``--zoom``,
    ``--offset``, ``--out-size``, ``--zoom-mode``), which validates them. ``framing`` None is the
    rendered square as is (S x S); any framing gives an ``out_size`` frame.

    Attributes:
        background: parsed :class:`~ram_avatar.render.composite.Background`; ``spec`` its text.
        framing: ``full|upper|head`` or None; zoom (> 0), offset (dx, dy fractions of the box),
        out_size (W, H) even pixels, zoom_mode ``crop|camera``, max_camera_zoom (None: no limit;
        :func:`camera_view`).
    """

    background: Background = Background("learned")
    spec: str = "learned"
    framing: str | None = None
    zoom: float = 1.0
    offset: tuple[float, float] = (0.0, 0.0)
    out_size: tuple[int, int] = DEFAULT_OUT_SIZE
    zoom_mode: str = "crop"
    max_camera_zoom: float | None = None

    @classmethod
    def parse(cls, background: str | None = "learned", framing: str | None = None,
              zoom: float = 1.0, offset="0,0", out_size=DEFAULT_OUT_SIZE, zoom_mode: str = "crop",
              max_camera_zoom: float | None = None) -> "OutputSettings":
        """Validate user values (``framing`` ``"none"`` or ``""`` is None).

        Raises:
            FramingError: bad framing, zoom, offset, size or zoom mode;
            BackgroundError: a background that is neither a mode, a colour nor an image.
        """
        from ram_avatar.render.composite import parse_background

        if framing in ("", "none"):
            framing = None
        zoom = float(zoom)
        if framing is not None:
            check_framing(framing, zoom)
        elif not (math.isfinite(zoom) and zoom > 0):
            check_framing("full", zoom)
        if zoom_mode not in ZOOM_MODES:
            raise FramingError(f"--zoom-mode {zoom_mode!r}: use {' or '.join(ZOOM_MODES)}")
        if max_camera_zoom is not None and not float(max_camera_zoom) > 0:
            raise FramingError(f"max camera zoom {max_camera_zoom} must be positive")
        spec = "learned" if background is None else str(background)
        return cls(parse_background(spec), spec, framing, zoom, parse_offset(offset),
                   parse_out_size(out_size), zoom_mode,
                   None if max_camera_zoom is None else float(max_camera_zoom))

    @property
    def has_alpha(self) -> bool:
        """The output frames are RGBA (``transparent``)."""
        return self.background.has_alpha

    @property
    def camera(self) -> bool:
        """The framing moves the virtual camera (maps re-rendered closer)."""
        return self.framing is not None and self.zoom_mode == "camera"

    def output_size(self, frame_size: int) -> tuple[int, int]:
        """(W, H) of the output frames for a renderer of side ``frame_size``."""
        return tuple(self.out_size) if self.framing is not None else (frame_size, frame_size)


def _over(rgba: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Straight RGBA (H,W,4) uint8 over an opaque (H,W,3) uint8 background -> (H,W,3) uint8."""
    return over_image(rgba, bg)


class AvatarComposer:
    """Turns rendered frames into output avatar images: background mode, then framing.

    Without a framing the rendered square is re-composited over the background
    (:func:`ram_avatar.render.composite.compose_uint8`). With a framing, each frame's box
    (:func:`ram_avatar.render.framing.framing_box`, smoothed by a
    :class:`~ram_avatar.render.framing.BoxSmoother`) is cropped and resized to ``out_size``;
    the learned background extends by its edge pixels, other modes frame the transparent
    avatar (outside alpha 0) and put it over the colour or picture at the output size.

    ``zoom_mode="camera"``: the caller renders the maps with the virtual camera of
    :meth:`view` (``box_intrinsics(K, view, (S, S))``) and passes that view to :meth:`compose`,
    which cuts the box out of the closer rendering; the learned background, which the renderer
    draws at fixed pixels, is replaced by the same view of it (needs the alpha; without it the
    renderer's background is kept as drawn).

    Args:
        background: parsed ``--background``; learned: (S,S,3) uint8 learned background (the
            renderer's output for all-zero maps; needed for every mode but ``learned``, and for
            ``learned`` in camera mode; may be set later through the attribute).
        framing: ``full|upper|head`` or None; zoom, offset, out_size (W,H): as framing.py;
        fps: frame rate (for the smoother); zoom_mode: ``crop|camera``; max_camera_zoom: see
        :func:`camera_view`.

    Use ``__call__(rgb, alpha, landmarks, mask_bbox)`` per frame in order (``drive``), or the
    two halves :meth:`next_box` (in frame order: the smoother keeps state) then
    :meth:`compose` (the live runtime, whose pose and render stages run on different threads).
    A live caller makes one per stream and calls ``smoother.reset()`` when the person changes.
    """

    def __init__(self, background: Background, learned: np.ndarray | None, framing: str | None,
                 zoom: float = 1.0, offset=(0.0, 0.0), out_size=DEFAULT_OUT_SIZE, fps: float = 30.0,
                 zoom_mode: str = "crop", max_camera_zoom: float | None = None):
        if zoom_mode not in ZOOM_MODES:
            raise FramingError(f"--zoom-mode {zoom_mode!r}: use {' or '.join(ZOOM_MODES)}")
        self.background, self.learned, self.framing = background, learned, framing
        self.zoom, self.offset, self.out_size = zoom, tuple(offset), tuple(out_size)
        self.zoom_mode, self.max_camera_zoom = zoom_mode, max_camera_zoom
        self.smoother = BoxSmoother(fps=fps)
        #: the (smoothed) box of the last framed frame, rendered-frame pixels
        self.last_box: tuple[float, float, float, float] | None = None
        self._bg_out = None
        if background.mode in ("colour", "image"):
            W, H = self.out_size
            t = background.tensor((H, W))
            self._bg_out = (t[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)

    @classmethod
    def from_settings(cls, settings: "OutputSettings", learned: np.ndarray | None = None,
                      fps: float = 30.0) -> "AvatarComposer":
        """A composer for validated :class:`OutputSettings`."""
        return cls(settings.background, learned, settings.framing, settings.zoom, settings.offset,
                   settings.out_size, fps=fps, zoom_mode=settings.zoom_mode,
                   max_camera_zoom=settings.max_camera_zoom)

    @property
    def camera(self) -> bool:
        """Framed with a closer virtual camera (:meth:`view`)."""
        return self.framing is not None and self.zoom_mode == "camera"

    @property
    def needs_learned(self) -> bool:
        """:meth:`compose` needs the learned background (:attr:`learned`)."""
        return self.background.mode != "learned" or self.camera

    def next_box(self, landmarks: np.ndarray | None, mask_bbox, frame_size: int,
                 t: float | None = None):
        """The smoothed framing box of the next frame (None without a framing).

        Args:
            landmarks: (33,2) pixels of the avatar's pose landmarks in the rendered frame (the
                training crop), NaN where unknown, or None; mask_bbox: silhouette box or None.
            frame_size: S.
            t: the frame's time in seconds (live: capture timestamp), for the smoother
                (:class:`BoxSmoother`); None: frames ``1 / fps`` apart.
        Returns:
            ``(x0, y0, w, h)`` rendered-frame pixels, or None.
        """
        if self.framing is None:
            return None
        W, H = self.out_size
        box = self.smoother(framing_box(self.framing, landmarks, mask_bbox, frame_size,
                                        out_aspect=W / H, zoom=self.zoom, offset=self.offset), t)
        self.last_box = box
        return box

    def view(self, box, frame_size: int):
        """The virtual camera's square (rendered-frame pixels) for ``box`` in camera mode,
        else None (:func:`camera_view`)."""
        if box is None or not self.camera:
            return None
        return camera_view(box, frame_size, self.max_camera_zoom)

    def compose(self, rgb: np.ndarray, alpha: np.ndarray | None, box=None, view=None) -> np.ndarray:
        """One output frame from one rendered frame.

        Args:
            rgb: (S,S,3) uint8 rendered frame (of the training crop, or of ``view``).
            alpha: (S,S) uint8 renderer alpha; None is allowed only for ``learned``.
            box: the framing box from :meth:`next_box` (rendered-frame pixels), None without a
                framing.
            view: the camera view the frame was rendered with (:meth:`view`), or None.
        Returns:
            (S,S,3) without a framing, else (H,W,3); (.., 4) straight RGBA for ``transparent``.
        Raises:
            FramingError: a background mode other than ``learned`` without ``alpha`` or
                without :attr:`learned`.
        """
        mode = self.background.mode
        S = rgb.shape[0]
        if mode != "learned" and (alpha is None or self.learned is None):
            raise FramingError(f"--background {mode} needs the renderer's alpha and learned "
                               "background (re-export the avatar with `ram-avatar export`)")
        learned = self.learned
        if view is not None and learned is not None:
            # the renderer paints its learned background at fixed pixels: swap in the view of it
            learned_view = compose_frame(learned, view, (S, S), fill=None)
            if alpha is not None:
                rgb = replace_background_uint8(rgb, alpha, learned, learned_view)
            learned = learned_view
        if box is None:
            if mode == "learned":
                return rgb
            return compose_uint8(rgb[None], alpha[None], learned, self.background)[0]
        if view is not None:
            box = box_in_view(box, view, S)
        if mode == "learned":
            return compose_frame(rgb, box, self.out_size, fill=None)
        if mode == "colour":  # composite at S, then frame with the colour outside (one blend)
            fill = tuple(int(round(255 * c)) for c in self.background.colour)
            flat = compose_uint8(rgb[None], alpha[None], learned, self.background)[0]
            return compose_frame(flat, box, self.out_size, fill=fill)
        rgba = compose_uint8(rgb[None], alpha[None], learned, Background("transparent"))[0]
        framed = compose_frame(rgba, box, self.out_size)
        return framed if mode == "transparent" else _over(framed, self._bg_out)

    def __call__(self, rgb: np.ndarray, alpha: np.ndarray | None, landmarks: np.ndarray | None,
                 mask_bbox) -> np.ndarray:
        """One frame, crop mode: rgb (S,S,3) uint8, alpha (S,S) uint8 (None only for
        ``learned``), landmarks (33,2) px, mask_bbox -> (H,W,3) or (H,W,4) uint8 (transparent)."""
        box = self.next_box(landmarks, mask_bbox, rgb.shape[0])
        return self.compose(rgb, alpha, box)
