"""Camera intrinsics from views of a planar calibration board (OpenCV).

``ram-avatar calibrate camera INPUT`` films or photographs a printed checkerboard or ChArUco board
from many positions, detects its corners, picks a well-spread subset of the views and runs
:func:`cv2.calibrateCamera` (Zhang's method: pinhole K plus Brown-Conrady distortion
``[k1, k2, p1, p2, k3]``). The result is saved as ``camera.json`` in the format read by
:func:`ram_avatar.io.camera.load_camera`, so capture fits the body with the real focal length and
undistorted keypoints instead of the default 55-degree field of view.

Board conventions:

- ``checkerboard``: ``cols`` x ``rows`` are the INNER corners (a board of 10 x 7 squares has
  9 x 6 inner corners), ``square_mm`` the side of one square. Detection:
  ``cv2.findChessboardCornersSB`` (sub-pixel by construction), falling back to
  ``cv2.findChessboardCorners`` + ``cv2.cornerSubPix``.
- ``charuco``: ``cols`` x ``rows`` are the SQUARES of the board (as in OpenCV's
  ``CharucoBoard((cols, rows), ...)`` and most board generators), ``square_mm`` the square side,
  ``marker_mm`` the ArUco marker side (default 0.75 x square), ``dictionary`` the ArUco
  dictionary name. Detection: ``cv2.aruco.CharucoDetector`` (OpenCV >= 4.7). Boards printed from
  OpenCV < 4.6 with an even number of rows use the "legacy" layout; it is tried automatically
  when the standard layout finds nothing.

View selection (why: 500 nearly identical frames of a video calibrate worse than 20 different
ones, and cost more): every view with a board gets a feature vector (board centroid x, y as a
fraction of the image, board scale = sqrt(hull area / image area), board-normal x, y from the
homography with a nominal K) and views are picked greedily, farthest-point first, up to
``max_views``. Views whose RMS error is over 3x the median (and > 1 px) are dropped once and the
calibration rerun. ``coverage`` reports the fraction of a 4 x 4 image grid that selected corners
touch: distortion is only constrained where corners were seen, so aim for > 0.75.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ram_avatar.errors import RamAvatarError
from ram_avatar.utils import atomic_path, atomic_write_text, progress

log = logging.getLogger(__name__)

__all__ = ["CalibrationError", "calibrate_camera", "detect_board", "save_camera_json",
           "undistortion_preview", "make_board", "BOARD_TYPES", "IMAGE_EXTENSIONS"]

BOARD_TYPES = ("checkerboard", "charuco")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: fewest views cv2.calibrateCamera is allowed to run on (3 is the mathematical minimum for
#: a full K from a planar target; 10-20 well-spread views are recommended).
MIN_VIEWS = 3
#: fewest ChArUco corners for a view to count (the corners must also not be collinear).
MIN_CHARUCO_CORNERS = 6


class CalibrationError(RamAvatarError):
    """A calibration input could not be read or does not show the board well enough."""


# ---------------------------------------------------------------------------------------------
# boards and detection
# ---------------------------------------------------------------------------------------------

def _aruco_dictionary(name: str):
    import cv2

    key = name if name.startswith("DICT_") else f"DICT_{name}"
    if not hasattr(cv2.aruco, key):
        names = sorted(n for n in dir(cv2.aruco) if n.startswith("DICT_"))
        raise CalibrationError(f"unknown ArUco dictionary {name!r}; choose one of {', '.join(names)}")
    return cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, key))


def make_board(board: str, cols: int, rows: int, square_mm: float, marker_mm: float | None = None,
               dictionary: str = "DICT_5X5_100", legacy: bool = False):
    """Describe a board: ``("checkerboard", object_points (cols*rows, 3) mm)`` or
    ``("charuco", cv2.aruco.CharucoBoard)``; object points lie on z = 0, in millimetres.

    Raises:
        CalibrationError: unknown board type, bad sizes, or unknown dictionary.
    """
    if board not in BOARD_TYPES:
        raise CalibrationError(f"unknown board {board!r}; choose one of {', '.join(BOARD_TYPES)}")
    cols, rows = int(cols), int(rows)
    if square_mm is None or not float(square_mm) > 0:
        raise CalibrationError("--square-mm must be the positive side length of one square in mm")
    if board == "checkerboard":
        if cols < 2 or rows < 2:
            raise CalibrationError(f"a checkerboard needs at least 2 x 2 inner corners, got {cols} x {rows}")
        obj = np.zeros((rows * cols, 3), np.float32)
        obj[:, :2] = np.mgrid[0:cols, 0:rows].T.reshape(-1, 2) * float(square_mm)
        return "checkerboard", obj
    import cv2

    if cols < 3 or rows < 3:
        raise CalibrationError(f"a ChArUco board needs at least 3 x 3 squares, got {cols} x {rows} "
                               "(for ChArUco, --cols/--rows count SQUARES)")
    marker_mm = 0.75 * float(square_mm) if marker_mm is None else float(marker_mm)
    if not 0 < marker_mm < float(square_mm):
        raise CalibrationError(f"--marker-mm ({marker_mm}) must be smaller than --square-mm ({square_mm})")
    b = cv2.aruco.CharucoBoard((cols, rows), float(square_mm), marker_mm, _aruco_dictionary(dictionary))
    b.setLegacyPattern(bool(legacy))
    return "charuco", b


class _Detector:
    """Finds the board in grayscale images: ``detect(gray) -> (obj (N,3), img (N,2)) | None``."""

    def __init__(self, board: str, cols: int, rows: int, square_mm: float, marker_mm=None,
                 dictionary: str = "DICT_5X5_100", legacy: bool | None = None):
        import cv2

        self.kind = board
        self.cols, self.rows = int(cols), int(rows)
        self.markers_seen = 0
        self.legacy_hits = 0
        self.standard_hits = 0
        self.last_legacy = False
        if board == "checkerboard":
            self.obj = make_board(board, cols, rows, square_mm)[1]
            return
        self.boards = {}
        for lg in ((False, True) if legacy is None else (bool(legacy),)):
            b = make_board(board, cols, rows, square_mm, marker_mm, dictionary, legacy=lg)[1]
            params = cv2.aruco.CharucoParameters()
            params.tryRefineMarkers = True
            self.boards[lg] = (b, cv2.aruco.CharucoDetector(b, params))

    def detect(self, gray: np.ndarray):
        if self.kind == "checkerboard":
            return self._checkerboard(gray)
        return self._charuco(gray)

    def _checkerboard(self, gray: np.ndarray):
        import cv2

        size = (self.cols, self.rows)
        h, w = gray.shape
        # detect on an image of at most ~1280 px (speed), refine at full resolution
        s = min(1.0, 1280.0 / max(h, w))
        small = gray if s == 1.0 else cv2.resize(gray, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        ok, corners = cv2.findChessboardCornersSB(small, size, flags=cv2.CALIB_CB_NORMALIZE_IMAGE)
        if not ok:
            ok, corners = cv2.findChessboardCorners(
                small, size, flags=cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
                | cv2.CALIB_CB_FAST_CHECK)
            if not ok:
                return None
        corners = corners.reshape(-1, 2).astype(np.float32)
        if s != 1.0:
            corners = (corners + 0.5) / s - 0.5
        # sub-pixel refinement with a window of ~1/4 of the smallest corner spacing
        grid = corners.reshape(self.rows, self.cols, 2)
        spacing = min(np.linalg.norm(np.diff(grid, axis=0), axis=-1).min(),
                      np.linalg.norm(np.diff(grid, axis=1), axis=-1).min())
        win = int(np.clip(spacing / 4, 2, 11))
        corners = cv2.cornerSubPix(gray, corners.reshape(-1, 1, 2), (win, win), (-1, -1),
                                   (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-3))
        return self.obj.copy(), corners.reshape(-1, 2)

    def _charuco(self, gray: np.ndarray):
        best = None
        for legacy, (board, det) in self.boards.items():
            cc, ids, mc, mids = det.detectBoard(gray)
            if mids is not None and len(mids) >= 2 and not legacy:
                self.markers_seen += 1
            if cc is None or ids is None or len(ids) < MIN_CHARUCO_CORNERS:
                continue
            obj, img = board.matchImagePoints(cc, ids)
            obj, img = obj.reshape(-1, 3).astype(np.float32), img.reshape(-1, 2).astype(np.float32)
            if _collinear(obj):
                continue
            if best is None or len(obj) > len(best[0]):
                best = (obj, img, legacy)
            if not legacy:
                break  # the standard layout worked: no need to try the legacy one
        if best is None:
            return None
        self.last_legacy = best[2]
        if best[2]:
            self.legacy_hits += 1
        else:
            self.standard_hits += 1
        return best[0], best[1]


def _collinear(obj: np.ndarray) -> bool:
    """True when the board points (N, 3) all lie on (nearly) one line."""
    xy = obj[:, :2] - obj[:, :2].mean(0)
    sv = np.linalg.svd(xy, compute_uv=False)
    return len(sv) < 2 or sv[1] < 1e-3 * max(sv[0], 1e-9)


def detect_board(image: np.ndarray, board: str = "checkerboard", cols: int = 9, rows: int = 6,
                 square_mm: float = 25.0, marker_mm: float | None = None,
                 dictionary: str = "DICT_5X5_100"):
    """Detect a board in one image.

    Args:
        image: (H, W, 3) RGB uint8 or (H, W) grayscale.
        board, cols, rows, square_mm, marker_mm, dictionary: see the module docstring.
    Returns:
        ``(object_points (N, 3) mm, image_points (N, 2) px)`` or None when not found.
    """
    det = _Detector(board, cols, rows, square_mm, marker_mm, dictionary)
    return det.detect(_gray(image))


def _gray(image: np.ndarray) -> np.ndarray:
    import cv2

    image = np.asarray(image)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image


# ---------------------------------------------------------------------------------------------
# inputs: video file, image folder, webcam
# ---------------------------------------------------------------------------------------------

def is_webcam(source) -> bool:
    """True when ``source`` names a webcam: an int index, or a digit string that is not an
    existing file (``"0"``); False for paths, other strings and bools."""
    if isinstance(source, bool):
        return False
    if isinstance(source, int):
        return True
    return isinstance(source, str) and source.strip().isdigit() and not Path(source).exists()


def _iter_images(source, max_frames: int, webcam_seconds: float
                 ) -> tuple[Iterator[tuple[str, np.ndarray]], int | None, str]:
    """Frames to check for the board: ``(iterator of (frame label, RGB image), count, kind)``.

    Raises:
        CalibrationError: the input does not exist, is empty, or cannot be read.
    """
    import cv2

    if is_webcam(source):
        return _iter_webcam(int(source), max_frames, webcam_seconds), max_frames, "webcam"
    path = Path(source)
    if not path.exists():
        raise CalibrationError(f"calibration input {path} does not exist: give a video file, a "
                               "folder of images, or a webcam index such as 0")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise CalibrationError(f"{path} holds no images ({', '.join(IMAGE_EXTENSIONS)}); put the "
                                   "photos of the board there or pass a video")
        if len(files) > max_frames:
            files = [files[i] for i in np.linspace(0, len(files) - 1, max_frames).round().astype(int)]

        def gen():
            for f in files:
                yield f.name, _read_rgb(f)
        return gen(), len(files), "images"
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return iter([(path.name, _read_rgb(path))]), 1, "images"
    from ram_avatar.capture.video import iter_frames, probe_video

    try:
        info = probe_video(path)
    except RamAvatarError as e:
        raise CalibrationError(f"cannot read calibration video {path}: {e}") from e
    n = info.frame_count
    keep = set(np.linspace(0, n - 1, min(n, max_frames)).round().astype(int).tolist())

    def gen():
        for i, rgb in enumerate(iter_frames(path)):
            if i in keep:
                yield f"frame {i}", rgb
    return gen(), len(keep), "video"


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise CalibrationError(f"cannot read image {path}: the file is corrupt or not an image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _iter_webcam(index: int, max_frames: int, seconds: float) -> Iterator[tuple[str, np.ndarray]]:
    """Grab up to ``max_frames`` frames spread over ``seconds`` from webcam ``index``."""
    import cv2

    cap = cv2.VideoCapture(index)
    if not cap.isOpened():
        cap.release()
        raise CalibrationError(f"cannot open webcam {index}: check that it is connected, not used by "
                               "another program, and that this user may access it (try another index)")
    try:
        t0 = time.time()
        interval = seconds / max(1, max_frames)
        last, got, failures = -1e9, 0, 0
        while got < max_frames and time.time() - t0 < seconds:
            ok, frame = cap.read()
            if not ok or frame is None:
                failures += 1
                if failures > 50:
                    raise CalibrationError(f"webcam {index} opened but delivers no frames")
                time.sleep(0.02)
                continue
            now = time.time()
            if now - last >= interval:
                last = now
                got += 1
                yield f"webcam {now - t0:.2f}s", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        if got == 0:
            raise CalibrationError(f"webcam {index} delivered no frame in {seconds:.0f} s")
    finally:
        cap.release()


# ---------------------------------------------------------------------------------------------
# view selection
# ---------------------------------------------------------------------------------------------

def _view_features(obj: np.ndarray, img: np.ndarray, width: int, height: int) -> np.ndarray:
    """[centroid x, centroid y, scale, normal x, normal y] of one board view (see module doc)."""
    import cv2

    c = img.mean(0) / np.array([width, height])
    hull = cv2.convexHull(img.astype(np.float32))
    scale = math.sqrt(max(cv2.contourArea(hull), 1.0) / (width * height))
    n = np.zeros(2)
    H, _ = cv2.findHomography(obj[:, :2].astype(np.float64), img.astype(np.float64))
    if H is not None:
        f = max(width, height) / (2 * math.tan(math.radians(55) / 2))
        Kn = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])
        M = np.linalg.solve(Kn, H)
        r1, r2 = M[:, 0] / np.linalg.norm(M[:, 0]), M[:, 1] / np.linalg.norm(M[:, 1])
        normal = np.cross(r1, r2)
        normal /= np.linalg.norm(normal) + 1e-12
        normal *= np.sign(normal[2]) or 1.0
        n = normal[:2]
    return np.array([c[0], c[1], scale, n[0], n[1]])


def select_views(features: np.ndarray, max_views: int) -> list[int]:
    """Greedy farthest-point selection of at most ``max_views`` rows of ``features`` (N, D).

    Starts from the view nearest the median feature and repeatedly adds the view farthest (in
    Euclidean distance) from every view chosen so far. Returns indices in selection order.
    """
    n = len(features)
    if n <= max_views:
        return list(range(n))
    first = int(np.argmin(np.linalg.norm(features - np.median(features, 0), axis=1)))
    chosen = [first]
    d = np.linalg.norm(features - features[first], axis=1)
    while len(chosen) < max_views:
        nxt = int(np.argmax(d))
        if d[nxt] <= 0:
            break
        chosen.append(nxt)
        d = np.minimum(d, np.linalg.norm(features - features[nxt], axis=1))
    return chosen


def _coverage(points: list[np.ndarray], width: int, height: int, grid: int = 4) -> float:
    cells = np.zeros((grid, grid), bool)
    for p in points:
        gx = np.clip((p[:, 0] / width * grid).astype(int), 0, grid - 1)
        gy = np.clip((p[:, 1] / height * grid).astype(int), 0, grid - 1)
        cells[gy, gx] = True
    return float(cells.mean())


# ---------------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------------

@dataclass
class _BoardViews:
    """The board detections of :func:`calibrate_camera`'s frames."""

    obj_pts: list = field(default_factory=list)   # (N, 3) board points of each view
    img_pts: list = field(default_factory=list)   # (N, 2) pixel corners of each view
    labels: list = field(default_factory=list)    # frame label of each view
    layouts: list = field(default_factory=list)   # ChArUco: the view matched the legacy layout
    size: tuple | None = None                     # (W, H) of the frames
    preview: tuple | None = None                  # (offset from centre, label, rgb) of the preview
    checked: int = 0                              # frames checked


