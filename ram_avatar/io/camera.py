"""Camera intrinsics: ``camera.json`` files (written by ``ram-avatar calibrate camera``) and the
documented default field of view used when no calibration is given.

``camera.json``: ``{"K": [[fx,0,cx],[0,fy,cy],[0,0,1]], "dist": [k1,k2,p1,p2,k3],
"width": W, "height": H}`` (OpenCV conventions, pixels).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ram_avatar.errors import RamAvatarError

#: Horizontal field of view (degrees) assumed for the longer image side without calibration.
#: 55 degrees is typical of phone main cameras and webcams (35 mm equivalent focal ~ 34 mm).
DEFAULT_FOV_DEG = 55.0


def default_intrinsics(width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG) -> np.ndarray:
    """Pinhole K (3, 3) with square pixels, principal point at the image centre and a field of
    view of ``fov_deg`` across the longer image side."""
    f = max(width, height) / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def load_camera(path: str | Path, width: int, height: int) -> dict:
    """Read a camera.json and scale it to a ``width`` x ``height`` video.

    Returns:
        dict with ``K`` (3, 3) ndarray, ``dist`` (5,) ndarray, ``source`` = "calibration".
    Raises:
        RamAvatarError: missing/unreadable file, bad K, or an aspect ratio that differs from the
            video's (a calibration of another camera mode).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        K = np.asarray(data["K"], dtype=np.float64)
        dist = np.asarray(data.get("dist", [0, 0, 0, 0, 0]), dtype=np.float64).ravel()
        cw, ch = int(data["width"]), int(data["height"])
    except FileNotFoundError as e:
        raise RamAvatarError(f"camera file {path} not found; run `ram-avatar calibrate camera` "
                             "or omit --camera to use the default field of view") from e
    except (ValueError, KeyError, TypeError) as e:
        raise RamAvatarError(f"{path} is not a valid camera.json (needs K 3x3, width, height): {e}") from e
    if K.shape != (3, 3) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise RamAvatarError(f"{path}: K must be a 3x3 matrix with positive focal lengths")
    if abs(cw / ch - width / height) > 0.01:
        raise RamAvatarError(f"{path} was calibrated at {cw}x{ch}, but the video is {width}x{height} "
                             "(different aspect ratio); calibrate this camera mode")
    s = width / cw
    K = K.copy()
    K[:2] *= s
    return {"K": K, "dist": dist, "source": "calibration", "file": str(path)}


def camera_for_video(width: int, height: int, camera_path: str | Path | None = None) -> dict:
    """Camera of a video: from ``camera_path`` when given, else :func:`default_intrinsics`.

    Returns:
        dict ``K`` (3, 3), ``dist`` (5,), ``source`` ("calibration" | "default_fov"), and
        ``fov_deg`` for the default.
    """
    if camera_path is not None:
        return load_camera(camera_path, width, height)
    return {"K": default_intrinsics(width, height), "dist": np.zeros(5), "source": "default_fov",
            "fov_deg": DEFAULT_FOV_DEG}


def undistort_points(points: np.ndarray, K: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Undistort pixel coordinates (..., 2) with OpenCV; identity when ``dist`` is all zero."""
    if not np.any(dist):
        return points
    import cv2

    shp = points.shape
    out = cv2.undistortPoints(points.reshape(-1, 1, 2).astype(np.float64), K, dist, P=K)
    return out.reshape(shp)
