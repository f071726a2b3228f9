"""Focal length from the video itself, for captures without a calibrated camera.

Method (a self-calibration through the body fit). The focal length f is treated as one more
free parameter of the body fit, shared by all frames, and found by a 1-D search over the
horizontal field of view (FOV, across the longer image side) of 30..90 degrees:

1. pick ``frames`` (about 40) frames spread over the video among those with a valid pose and
   most body landmarks visible;
2. for a candidate focal f, fit the body to them (one shape, per-frame pose) with
   :func:`ram_avatar.capture.fitting.fit_sequence` at K(f), from its own initialisation, with a
   shortened schedule (torso, then body + shape; no fingers) and without the temporal terms
   (the frames are far apart in time). Every candidate gets the same schedule from scratch, so
   none is favoured: warm-starting all candidates from one fit at the default focal (translations
   scaled by f / f_55, the same weak-perspective image) was tried and always picked the starting
   focal, because re-arranging the limbs in depth for another focal takes many iterations;
3. score f by the median over frames of the per-frame median body reprojection error
   (:func:`ram_avatar.capture.fitting.reprojection_errors`, fraction of the bbox height);
4. evaluate a coarse grid (7 FOVs, plus the default 55 degrees) and refine the bracket of the
   best grid point by golden-section search (3 more fits).

Why it can work: under a pinhole camera a body of fixed 3-D size (one shape for the whole
video, kept near the average human by the shape prior) at depth Z spans ``f * size / Z``
pixels, so image size alone only fixes f / Z; f itself is seen only through *perspective*:
parts of the body nearer to the camera (an arm reaching forward, the near shoulder of a turned
torso, the feet seen from above) are magnified by Z / (Z - dZ). The strength of that effect is
``dZ * h_px / (f * H_body)``, so a wrong f leaves a systematic residual that a rigid body with
fixed bone lengths cannot absorb; summing over many frames with different poses, orientations
and distances averages the keypoint noise down.

Limits. The cue is second order: it scales with the depth extent of the body over its distance
(dZ / Z). For a subject several metres away, facing the camera with the limbs in the image
plane, the problem is ill-conditioned (weak perspective: many focal lengths fit equally well)
and the error curve is flat to within the keypoint noise. The search therefore also reports
``relative_gain`` (how much lower the median error is at the best focal than at the default)
and ``frames_improved`` (the fraction of frames that fit better there);
:func:`estimate_focal_for_capture` keeps the default FOV, and says so, unless both show a
consistent improvement. Model mismatch between MediaPipe's landmarks and the body model's
joints is also absorbed partly by perspective, which can bias the estimate on real videos. The body's
absolute size comes from the shape prior, so a very tall or short subject biases the depth,
not f. The lens is assumed distortion-free with a centred principal point and square pixels;
calibrate the camera (``ram-avatar calibrate camera``) whenever possible.

Measured. Synthetic keypoints of a posed Anny body (12 frames, subject 1.5-2.5 m away, turned
up to +-34 degrees, arms moved in depth, no noise; tests/test_focal.py): true FOV 66 degrees
-> 64.7 (f +2.5 %), 48 -> 47.6 (f +0.9 %). With Gaussian keypoint noise of only 0.5 % of the
bbox height the curve is already flat and a 66-degree camera came out at 40 degrees (declined by
:func:`estimate_focal_for_capture`: 50 % of frames improved). The per-frame pose (105 angles)
has more freedom than the ~27 visible 2-D landmarks constrain, so the fit absorbs most of the
perspective. examples/taiji.mp4 (cached keypoints, 40 frames, default settings, 11 fits,
64 s on one CPU thread): median body error 0.00158-0.00175 of the bbox height over the whole
30-90 degree range; minimum at 60 degrees, 3.4 % below the default, but only 38 % of the frames
fit better there, so the estimate is declined. Full-sequence fits of all 412 frames (default
FitConfig): median body error 0.00224 at 55 degrees vs 0.00226 at 60 degrees (+1.2 %), i.e. the
focal length does not measurably change the fit of that video. Cost: one shortened fit of the
selected frames per candidate (11 by default), about a minute on CPU for 40 frames.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from ram_avatar.body.base import BODY_LANDMARKS, BodyModel
from ram_avatar.capture.fitting import FitConfig, fit_sequence, reprojection_errors
from ram_avatar.capture.keypoints import Keypoints2D
from ram_avatar.errors import NoPersonError
from ram_avatar.io.camera import DEFAULT_FOV_DEG, default_intrinsics
from ram_avatar.utils import progress, resolve_device

log = logging.getLogger(__name__)

__all__ = ["estimate_focal", "estimate_focal_for_capture", "select_focal_frames", "fov_to_focal",
           "focal_to_fov", "FOV_RANGE_DEG"]

#: searched horizontal field of view (degrees, across the longer image side)
FOV_RANGE_DEG = (30.0, 90.0)
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def fov_to_focal(fov_deg: float, width: int, height: int) -> float:
    """Focal length (px) whose FOV across the longer image side is ``fov_deg``."""
    return max(width, height) / (2.0 * math.tan(math.radians(fov_deg) / 2.0))


def focal_to_fov(focal_px: float, width: int, height: int) -> float:
    """FOV (degrees) across the longer image side of a focal length ``focal_px``."""
    return math.degrees(2.0 * math.atan(max(width, height) / (2.0 * focal_px)))


def select_focal_frames(kp: Keypoints2D, count: int = 40, min_visible: int = 10,
                        min_visibility: float = 0.5) -> np.ndarray:
    """Indices (<= count,) of frames spread evenly over the video among those with a valid pose
    and at least ``min_visible`` of the body landmarks above ``min_visibility``.

    Raises:
        NoPersonError: fewer than 3 such frames.
    """
    vis = (kp.pose[:, BODY_LANDMARKS, 2] > min_visibility).sum(1)
    good = np.nonzero(kp.pose_valid & (vis >= min_visible))[0]
    if len(good) < 3:
        raise NoPersonError(f"only {len(good)} frames show most of the body clearly; the focal length "
                            "cannot be estimated: record the whole body, or pass a camera.json")
    if len(good) <= count:
        return good
    return good[np.linspace(0, len(good) - 1, count).round().astype(int)]


def estimate_focal(body: BodyModel, kp: Keypoints2D, width: int, height: int, frames=40,
                   fov_range: tuple[float, float] = FOV_RANGE_DEG, grid: int = 7,
                   golden_iters: int = 3, fit_config: FitConfig | None = None, device="cpu",
                   show_progress: bool = True) -> dict:
    """Estimate the focal length of the camera that filmed ``kp`` (see the module docstring).

    Args:
        body: body model (on ``device``).
        kp: Keypoints2D (T frames, pixels; undistorted if the lens distortion is known).
        width, height: frame size in pixels.
        frames: number of frames to use (spread over the video), or an explicit index array.
        fov_range: searched horizontal FOV (degrees, across the longer image side).
        grid: number of FOVs of the coarse grid (evenly spaced over ``fov_range``); the default
            FOV (55 degrees) is always evaluated too.
        golden_iters: fits of the golden-section search inside the bracket of the best grid
            point (0: grid only; otherwise at least 2).
        fit_config: schedule of every candidate's fit (default: 30 torso + 120 body iterations,
            no fingers, no temporal terms).
        device: torch device of the fits.
        show_progress: rich progress bar over the candidate fits.
    Returns:
        dict ``focal_px`` (float), ``fov_deg`` (float, across the longer side), ``method`` (str),
        ``errors_by_focal`` (list of ``{"fov_deg", "focal_px", "median_error", "mean_error"}``
        sorted by FOV; errors are fractions of the bbox height), ``default_error`` (median error
        at the default FOV), ``relative_gain`` (``1 - best / default``), ``frames_improved``
        (fraction of the frames whose error is lower at the best focal than at the default),
        ``frames`` (the indices used), ``fits`` (number of fits run).
    Raises:
        NoPersonError: too few frames with a clearly visible body.
    """
    device = torch.device(device)
    idx = (select_focal_frames(kp, int(frames)) if np.ndim(frames) == 0
           else np.asarray(frames, dtype=int))
    sub = kp.subset(idx)
    # the frames are far apart in time: no temporal smoothness terms
    cfg = fit_config or FitConfig(iters_global=30, iters_body=120, iters_hands=0, w_acc=0.0, w_vel=0.0)
    cache: dict[float, dict] = {}
    per_frame: dict[float, np.ndarray] = {}

    def evaluate(fov: float) -> float:
        fov = float(round(fov, 3))
        if fov not in cache:
            f = fov_to_focal(fov, width, height)
            K = default_intrinsics(width, height, fov)
            p = fit_sequence(body, sub, K, cfg, device=device, show_progress=False)
            e = reprojection_errors(body, p, sub, torch.as_tensor(K, dtype=torch.float32, device=device))["body"]
            ok = e[~np.isnan(e)]
            per_frame[fov] = e
            cache[fov] = {"fov_deg": fov, "focal_px": f, "median_error": float(np.median(ok)),
                          "mean_error": float(np.mean(ok))}
            log.debug("focal search: FOV %.2f deg, f %.1f px -> median body error %.5f", fov, f,
                      cache[fov]["median_error"])
            bar.update(task, advance=1, info=f"{fov:.1f} deg: {cache[fov]['median_error']:.4f}")
        return cache[fov]["median_error"]

    lo, hi = map(float, fov_range)
    fovs = np.linspace(lo, hi, grid)
    with progress(disable=not show_progress) as bar:
        task = bar.add_task("focal search", total=grid + golden_iters + 3, info="")
        default_err = evaluate(DEFAULT_FOV_DEG)
        errs = [evaluate(v) for v in fovs]
        i = int(np.argmin(errs))
        a, b = fovs[max(i - 1, 0)], fovs[min(i + 1, grid - 1)]
        # golden-section search on the bracket around the best grid point
        if golden_iters > 0:
            c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
            fc, fd = evaluate(c), evaluate(d)
        for _ in range(max(0, golden_iters - 2)):
            if fc < fd:
                b, d, fd = d, c, fc
                c = b - _GOLDEN * (b - a)
                fc = evaluate(c)
            else:
                a, c, fc = c, d, fd
                d = a + _GOLDEN * (b - a)
                fd = evaluate(d)
        bar.update(task, total=len(cache), completed=len(cache))
    table = sorted(cache.values(), key=lambda r: r["fov_deg"])
    best = min(table, key=lambda r: r["median_error"])
    gain = 1.0 - best["median_error"] / default_err if default_err > 0 else 0.0
    eb, ed = per_frame[best["fov_deg"]], per_frame[round(DEFAULT_FOV_DEG, 3)]
    both = ~np.isnan(eb) & ~np.isnan(ed)
    improved = float(np.mean(eb[both] < ed[both])) if both.any() else 0.0
    return {
        "focal_px": best["focal_px"], "fov_deg": best["fov_deg"],
        "method": (f"body-fit self-calibration: one fit per candidate focal ({grid}-point grid over a "
                   f"horizontal FOV of {lo:g}-{hi:g} deg + golden-section refinement), {len(idx)} "
                   "frames, minimum of the median body reprojection error"),
        "errors_by_focal": table, "default_error": default_err, "relative_gain": gain,
        "frames_improved": improved, "frames": [int(i) for i in idx], "fits": len(cache),
    }


def estimate_focal_for_capture(body: BodyModel, kp: Keypoints2D, width: int, height: int,
                               device="auto", min_gain: float = 0.05, min_frames_improved: float = 0.6,
                               **kwargs) -> tuple[np.ndarray, dict]:
    """Focal estimation as the capture pipeline uses it (``ram-avatar capture --estimate-focal``).

    Runs :func:`estimate_focal` and returns the camera to fit with plus the manifest entry. The
    estimate is accepted only when it lowers the median body reprojection error by at least
    ``min_gain`` (relative) AND fits at least ``min_frames_improved`` of the frames better than
    the default FOV; otherwise the problem is ill-conditioned for this video (weak perspective,
    keypoint noise) and the default FOV is kept.

    Args:
        body, kp, width, height: as :func:`estimate_focal` (kp undistorted if dist is known).
        device: ``auto``, ``cpu``, ``cuda`` or a torch.device.
        min_gain, min_frames_improved: acceptance thresholds, see above.
        **kwargs: passed to :func:`estimate_focal` (frames, fov_range, grid, ...).
    Returns:
        ``(K (3, 3) ndarray, manifest_entry)`` where ``manifest_entry`` is a JSON-ready dict for
        ``manifest["camera"]``: ``K``, ``dist`` (zeros), ``source`` (``"estimated_focal"`` or
        ``"default_fov"``), ``fov_deg``, and ``focal_estimate`` (the search's details plus
        ``accepted`` and the thresholds).
    Raises:
        NoPersonError: too few frames with a clearly visible body.
    """
    est = estimate_focal(body, kp, width, height, device=resolve_device(device), **kwargs)
    accepted = est["relative_gain"] >= min_gain and est["frames_improved"] >= min_frames_improved
    fov = est["fov_deg"] if accepted else DEFAULT_FOV_DEG
    K = default_intrinsics(width, height, fov)
    best_err = min(r["median_error"] for r in est["errors_by_focal"])
    if accepted:
        log.info("estimated focal %.0f px (FOV %.1f deg): median body error %.4f vs %.4f at the "
                 "default %.0f deg, %.0f%% of frames fit better", est["focal_px"], fov, best_err,
                 est["default_error"], DEFAULT_FOV_DEG, 100 * est["frames_improved"])
    else:
        log.warning("focal estimation is ill-conditioned for this video (best FOV %.1f deg lowers the "
                    "median error by %.1f%%, %.0f%% of frames fit better); keeping the default %.0f deg "
                    "FOV: calibrate the camera for an accurate focal", est["fov_deg"],
                    100 * est["relative_gain"], 100 * est["frames_improved"], DEFAULT_FOV_DEG)
    entry = {"K": K.tolist(), "dist": [0.0] * 5,
             "source": "estimated_focal" if accepted else "default_fov", "fov_deg": float(fov),
             "focal_estimate": {**est, "accepted": bool(accepted), "min_gain": float(min_gain),
                                "min_frames_improved": float(min_frames_improved)}}
    return K, entry