def _find_board(det, frames, total: int, show_progress: bool) -> _BoardViews:
    """Detect the board in every frame; the frames must all have the same size."""
    from rich.console import Console

    v = _BoardViews()
    # progress on stderr: stdout carries the CLI's JSON summary
    with progress(disable=not show_progress, console=Console(stderr=True)) as bar:
        task = bar.add_task("finding the board", total=total, info="")
        for label, rgb in frames:
            gray = _gray(rgb)
            if v.size is None:
                v.size = gray.shape[::-1]
            elif gray.shape[::-1] != v.size:
                raise CalibrationError(f"{label} is {gray.shape[1]}x{gray.shape[0]} but earlier frames "
                                       f"are {v.size[0]}x{v.size[1]}: calibrate one camera mode at a time")
            v.checked += 1
            found = det.detect(gray)
            if found is not None:
                v.obj_pts.append(found[0])
                v.img_pts.append(found[1])
                v.labels.append(label)
                v.layouts.append(det.last_legacy)
                # preview frame: the view whose board is farthest from the image centre (the
                # distortion is largest there)
                off = float(np.linalg.norm(found[1].mean(0) / v.size - 0.5))
                if v.preview is None or off > v.preview[0]:
                    v.preview = (off, label, rgb)
            bar.update(task, advance=1, info=f"found in {len(v.labels)}")
    return v


