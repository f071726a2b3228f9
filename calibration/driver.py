"""Driver-to-avatar calibration: the body shape of the person who will drive an avatar.

``ram-avatar calibrate driver SOURCE`` records (webcam) or decodes (video) the first few seconds
of the driver standing in view, detects MediaPipe keypoints, fits the body model with one shape
for all frames (:func:`ram_avatar.capture.fitting.fit_sequence`) and writes ``driver.json``::

    {"version": 1, "body_model": "anny", "betas": [6 floats], "frames_used": 72,
     "reprojection_error": 0.021, "height_m": 1.74, "fps": 30.0, "source": "me.mp4", ...}

``betas`` are the driver's shape coefficients (Anny: phenotype values in [0, 1]);
``reprojection_error`` is the median body reprojection error of the fit (fraction of the
person's bounding-box height); ``height_m`` the standing height (metres) of the rest-pose mesh of
these betas. Retargeting (``ram_avatar.runtime.retarget``) uses them to map the driver's
motion, fitted with the driver's own shape, onto the avatar's shape: without this the driver's
limb lengths would be forced onto the avatar's body during live tracking, which biases the
fitted joint angles. A good calibration clip shows the whole body, facing the camera, arms
slightly away from the torso (an A-pose), for 2-3 seconds.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from calibration.camera import is_webcam
from ram_avatar.errors import RamAvatarError
from ram_avatar.utils import atomic_write_text, resolve_device

log = logging.getLogger(__name__)

__all__ = ["DriverCalibrationError", "calibrate_driver", "save_driver_json", "load_driver_json",
           "rest_height_m", "DRIVER_VERSION"]

DRIVER_VERSION = 1
#: plausible standing heights (metres) of a calibrated driver
HEIGHT_RANGE_M = (0.5, 2.6)


class DriverCalibrationError(RamAvatarError):
    """driver.json is missing or invalid, or the driver clip could not be calibrated."""


def _grab_webcam(index: int, seconds: float) -> tuple[list[np.ndarray], float]:
    """Record ``seconds`` of RGB frames from webcam ``index``; returns (frames, measured fps)."""
    import cv2

    cap = cv2.VideoCapture(index)
    if not cap.isOpened():
        cap.release()
        raise DriverCalibrationError(f"cannot open webcam {index}: check that it is connected, not used "
                                     "by another program, and that this user may access it")
    frames, failures = [], 0
    try:
        # let exposure settle and skip the first black frames
        for _ in range(5):
            cap.read()
        t0 = time.time()
        while time.time() - t0 < seconds:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                failures += 1
                if failures > 50:
                    break
                time.sleep(0.02)
                continue
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        elapsed = time.time() - t0
    finally:
        cap.release()
    if not frames:
        raise DriverCalibrationError(f"webcam {index} opened but delivered no frame in {seconds:.1f} s")
    return frames, len(frames) / max(elapsed, 1e-6)


def rest_height_m(body, betas: torch.Tensor) -> float:
    """Standing height (metres) of the upright rest-pose mesh of ``betas`` (1, n_betas): the
    extent of the vertices along the camera's vertical axis (OpenCV y)."""
    with torch.no_grad():
        v = body.posed_vertices_rest(betas.to(body.device).reshape(1, -1))[0]
    return float(v[:, 1].max() - v[:, 1].min())


