"""``ram-avatar capture``: video -> FittedSequence (RAM-Avatar Sec. 3.1 / 4.1 preprocessing).

decode (PyAV) -> MediaPipe Holistic keypoints + selfie-segmentation masks -> person check ->
body fit (one shape, per-frame pose, batched) -> reprojection errors -> head-local face
template -> training crop -> write ``<subject>/sequence/`` atomically -> overlay video.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ram_avatar.body import load_body_model
from ram_avatar.body.base import BodyModel, BodyParams
from ram_avatar.capture.fitting import FitConfig, fit_sequence, reprojection_errors
from ram_avatar.capture.keypoints import Keypoints2D, check_person_found, detect_keypoints
from ram_avatar.capture.video import VideoWriter, iter_frames, probe_video
from ram_avatar.errors import VideoError
from ram_avatar.io.camera import camera_for_video, undistort_points
from ram_avatar.io.sequence import OVERLAY, SOURCE, FittedSequence
from ram_avatar.render.conditioning import face_to_head_local, fill_invalid
from ram_avatar.utils import progress, resolve_device, sha256_file

log = logging.getLogger(__name__)

#: a frame is used for training when its body reprojection error is below this (bbox fraction)
MAX_VALID_BODY_ERROR = 0.08


def undistort_keypoints(kp: Keypoints2D, K: np.ndarray, dist: np.ndarray) -> Keypoints2D:
    """Return keypoints with lens distortion removed (no-op when ``dist`` is zero)."""
    if not np.any(dist):
        return kp
    out = kp.subset(slice(None))
    for name in ("pose", "left_hand", "right_hand", "face"):
        arr = getattr(out, name).copy()
        arr[..., :2] = undistort_points(arr[..., :2], K, dist)
        setattr(out, name, arr)
    return out


def training_crop(kp: Keypoints2D, margin: float = 0.15) -> list[float]:
    """A fixed square crop ``[x0, y0, side]`` (pixels) containing the person in every frame.

    From the 1st-99th percentile extent of the visible pose keypoints over all frames (robust
    to a few wrong detections), enlarged by ``margin`` of the extent on each side (the head
    top and hair lie above the eye landmarks); the square may extend past the image (it is
    zero-padded when cropping).
    """
    vis = (kp.pose[..., 2] > 0.5) & kp.pose_valid[:, None]
    pts = kp.pose[vis][:, :2]
    if len(pts) == 0:
        raise ValueError("no visible pose keypoints to place the training crop")
    (x_lo, y_lo), (x_hi, y_hi) = np.percentile(pts, 1, axis=0), np.percentile(pts, 99, axis=0)
    side = max(x_hi - x_lo, y_hi - y_lo) * (1 + 2 * margin)
    cx, cy = (x_lo + x_hi) / 2, (y_lo + y_hi) / 2
    return [float(cx - side / 2), float(cy - side / 2), float(side)]


def _vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted vertex normals (B, V, 3) of meshes (B, V, 3) with faces (F, 3)."""
    v0, v1, v2 = (verts[:, faces[:, i]] for i in range(3))
    fn = torch.cross(v1 - v0, v2 - v0, dim=-1)
    n = torch.zeros_like(verts)
    for i in range(3):
        n.index_add_(1, faces[:, i], fn)
    return torch.nn.functional.normalize(n, dim=-1)