def _check_views(v: _BoardViews, board: str, cols: int, rows: int, dictionary: str, det) -> None:
    """Raise :class:`CalibrationError` when no frame was read or fewer than MIN_VIEWS have the board."""
    checked, labels = v.checked, v.labels
    if not labels:
        if board == "checkerboard":
            hint = (f"check --cols/--rows are INNER corners, not squares (--cols {cols} --rows {rows} "
                    f"is a board of {cols + 1} x {rows + 1} squares; a board of {cols} x {rows} squares "
                    f"has {cols - 1} x {rows - 1} inner corners), that --board is right, and that the "
                    "whole board is visible, flat, sharp and evenly lit in some frames")
        else:
            hint = (f"check --cols/--rows are the board's SQUARES ({cols} x {rows} given), that "
                    f"--dictionary ({dictionary}) and --marker-mm match the printed board"
                    + ("; ArUco markers were seen, so the sizes or dictionary are likely wrong"
                       if det.markers_seen else "; no ArUco marker was seen at all"))
        raise CalibrationError(f"checked {checked} frames, found the board in 0: {hint}")
    if len(labels) < MIN_VIEWS:
        what = "only one view" if len(labels) == 1 else f"only {len(labels)} views"
        raise CalibrationError(
            f"{what} of the board among {checked} checked frames; calibration needs at least "
            f"{MIN_VIEWS} (10-20 recommended): show the board at different places in the image, "
            "distances and tilts (up to ~45 degrees)"
            + (f"; if the board is visible in more frames, check --cols/--rows ({cols} x {rows})"
               + (" are its INNER corners" if board == "checkerboard" else " are its squares")))