def calibrate_driver(source, seconds: float = 3.0, body_model: str = "anny", device="auto",
                     camera: str | Path | None = None, model_path=None, max_frames: int = 45,
                     fit_config=None, min_person_fraction: float = 0.5) -> dict:
    """Fit the driver's body shape from the first ``seconds`` of ``source``.

    Args:
        source: a video path or a webcam index (int, or a string of digits that is not a path).
        seconds: length of the clip used (from the start of the video / of the recording).
        body_model, model_path: body-model backend (``anny`` or ``smplx`` + its files).
        device: ``auto``, ``cpu`` or ``cuda`` for the fit.
        camera: optional camera.json of the driver's camera (default field of view otherwise).
        max_frames: at most this many frames (with a person) are fitted, spread over the clip.
        fit_config: FitConfig override (default: the capture schedule without the finger stage).
        min_person_fraction: fail when a person is found in fewer frames than this fraction.
    Returns:
        dict: ``version``, ``body_model``, ``betas`` (list of n_betas floats),
        ``frames_used`` (fitted frames), ``reprojection_error`` (median body error, fraction of
        bbox height), ``height_m`` (standing height of the rest mesh, metres), ``fps``,
        ``source``, ``seconds``, ``width``, ``height``, ``camera`` (its source).
    Raises:
        VideoError: missing or unreadable video.
        DriverCalibrationError: webcam cannot be opened, or a bad ``seconds``.
        NoPersonError: no person in most frames of the clip.
        ModelFileError: body-model files missing.
    """
    from ram_avatar.body import load_body_model
    from ram_avatar.capture.fitting import FitConfig, fit_sequence, reprojection_errors
    from ram_avatar.capture.keypoints import check_person_found, detect_keypoints
    from ram_avatar.capture.pipeline import undistort_keypoints
    from ram_avatar.io.camera import camera_for_video

    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise DriverCalibrationError(f"--seconds must be a positive number, got {seconds!r}")
    if is_webcam(source):
        frames, fps = _grab_webcam(int(source), float(seconds))
        H, W = frames[0].shape[:2]
        n = len(frames)
        frame_iter = iter(frames)
        src = f"webcam {int(source)}"
    else:
        from ram_avatar.capture.video import iter_frames, probe_video

        info = probe_video(source)
        fps, W, H = info.fps, info.width, info.height
        n = max(1, min(info.frame_count, int(round(seconds * fps))))
        if info.frame_count < seconds * fps - 1:
            log.warning("%s is only %.1f s long; using all of it", source, info.duration_s)
        frame_iter = iter_frames(source, 0, n)
        src = str(source)
    kp, _ = detect_keypoints(frame_iter, total=n)
    check_person_found(kp, min_person_fraction)
    dev = resolve_device(device)
    body = load_body_model(body_model, model_path=model_path, device=dev)
    cam = camera_for_video(W, H, camera)
    K = cam["K"]
    kp = undistort_keypoints(kp, K, cam["dist"])
    idx = np.nonzero(kp.pose_valid)[0]
    if len(idx) > max_frames:
        idx = idx[np.linspace(0, len(idx) - 1, max_frames).round().astype(int)]
    sub = kp.subset(idx)
    cfg = fit_config or FitConfig(iters_hands=0)
    params = fit_sequence(body, sub, K, cfg, device=dev)
    err = reprojection_errors(body, params, sub, torch.as_tensor(K, dtype=torch.float32, device=dev))["body"]
    err = err[~np.isnan(err)]
    betas = params.betas.reshape(1, -1)
    result = {
        "version": DRIVER_VERSION, "body_model": body.name,
        "betas": [float(b) for b in betas[0]],
        "frames_used": int(len(idx)),
        "reprojection_error": float(np.median(err)) if len(err) else float("nan"),
        "height_m": rest_height_m(body, betas),
        "fps": float(fps), "source": src, "seconds": float(min(seconds, n / fps)),
        "width": int(W), "height": int(H), "camera": cam["source"],
    }
    labels = getattr(getattr(body, "anny", None), "phenotype_labels", None)
    if labels is not None and len(labels) == len(result["betas"]):
        result["beta_names"] = [str(x) for x in labels]
    log.info("driver calibrated on %d frames: height %.2f m, body reprojection error %.4f",
             result["frames_used"], result["height_m"], result["reprojection_error"])
    return result