def write_overlay(path: Path, video: Path, start: int, end: int, fps: float, body: BodyModel,
                  params: BodyParams, kp: Keypoints2D, K: np.ndarray, backend: str = "auto",
                  chunk: int = 8) -> None:
    """Write a video of the fitted mesh (shaded, 60 % opacity) over the frames, with the
    MediaPipe body keypoints as green dots, so a person can judge the fit."""
    import cv2

    from ram_avatar.render.rasterizer import interpolate, rasterize

    info = probe_video(video)
    W, H = info.width, info.height
    Kt = torch.as_tensor(K, dtype=torch.float32, device=body.device)
    T = end - start
    frames = iter_frames(video, start, end)
    with VideoWriter(path, fps, (W, H)) as writer, progress() as bar:
        task = bar.add_task("overlay video", total=T, info="")
        for c0 in range(0, T, chunk):
            idx = torch.arange(c0, min(T, c0 + chunk))
            with torch.no_grad():
                out = body(params.index(idx).to(body.device))
                frags = rasterize(out.vertices, body.faces, Kt, (H, W), backend=backend)
                normals = interpolate(frags, _vertex_normals(out.vertices, body.faces))
            shade = (0.25 + 0.75 * (-normals[..., 2]).clamp(0, 1)).cpu().numpy()  # facing camera
            cover = (frags.face_id >= 0).cpu().numpy()
            for i, t in enumerate(idx.tolist()):
                frame = next(frames).astype(np.float32)
                tint = shade[i][..., None] * np.array([170.0, 200.0, 255.0])
                m = cover[i][..., None] * 0.6
                img = (frame * (1 - m) + tint * m).astype(np.uint8)
                if kp.pose_valid[t]:
                    for x, y, v in kp.pose[t]:
                        if v > 0.5:
                            cv2.circle(img, (int(x), int(y)), max(2, H // 240), (0, 255, 0), -1)
                writer.write(img)
                bar.advance(task)


@dataclass
class Tracked:
    """Result of :func:`track_video`: keypoints (undistorted), masks, fitted parameters."""

    info: object            # VideoInfo
    start: int
    end: int
    camera: dict            # K, dist, source (+ fov_deg / focal estimate)
    keypoints: Keypoints2D  # as detected (distorted pixels)
    keypoints_fit: Keypoints2D  # undistorted, what the body was fitted to
    masks: np.ndarray       # (T, H, W) uint8
    params: BodyParams
    errors: dict            # per-frame reprojection errors (fitting.reprojection_errors)
    face_local: np.ndarray  # (T, 478, 3) head-local face mesh (invalid frames filled)
    timings: dict


def track_video(video: str | Path, body: BodyModel, start: int = 0, end: int | None = None,
                camera: str | Path | None = None, device="cpu", fit_config: FitConfig | None = None,
                estimate_focal: bool = False, min_person_fraction: float = 0.5) -> Tracked:
    """Decode, detect keypoints and masks, fit ``body`` to every frame of ``video[start:end]``.

    Raises:
        VideoError: missing/corrupt video or an empty frame range.
        NoPersonError: no person found in most frames.
    """
    t0 = time.time()
    video = Path(video)
    info = probe_video(video)
    end = info.frame_count if end is None else min(int(end), info.frame_count)
    if not 0 <= start < end:
        raise VideoError(f"empty frame range [{start}, {end}) for {video} with {info.frame_count} frames; "
                         "check --start/--end")
    cam = camera_for_video(info.width, info.height, camera)
    timings = {}
    kp, masks = detect_keypoints(iter_frames(video, start, end), total=end - start)
    check_person_found(kp, min_person_fraction)
    timings["keypoints_s"] = time.time() - t0
    kp_fit = undistort_keypoints(kp, cam["K"], cam["dist"])
    if estimate_focal and camera is None:
        from ram_avatar.capture.focal import estimate_focal_for_capture

        K, entry = estimate_focal_for_capture(body, kp_fit, info.width, info.height, device)
        cam = {**cam, "K": np.asarray(K), "source": "estimated_focal", "focal_estimate": entry}
    t1 = time.time()
    params = fit_sequence(body, kp_fit, cam["K"], fit_config, device=device)
    timings["fit_s"] = time.time() - t1
    Kt = torch.as_tensor(cam["K"], dtype=torch.float32, device=device)
    errors = reprojection_errors(body, params, kp_fit, Kt)
    with torch.no_grad():
        head_T = body(params.to(device), return_vertices=False).head_transform.cpu().numpy()
    face_local = face_to_head_local(kp_fit.face, head_T, cam["K"])
    face_local = fill_invalid(face_local, kp.face_valid) if kp.face_valid.any() else np.zeros_like(face_local)
    return Tracked(info=info, start=start, end=end, camera=cam, keypoints=kp, keypoints_fit=kp_fit,
                   masks=masks, params=params, errors=errors, face_local=face_local, timings=timings)


def capture(video: str | Path, subject_dir: str | Path, start: int = 0, end: int | None = None,
            camera: str | Path | None = None, body_model: str = "anny", model_path=None,
            device: str = "auto", fit_config: FitConfig | None = None, overlay: bool = True,
            min_person_fraction: float = 0.5, estimate_focal: bool = False) -> FittedSequence:
    """Capture a subject from a monocular video.

    Args:
        video: input video path.
        subject_dir: output subject directory; ``sequence/`` is (re)written inside it.
        start, end: frame range [start, end) (``end=None``: to the last frame).
        camera: optional camera.json; default field of view otherwise (io.camera).
        body_model, model_path: body-model backend (``anny`` or ``smplx`` + files).
        device: ``auto``, ``cpu`` or ``cuda`` for the body fit.
        fit_config: FitConfig overrides.
        overlay: also write ``overlay.mp4``.
        min_person_fraction: fail when a person is found in fewer frames than this fraction.
        estimate_focal: without ``camera``, estimate the focal length from the video itself.
    Returns:
        The saved FittedSequence.
    Raises:
        VideoError: missing/corrupt video or an empty frame range.
        NoPersonError: no person in most frames.
        ModelFileError: body-model files missing.
    All outputs are first written to a temporary directory next to the destination and moved
    into place only when everything succeeded: a failure leaves no half-written sequence.
    """
    t0 = time.time()
    video = Path(video)
    dev = resolve_device(device)
    body = load_body_model(body_model, model_path=model_path, device=dev)
    tr = track_video(video, body, start, end, camera, dev, fit_config, estimate_focal, min_person_fraction)
    kp, errors, K, info, timings = tr.keypoints, tr.errors, tr.camera["K"], tr.info, tr.timings
    valid = kp.pose_valid & (np.nan_to_num(errors["body"], nan=1.0) < MAX_VALID_BODY_ERROR)

    def med(a):
        a = a[~np.isnan(a)]
        return float(np.median(a)) if len(a) else None

    cam = tr.camera
    manifest = {
        "source": {"name": video.name, "sha256": sha256_file(video), "start": int(tr.start), "end": int(tr.end),
                   "frame_count": info.frame_count},
        "fps": float(info.fps), "width": info.width, "height": info.height,
        "frames": int(tr.end - tr.start), "valid_frames": int(valid.sum()),
        "camera": {"K": np.asarray(K).tolist(), "dist": np.asarray(cam["dist"]).tolist(),
                   **{k: v for k, v in cam.items() if k not in ("K", "dist")}},
        "body_model": {"name": body.name, "num_betas": body.num_betas,
                       "num_body_joints": body.num_body_joints, "num_expression": body.num_expression,
                       "model_path": str(model_path) if model_path else None},
        "crop": training_crop(kp),
        "valid": valid.astype(int).tolist(),
        "reprojection_error": {
            "unit": "fraction of the person's bounding-box height",
            **{g: {"median": med(e), "per_frame": [None if np.isnan(x) else round(float(x), 5) for x in e]}
               for g, e in errors.items()}},
        "fit_config": (fit_config or FitConfig()).to_dict(),
        "timings": timings,
    }
    seq = FittedSequence(params=tr.params, keypoints=kp, valid=valid, face_local=tr.face_local,
                         manifest=manifest)

    subject_dir = Path(subject_dir)
    subject_dir.mkdir(parents=True, exist_ok=True)
    final = subject_dir / "sequence"
    tmp = Path(tempfile.mkdtemp(prefix=".sequence.", dir=subject_dir))
    try:
        seq.save(tmp, masks=tr.masks)
        shutil.copyfile(video, tmp / SOURCE)
        if overlay:
            t2 = time.time()
            write_overlay(tmp / OVERLAY, video, tr.start, tr.end, info.fps, body, tr.params,
                          tr.keypoints_fit, K)
            timings["overlay_s"] = time.time() - t2
        timings["total_s"] = time.time() - t0
        seq.manifest["timings"] = timings
        seq.save(tmp)
        if final.exists():
            old = subject_dir / f".sequence.old.{int(time.time())}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seq.root = final
    log.info("captured %d frames (%d valid), body reprojection median %.4f of bbox height, in %.0f s",
             seq.num_frames, valid.sum(), manifest["reprojection_error"]["body"]["median"] or float("nan"),
             timings["total_s"])
    return seq


def sequence_info(seq: FittedSequence) -> dict:
    """The summary printed by ``ram-avatar info``: frames, valid_frames, fps, body_model,
    reprojection_error medians (body, hands, face) and more."""
    m = seq.manifest
    return {
        "frames": seq.num_frames, "valid_frames": int(seq.valid.sum()), "fps": seq.fps,
        "width": m["width"], "height": m["height"], "body_model": m["body_model"]["name"],
        "camera": m["camera"]["source"],
        "reprojection_error": {g: m["reprojection_error"][g]["median"] for g in ("body", "hands", "face")},
        "source": m["source"]["name"], "frame_range": [m["source"]["start"], m["source"]["end"]],
        "timings": m.get("timings", {}),
    }