def _board_description(v: _BoardViews, det, board: str, cols: int, rows: int, square_mm: float,
                       marker_mm: float | None, dictionary: str) -> dict:
    """The board as written to camera.json; for ChArUco, keeps only the views of the layout
    (legacy or standard) that matched more often."""
    desc = {"type": board, "cols": int(cols), "rows": int(rows), "square_mm": float(square_mm)}
    if board == "charuco":
        desc.update(marker_mm=float(marker_mm if marker_mm is not None else 0.75 * square_mm),
                    dictionary=dictionary,
                    legacy_pattern=bool(det.legacy_hits > det.standard_hits))
        if det.legacy_hits and det.standard_hits:
            # keep the views of the layout that matched more often (the others are misreads)
            legacy = det.legacy_hits > det.standard_hits
            log.warning("both ChArUco layouts matched; keeping the %s one", "legacy" if legacy else "standard")
            keep = [i for i, lg in enumerate(v.layouts) if lg == legacy]
            v.obj_pts, v.img_pts, v.labels = ([a[i] for i in keep] for a in (v.obj_pts, v.img_pts, v.labels))
    return desc


def _calibrate_once(v: _BoardViews, idx, flags: int) -> tuple:
    """cv2.calibrateCameraExtended on the views ``idx``: (rms, K, dist, std, per-view RMS)."""
    import cv2

    objs = [v.obj_pts[i].reshape(-1, 1, 3).astype(np.float32) for i in idx]
    imgs = [v.img_pts[i].reshape(-1, 1, 2).astype(np.float32) for i in idx]
    try:
        out = cv2.calibrateCameraExtended(objs, imgs, v.size, None, None, flags=flags)
    except cv2.error as e:
        raise CalibrationError(f"OpenCV calibration failed on {len(idx)} views ({e.err}); the "
                               "views are probably too similar: tilt the board more") from e
    rms, K, dist, _, _, std, _, per_view = out
    return float(rms), K, dist.ravel(), std.ravel(), per_view.ravel()