def _validate(data, where: str) -> dict:
    """Check a driver.json dict; raise DriverCalibrationError naming what is wrong."""
    from ram_avatar.body import BODY_MODELS

    def bad(msg):
        return DriverCalibrationError(f"{where}: {msg}; re-run `ram-avatar calibrate driver`")

    if not isinstance(data, dict):
        raise bad("not a JSON object")
    missing = [k for k in ("body_model", "betas", "frames_used", "reprojection_error", "height_m",
                           "fps", "source") if k not in data]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    if int(data.get("version", DRIVER_VERSION)) > DRIVER_VERSION:
        raise bad(f"version {data['version']} is newer than this ram-avatar understands ({DRIVER_VERSION})")
    if data["body_model"] not in BODY_MODELS:
        raise bad(f"unknown body_model {data['body_model']!r} (expected one of {', '.join(BODY_MODELS)})")
    try:
        betas = np.asarray(data["betas"], dtype=np.float64)
    except (TypeError, ValueError):
        raise bad("betas must be a list of numbers") from None
    if betas.ndim != 1 or len(betas) == 0 or not np.all(np.isfinite(betas)):
        raise bad("betas must be a non-empty list of finite numbers")
    if data["body_model"] == "anny":
        if len(betas) != 6:
            raise bad(f"an anny driver has 6 betas (phenotypes), got {len(betas)}")
        if betas.min() < 0 or betas.max() > 1:
            raise bad("anny betas (phenotype values) must lie in [0, 1]")
    try:
        h = float(data["height_m"])
        fps = float(data["fps"])
        n = int(data["frames_used"])
        err = float(data["reprojection_error"])
    except (TypeError, ValueError):
        raise bad("height_m, fps, reprojection_error must be numbers and frames_used an integer") from None
    if not (math.isfinite(h) and HEIGHT_RANGE_M[0] <= h <= HEIGHT_RANGE_M[1]):
        raise bad(f"height_m {data['height_m']} is not a plausible standing height "
                  f"({HEIGHT_RANGE_M[0]}-{HEIGHT_RANGE_M[1]} m)")
    if not (math.isfinite(fps) and fps > 0):
        raise bad(f"fps must be positive, got {data['fps']}")
    if n < 1:
        raise bad(f"frames_used must be at least 1, got {data['frames_used']}")
    if math.isnan(err) or err < 0:
        raise bad(f"reprojection_error must be a non-negative number, got {data['reprojection_error']}")
    out = dict(data)
    out["betas"] = [float(b) for b in betas]
    out["height_m"], out["fps"], out["frames_used"], out["reprojection_error"] = h, fps, n, err
    return out


def save_driver_json(result: dict, path: str | Path) -> Path:
    """Validate ``result`` (from :func:`calibrate_driver`) and write it as JSON atomically.

    Raises:
        DriverCalibrationError: the result is invalid (see :func:`load_driver_json`).
    """
    data = _validate(result, "driver calibration")
    path = Path(path)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def load_driver_json(path: str | Path, body_model: str | None = None) -> dict:
    """Read and validate a ``driver.json``.

    Args:
        path: the file.
        body_model: if given, the avatar's body model; a driver calibrated with another model
            is rejected (its betas mean something else).
    Returns:
        the validated dict (``betas`` a list of floats, numbers converted).
    Raises:
        DriverCalibrationError: missing file, invalid JSON, missing or invalid fields, or a
            different body model.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DriverCalibrationError(f"driver calibration {path} not found; create it with "
                                     "`ram-avatar calibrate driver SOURCE -o driver.json`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DriverCalibrationError(f"{path} is not valid JSON ({e}); re-run `ram-avatar calibrate driver`") from None
    data = _validate(data, str(path))
    if body_model is not None and data["body_model"] != body_model:
        raise DriverCalibrationError(
            f"{path} was calibrated with the {data['body_model']} body model but the avatar uses "
            f"{body_model}; re-run `ram-avatar calibrate driver --body-model {body_model}`")
    return data
