"""2D conditioning maps drawn from projected keypoints: 5-channel hand map and 3-channel face map.

RAM-Avatar (Deng et al., CVPR 2024, Sec. 4.1) conditions the generator on a hand map and a face
map besides the body's neural-texture map; each goes through a shallow UNet to 16 channels. Here
the hand map has one channel per finger with the skeleton lines of that finger (both hands share
the channels), and the face map draws MediaPipe face-mesh contours grouped into three channels.

Pixel convention (same as :mod:`ram_avatar.render.rasterizer` and MediaPipe's normalised
coordinates times the image size): pixel (x, y) covers ``[x, x+1) x [y, y+1)``, its centre is
``(x + 0.5, y + 0.5)``. Lines are anti-aliased OpenCV lines drawn with 1/16 px sub-pixel precision.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch

from ram_avatar.errors import RamAvatarError

#: MediaPipe hand-21 chains, one per finger (thumb, index, middle, ring, pinky), wrist first.
FINGER_CHAINS: tuple[tuple[int, ...], ...] = (
    (0, 1, 2, 3, 4),
    (0, 5, 6, 7, 8),
    (0, 9, 10, 11, 12),
    (0, 13, 14, 15, 16),
    (0, 17, 18, 19, 20),
)

# Names in mediapipe.python.solutions.face_mesh_connections, per output channel.
_FACE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("FACEMESH_FACE_OVAL", "FACEMESH_LEFT_EYEBROW", "FACEMESH_RIGHT_EYEBROW"),
    ("FACEMESH_LEFT_EYE", "FACEMESH_RIGHT_EYE", "FACEMESH_IRISES"),
    ("FACEMESH_LIPS", "FACEMESH_NOSE"),
)

_SHIFT = 4  # cv2 fixed-point fractional bits for sub-pixel line end points
_SCALE = float(1 << _SHIFT)


class MapInputError(RamAvatarError):
    """Keypoint arrays given to a map drawer have the wrong shape or size."""


@functools.lru_cache(maxsize=1)
def face_connection_groups() -> tuple[np.ndarray, ...]:
    """Face-mesh edges per face-map channel, as three (E_c,2) int arrays of landmark indices.

    Channel 0: face oval + eyebrows; 1: eyes + irises; 2: lips + nose (when the installed
    MediaPipe defines ``FACEMESH_NOSE``). Imports MediaPipe's connection tables lazily.
    """
    from mediapipe.python.solutions import face_mesh_connections as fmc

    groups = []
    for names in _FACE_GROUPS:
        edges = set()
        for name in names:
            edges |= set(getattr(fmc, name, frozenset()))
        groups.append(np.array(sorted(edges), dtype=np.int64).reshape(-1, 2))
    return tuple(groups)


def _as_numpy(x) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().to("cpu")
        return x.numpy() if x.dtype == torch.bool else x.to(torch.float64).numpy()
    return np.asarray(x)


def _check_size(size) -> tuple[int, int]:
    try:
        H, W = (int(s) for s in size)
    except (TypeError, ValueError):
        raise MapInputError(f"size must be (H, W), got {size!r}") from None
    if H <= 0 or W <= 0:
        raise MapInputError(f"size must be positive, got {(H, W)}")
    return H, W


def _out_device(*xs) -> torch.device:
    for x in xs:
        if torch.is_tensor(x):
            return x.device
    return torch.device("cpu")


def _draw_segments(canvas: np.ndarray, pts: np.ndarray, edges: np.ndarray, thickness: int) -> None:
    """Draw anti-aliased segments ``pts[edges[:,0]] -> pts[edges[:,1]]`` on a uint8 canvas.

    ``pts`` are (N,2) pixel coordinates in the [x, x+1) convention; segments with a non-finite
    end point are skipped.
    """
    a, b = pts[edges[:, 0]], pts[edges[:, 1]]
    ok = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    if not ok.any():
        return
    seg = np.stack([a[ok], b[ok]], axis=1) - 0.5  # cv2 puts pixel centres on integers
    lim = 4.0 * max(canvas.shape)  # keep far-off points inside cv2's fixed-point range
    seg = np.clip(seg, -lim, lim)
    seg = np.round(seg * _SCALE).astype(np.int32)
    cv2.polylines(canvas, list(seg), isClosed=False, color=255, thickness=int(thickness),
                  lineType=cv2.LINE_AA, shift=_SHIFT)


def draw_hand_map(hands_2d, valid, size, thickness: int = 2) -> torch.Tensor:
    """Draw the 5-channel finger-skeleton map of both hands.

    Args:
        hands_2d: (B,2,21,2) pixel coordinates (x right, y down) of the [left, right] hands
            (subject's own sides) in MediaPipe hand-21 order: 0 wrist; thumb 1-4, index 5-8,
            middle 9-12, ring 13-16, pinky 17-20. numpy array or torch tensor.
        valid: (B,2) bool, which hands to draw (``None``: all). Invalid hands draw nothing;
            segments with non-finite end points are skipped too.
        size: ``(H, W)`` of the output in pixels.
        thickness: OpenCV line thickness (int >= 1); cv2 draws an anti-aliased line about
            ``thickness + 1`` px wide.

    Returns:
        (B,5,H,W) float32 tensor in [0,1], channel c holding finger c (thumb, index, middle,
        ring, pinky) drawn as wrist -> base -> ... -> tip lines of both hands. On the device of
        the torch input, else CPU.

    Raises:
        MapInputError: wrong shapes or size.
    """
    device = _out_device(hands_2d, valid)
    H, W = _check_size(size)
    pts = _as_numpy(hands_2d).astype(np.float64)
    if pts.ndim != 4 or pts.shape[1:] != (2, 21, 2):
        raise MapInputError(f"hands_2d must be (B,2,21,2) pixel coordinates, got {pts.shape}")
    B = pts.shape[0]
    ok = np.ones((B, 2), bool) if valid is None else _as_numpy(valid).astype(bool)
    if ok.shape != (B, 2):
        raise MapInputError(f"valid must be (B,2)=({B},2) bool, got {ok.shape}")
    if int(thickness) < 1:
        raise MapInputError(f"thickness must be >= 1, got {thickness}")

    edges = [np.array(list(zip(c[:-1], c[1:], strict=True)), dtype=np.int64) for c in FINGER_CHAINS]
    out = np.zeros((B, 5, H, W), dtype=np.uint8)
    for b in range(B):
        for h in range(2):
            if not ok[b, h]:
                continue
            for c, e in enumerate(edges):
                _draw_segments(out[b, c], pts[b, h], e, thickness)
    return torch.from_numpy(out).to(device=device, dtype=torch.float32).div_(255.0)


def draw_face_map(face_2d, valid, size, thickness: int = 1) -> torch.Tensor:
    """Draw the 3-channel face-contour map from MediaPipe face-mesh landmarks.

    Args:
        face_2d: (B,478,2) pixel coordinates (x right, y down) of the MediaPipe face mesh with
            irises (478 landmarks; 468 without irises is accepted, the iris edges are skipped).
            numpy array or torch tensor.
        valid: (B,) bool, frames whose face is drawn (``None``: all); invalid frames stay zero.
        size: ``(H, W)`` of the output in pixels.
        thickness: OpenCV line thickness (int >= 1); cv2 draws an anti-aliased line about
            ``thickness + 1`` px wide.

    Returns:
        (B,3,H,W) float32 tensor in [0,1]: channel 0 face oval + eyebrows, channel 1 eyes +
        irises, channel 2 lips + nose; edges from
        ``mediapipe.python.solutions.face_mesh_connections``. On the device of the torch input,
        else CPU.

    Raises:
        MapInputError: wrong shapes or size.
    """
    device = _out_device(face_2d, valid)
    H, W = _check_size(size)
    pts = _as_numpy(face_2d).astype(np.float64)
    if pts.ndim != 3 or pts.shape[1] not in (468, 478) or pts.shape[2] != 2:
        raise MapInputError(f"face_2d must be (B,478,2) pixel coordinates, got {pts.shape}")
    B, N = pts.shape[:2]
    ok = np.ones((B,), bool) if valid is None else _as_numpy(valid).astype(bool)
    ok = ok.reshape(-1)
    if ok.shape != (B,):
        raise MapInputError(f"valid must be (B,)=({B},) bool, got {ok.shape}")
    if int(thickness) < 1:
        raise MapInputError(f"thickness must be >= 1, got {thickness}")

    groups = [e[(e < N).all(1)] for e in face_connection_groups()]
    out = np.zeros((B, 3, H, W), dtype=np.uint8)
    for b in range(B):
        if not ok[b]:
            continue
        for c, e in enumerate(groups):
            _draw_segments(out[b, c], pts[b], e, thickness)
    return torch.from_numpy(out).to(device=device, dtype=torch.float32).div_(255.0)