def _calibrate_views(v: _BoardViews, chosen: list, flags: int) -> tuple:
    """Calibrate on ``chosen``, then once more without outlier views (RMS > 3x the median, at
    least 1 px) while MIN_VIEWS remain. Returns (chosen, rms, K, dist, std, per-view RMS)."""
    rms, K, dist, std, per_view = _calibrate_once(v, chosen, flags)
    med = float(np.median(per_view))
    bad = [i for i, e in zip(chosen, per_view) if e > max(3 * med, 1.0)]
    if bad and len(chosen) - len(bad) >= MIN_VIEWS:
        log.info("dropping %d outlier view(s) with RMS > %.2f px: %s", len(bad), max(3 * med, 1.0),
                 ", ".join(v.labels[i] for i in bad))
        chosen = [i for i in chosen if i not in bad]
        rms, K, dist, std, per_view = _calibrate_once(v, chosen, flags)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise CalibrationError("calibration produced an invalid camera matrix: use more and more "
                               "varied views of the board")
    return chosen, rms, K, dist, std, per_view


def calibrate_camera(input, board: str = "checkerboard", cols: int = 9, rows: int = 6,
                     square_mm: float = 25.0, marker_mm: float | None = None,
                     dictionary: str = "DICT_5X5_100", max_views: int = 40,
                     max_frames: int = 300, webcam_seconds: float = 30.0, fix_k3: bool = True,
                     show_progress: bool = True) -> dict:
    """Calibrate a camera from views of a planar board.

    Args:
        input: a video path, a folder of images, one image path, or a webcam index (int, or a
            string of digits that is not an existing path).
        board: ``checkerboard`` or ``charuco``.
        cols, rows: checkerboard INNER corners / ChArUco SQUARES (module docstring).
        square_mm: side of one square (mm); only scales the board, K does not depend on it.
        marker_mm: ChArUco marker side (mm), default 0.75 * square_mm.
        dictionary: ArUco dictionary of a ChArUco board (e.g. ``DICT_5X5_100``, ``DICT_4X4_50``).
        max_views: most views passed to cv2.calibrateCamera (chosen for coverage).
        max_frames: most frames checked for the board (spread evenly over a video or folder;
            for a webcam: frames grabbed, spread over ``webcam_seconds``).
        webcam_seconds: how long a webcam is recorded while the board is moved in front of it.
        fix_k3: keep the 6th-order radial term at 0 (stabler with few views or a narrow lens;
            set False for wide-angle lenses with many well-spread views).
        show_progress: rich progress bar over the checked frames.
    Returns:
        dict with ``K`` (3, 3) ndarray px, ``dist`` (5,) ndarray [k1, k2, p1, p2, k3],
        ``width``, ``height`` (px), ``rms`` (px, over all used corners), ``per_view_errors``
        (px, RMS per used view), ``views`` (labels of the used frames), ``frames_checked``,
        ``frames_with_board``, ``coverage`` (fraction of a 4x4 grid touched by corners),
        ``std`` (standard deviations of fx, fy, cx, cy, k1, k2, p1, p2, k3 from OpenCV),
        ``board`` (its description), ``source`` (the input as text), ``preview_frame`` (label of
        a frame with the board far from the centre) and ``preview_rgb`` (that frame, (H, W, 3)
        uint8 RGB; not written to camera.json), for :func:`undistortion_preview`.
    Raises:
        CalibrationError (a RamAvatarError): unreadable input, no board in any frame, fewer
            than 3 usable views, images of different sizes.
    """
    import cv2

    det = _Detector(board, cols, rows, square_mm, marker_mm, dictionary)
    frames, total, kind = _iter_images(input, max_frames, webcam_seconds)
    v = _find_board(det, frames, total, show_progress)
    if v.checked == 0:
        raise CalibrationError(f"no frame could be read from {input}")
    desc = _board_description(v, det, board, cols, rows, square_mm, marker_mm, dictionary)
    _check_views(v, board, cols, rows, dictionary, det)

    W, H = v.size
    feats = np.stack([_view_features(o, p, W, H) for o, p in zip(v.obj_pts, v.img_pts)])
    chosen = select_views(feats, max_views)
    flags = cv2.CALIB_FIX_K3 if fix_k3 else 0
    chosen, rms, K, dist, std, per_view = _calibrate_views(v, chosen, flags)
    dist5 = np.zeros(5)
    dist5[:min(5, len(dist))] = dist[:5]
    cov = _coverage([v.img_pts[i] for i in chosen], W, H)
    if cov < 0.5:
        log.warning("the board covered only %.0f%% of the image: distortion near the borders is "
                    "poorly constrained; also hold the board near the image corners", 100 * cov)
    names = ["fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3"]
    return {
        "K": K, "dist": dist5, "width": int(W), "height": int(H), "rms": rms,
        "per_view_errors": [float(e) for e in per_view], "views": [v.labels[i] for i in chosen],
        "frames_checked": int(v.checked), "frames_with_board": len(v.labels), "coverage": cov,
        "std": {n: float(s) for n, s in zip(names, std[:9])}, "board": desc, "source": str(input),
        "input_kind": kind, "fix_k3": bool(fix_k3),
        "preview_frame": v.preview[1], "preview_rgb": v.preview[2],
    }


def camera_json_dict(result: dict) -> dict:
    """The JSON-ready ``camera.json`` content of a :func:`calibrate_camera` result:
    ``K``, ``dist``, ``width``, ``height`` (what :func:`ram_avatar.io.camera.load_camera` reads)
    plus the diagnostics (``rms``, ``per_view_errors``, ``coverage``, ...)."""
    out = {"K": np.asarray(result["K"], float).tolist(),
           "dist": np.asarray(result["dist"], float).ravel().tolist(),
           "width": int(result["width"]), "height": int(result["height"])}
    for k, v in result.items():
        if k in out or k == "preview_rgb":
            continue
        if isinstance(v, np.ndarray):
            v = v.tolist()
        out[k] = v
    return out


def save_camera_json(result: dict, path: str | Path) -> Path:
    """Write a calibration result as ``camera.json`` atomically; returns the path.

    Raises:
        CalibrationError: the result has no valid K/width/height.
    """
    data = camera_json_dict(result)
    K = np.asarray(data["K"])
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise CalibrationError("cannot save a camera with an invalid K (3x3, positive focal lengths)")
    if data["width"] <= 0 or data["height"] <= 0:
        raise CalibrationError("cannot save a camera without a positive width and height")
    path = Path(path)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def undistortion_preview(image, K: np.ndarray, dist: np.ndarray, path: str | Path | None = None
                         ) -> np.ndarray:
    """Side-by-side ``original | undistorted`` image to judge a calibration by eye (straight
    edges in the world should be straight on the right).

    Args:
        image: (H, W, 3) RGB uint8, (H, W) gray, or the path of an image file.
        K: (3, 3) intrinsics; dist: distortion (4, 5, 8, ... coefficients, OpenCV order).
        path: if given, the PNG is written there atomically.
    Returns:
        (H, 2W, 3) RGB uint8 composite (the undistorted half keeps K, so the scale is the same).
    Raises:
        CalibrationError: the image file cannot be read, or the PNG cannot be encoded.
    """
    import cv2

    if isinstance(image, (str, Path)):
        bgr = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if bgr is None:
            raise CalibrationError(f"cannot read image {image}")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = np.ascontiguousarray(image[..., :3].astype(np.uint8))
    K = np.asarray(K, np.float64)
    dist = np.asarray(dist, np.float64).ravel()
    und = cv2.undistort(image, K, dist)
    h, w = image.shape[:2]
    out = np.concatenate([image, und], axis=1)
    scale = max(0.5, h / 720)
    for x, text in ((10, "original"), (w + 10, "undistorted")):
        org = (int(x), int(30 * scale))
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), int(4 * scale) + 1, cv2.LINE_AA)
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 0), max(1, int(2 * scale)), cv2.LINE_AA)
    out[:, w - 1:w + 1] = 255
    if path is not None:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
        if not ok:
            raise CalibrationError("could not encode the preview PNG")
        with atomic_path(path, suffix=".png") as tmp:
            tmp.write_bytes(buf.tobytes())
    return out
