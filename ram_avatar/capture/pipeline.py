"""``ram-avatar capture``: video -> FittedSequence (RAM-Avatar Sec. 3.1 / 4.1 preprocessing).

decode (PyAV) -> MediaPipe Holistic keypoints + person masks -> person check ->
body fit (one shape, per-frame pose, batched) -> reprojection errors -> head-local face
template -> training crop -> write ``<subject>/sequence/`` atomically -> overlay video.

One subject folder holds one sequence: capturing into a folder that already holds a subject
(``sequence/``, ``runs/``, ``export/``, ``mda/``) is refused unless ``overwrite`` says whether to
move the old ones aside (into ``replaced-<time>/``) or remove them, and that happens only once
the new sequence is complete. A capture holds the subject's lock (``.capture.lock``), removes
the temporary folders of a killed earlier capture, and turns a full disk into one
:class:`~ram_avatar.errors.DiskFullError` that leaves nothing behind.
"""

from __future__ import annotations

import json
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
from ram_avatar.capture.keypoints import (PERSON_MASK_SOURCE, Keypoints2D, check_person_found,
                                          detect_keypoints, detected_height, find_small_person,
                                          too_small_error)
from ram_avatar.capture.video import VideoWriter, iter_frames, probe_video
from ram_avatar.errors import CaptureError, DiskFullError, NoPersonError, VideoError
from ram_avatar.io.camera import camera_for_video, undistort_points
from ram_avatar.io.disk import fmt_bytes, free_bytes, is_disk_full
from ram_avatar.io.lock import FolderLock
from ram_avatar.io.masks import PersonMasks
from ram_avatar.io.sequence import MANIFEST, OVERLAY, SEQUENCE_DIR, SOURCE, FittedSequence
from ram_avatar.render.conditioning import face_to_head_local, fill_invalid
from ram_avatar.render.texture_bake import bake_capture_texture
from ram_avatar.utils import progress, resolve_device, sha256_file

log = logging.getLogger(__name__)

#: a frame is used for training when its body reprojection error is below this (bbox fraction)
MAX_VALID_BODY_ERROR = 0.08
#: capture fails when fewer than this fraction of the frames are valid (training needs them)
MIN_VALID_FRACTION = 0.5
#: the whole-frame detector's bodies, where found, are at least this fraction of the frame tall:
#: a failed capture is then a person out of view, not one too small (no zoomed-in search)
LARGE_PERSON = 0.25
#: folders of a subject derived from its sequence (replaced together with it)
SUBJECT_PARTS = ("sequence", "runs", "export", "mda")
#: ``capture(overwrite=...)`` choices
OVERWRITE_MODES = ("move", "remove")


def existing_subject_parts(subject_dir: str | Path) -> list[str]:
    """Names of :data:`SUBJECT_PARTS` present in ``subject_dir`` (empty: a new subject)."""
    d = Path(subject_dir)
    return [n for n in SUBJECT_PARTS if (d / n).exists()]


def check_output_folder(subject_dir: str | Path, overwrite: str | None) -> list[str]:
    """Refuse to capture into a folder that already holds a subject, unless ``overwrite``.

    Args:
        subject_dir: the ``capture -o`` folder.
        overwrite: None (refuse), ``"move"`` or ``"remove"`` (see :func:`capture`).
    Returns:
        the existing subject parts (to replace when the capture succeeds).
    Raises:
        CaptureError: the folder holds a subject and ``overwrite`` is None; or a bad mode.
    """
    if overwrite is not None and overwrite not in OVERWRITE_MODES:
        raise CaptureError(f"overwrite must be one of {OVERWRITE_MODES}, got {overwrite!r}")
    parts = existing_subject_parts(subject_dir)
    if parts and overwrite is None:
        what = ", ".join(f"{p}/" for p in parts)
        src = ""
        try:
            m = json.loads((Path(subject_dir) / SEQUENCE_DIR / MANIFEST).read_text())
            src = f" (captured from {m['source']['name']}, frames {m['source']['start']}-{m['source']['end']})"
        except Exception:  # noqa: BLE001 - only for the message
            pass
        raise CaptureError(
            f"{subject_dir} already holds a subject{src}: {what}. Its runs and export belong to "
            "that sequence, so capturing another video into it would mix them up. Capture into "
            "a new folder, or add --overwrite (moves the old sequence, runs and export into "
            f"{subject_dir}/replaced-<time>/) or --overwrite remove (deletes them); either "
            "happens only after the new capture succeeded.")
    return parts


def remove_stale_temporaries(subject_dir: str | Path) -> list[Path]:
    """Remove ``.sequence.*`` folders left by a capture that was killed (kill -9, power loss).

    Call only while holding the subject's capture lock (no other capture is writing them).

    Returns:
        the folders removed.
    """
    removed = []
    d = Path(subject_dir)
    if not d.is_dir():
        return removed
    for p in d.glob(".sequence.*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
            log.info("removed %s, left behind by an interrupted capture", p)
    return removed


def _folder_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) if d.is_dir() else 0


def other_people(masks: np.ndarray, kp: Keypoints2D, min_area_ratio: float = 0.3,
                 min_fraction: float = 0.2, step: int = 1) -> dict:
    """Find person-sized regions of the segmentation outside the fitted person.

    MediaPipe Holistic tracks one person, while selfie segmentation marks everyone. In each
    (``step``-th, or each given) frame with a pose, the mask (> 50 %) is split into connected
    components (OpenCV); the component overlapping the person's pose keypoint box most is the tracked
    person; any other component with at least ``min_area_ratio`` of its area and lying mostly
    outside that box counts as another person.

    Args:
        masks: (T, H, W) uint8 masks of everyone in view, 0..255, or {frame index: (H, W)
            mask} for some frames (``step`` is then ignored).
        kp: keypoints of the T frames (pixels).
        min_area_ratio: smallest area of another region relative to the tracked person.
        min_fraction: fraction of the checked frames another person must be in to count as
            persisting (brief passers-by are ignored).
        step: check every ``step``-th frame (speed).
    Returns:
        dict ``frames`` (frames with another person), ``checked``, ``fraction``, ``persists``
        (bool) and ``box`` [x0, y0, x1, y1] px: the union of the tracked person's keypoint
        boxes over the frames with another person (what to crop to), or None.
    """
    import cv2

    frames = sorted(masks) if isinstance(masks, dict) else range(0, len(masks), max(1, step))
    hits, checked = 0, 0
    boxes = []
    for t in frames:
        if not kp.pose_valid[t]:
            continue
        vis = kp.pose[t, :, 2] > 0.5
        if vis.sum() < 4:
            continue
        checked += 1
        pts = kp.pose[t, vis, :2]
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        pad = 0.15 * max(x1 - x0, y1 - y0)
        H, W = masks[t].shape
        bx0, by0 = int(max(0, x0 - pad)), int(max(0, y0 - pad))
        bx1, by1 = int(min(W, x1 + pad)) + 1, int(min(H, y1 + pad)) + 1
        n, labels, stats, _ = cv2.connectedComponentsWithStats((masks[t] > 127).astype(np.uint8), connectivity=8)
        if n <= 2:
            continue
        inside = np.bincount(labels[by0:by1, bx0:bx1].ravel(), minlength=n)
        inside[0] = 0
        me = int(np.argmax(inside))
        if inside[me] == 0:
            continue
        area = stats[:, cv2.CC_STAT_AREA]
        for c in range(1, n):
            if c != me and area[c] >= min_area_ratio * area[me] and inside[c] < 0.5 * area[c]:
                hits += 1
                boxes.append((bx0, by0, bx1, by1))
                break
    frac = hits / checked if checked else 0.0
    box = None
    if boxes:
        b = np.array(boxes)
        box = [int(b[:, 0].min()), int(b[:, 1].min()), int(b[:, 2].max()), int(b[:, 3].max())]
    return {"frames": hits, "checked": checked, "fraction": round(frac, 3),
            "persists": bool(hits and frac >= min_fraction), "box": box}


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


def write_overlay(path: Path, video: Path, start: int, end: int, fps: float, body: BodyModel,
                  params: BodyParams, kp: Keypoints2D, K: np.ndarray, backend: str = "auto",
                  chunk: int = 8, max_side: int = 1280) -> None:
    """Write a video of the fitted mesh (shaded, 60 % opacity) over the frames, with the
    MediaPipe body keypoints as green dots, so a person can judge the fit.

    A video larger than ``max_side`` pixels on its long side is drawn and written at that
    size (frames resized with ``cv2.INTER_AREA``, the intrinsics and keypoints scaled alike,
    as :func:`~ram_avatar.render.conditioning.crop_intrinsics` does): the overlay is for
    judging the fit, and at 4K the rasterising and encoding took 651 ms per frame, more than
    the tracking.

    The shade (the facing ratio ``-n_z`` of the interpolated vertex normals) is rendered as a
    per-corner attribute (:func:`~ram_avatar.render.rasterizer.rasterize_attribute`: OpenGL
    interpolates it where moderngl runs) and blended over the covered pixels only. The former
    face-id + barycentric read-back, the Python gather of the normals and the full-frame float
    blend took about 240 ms per 720p frame, most of a long capture's overlay time.
    """
    import cv2

    from ram_avatar.render.conditioning import vertex_normals
    from ram_avatar.render.rasterizer import rasterize_attribute

    info = probe_video(video)
    s = min(1.0, max_side / max(info.width, info.height))
    W, H = (info.width, info.height) if s == 1.0 else (
        2 * round(info.width * s / 2), 2 * round(info.height * s / 2))
    sx, sy = W / info.width, H / info.height
    K = np.array(K, dtype=np.float64)
    K[0] *= sx
    K[1] *= sy
    Kt = torch.as_tensor(K, dtype=torch.float32, device=body.device)
    faces = body.faces
    colour = np.array([170.0, 200.0, 255.0], np.float32)
    T = end - start
    frames = iter_frames(video, start, end)
    with VideoWriter(path, fps, (W, H)) as writer, progress() as bar:
        task = bar.add_task("overlay video", total=T, info="")
        for c0 in range(0, T, chunk):
            idx = torch.arange(c0, min(T, c0 + chunk))
            with torch.no_grad():
                out = body(params.index(idx).to(body.device))
                facing = -vertex_normals(out.vertices, faces)[..., 2]                 # (B, V)
            for i, t in enumerate(idx.tolist()):
                with torch.no_grad():
                    nz, cover = rasterize_attribute(out.vertices[i:i + 1], faces, Kt, (H, W),
                                                    facing[i][faces][..., None], backend=backend)
                cover = cover[0].cpu().numpy()
                img = np.array(next(frames), dtype=np.uint8)
                if s != 1.0:
                    img = cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA)
                shade = 0.25 + 0.75 * nz[0, ..., 0].clamp(0, 1).cpu().numpy()[cover]    # (N,)
                img[cover] = (img[cover].astype(np.float32) * 0.4
                              + (shade[:, None] * colour) * 0.6).astype(np.uint8)
                if kp.pose_valid[t]:
                    for x, y, v in kp.pose[t]:
                        if v > 0.5:
                            cv2.circle(img, (int(x * sx), int(y * sy)), max(2, H // 240),
                                       (0, 255, 0), -1)
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
    masks: PersonMasks      # (T, H, W) uint8, the tracked person (a temporary file: close it)
    params: BodyParams
    errors: dict            # per-frame reprojection errors (fitting.reprojection_errors)
    face_local: np.ndarray  # (T, 478, 3) head-local face mesh (invalid frames filled)
    timings: dict
    everyone: dict          # {frame: (H, W) uint8 mask of everyone in view}, every ~T/100-th frame


def track_video(video: str | Path, body: BodyModel, start: int = 0, end: int | None = None,
                camera: str | Path | None = None, device="cpu", fit_config: FitConfig | None = None,
                estimate_focal: bool = False, min_person_fraction: float = 0.5) -> Tracked:
    """Decode, detect keypoints and masks, fit ``body`` to every frame of ``video[start:end]``.

    The person masks are written to a temporary file as they are made (a long video's do not
    fit in memory) and read back frame by frame: close ``Tracked.masks`` when done, which
    removes the file.

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
    everyone: dict[int, np.ndarray] = {}
    kp, masks = detect_keypoints(iter_frames(video, start, end), total=end - start,
                                 everyone=everyone, everyone_every=max(1, (end - start) // 100))
    timings = {}
    try:  # the masks' temporary file goes with a failure
        try:
            check_person_found(kp, min_person_fraction, first_frame=start)
        except NoPersonError:
            if detected_height(kp, info.height) >= LARGE_PERSON:
                # where a person was found they were large: the others lack one because the person
                # left the frame (or was hidden), not because they are too small
                raise
            # a person far from the camera is missed by the whole-frame detector: look closer
            picks = set(np.linspace(0, end - start - 1, min(3, end - start)).astype(int).tolist())
            sample = [f for i, f in enumerate(iter_frames(video, start, start + max(picks) + 1)) if i in picks]
            small = find_small_person(sample)
            if small is not None:
                raise too_small_error(small, int(kp.pose_valid.sum()), kp.num_frames, info.width,
                                      info.height) from None
            raise
        timings["keypoints_s"] = time.time() - t0
        kp_fit = undistort_keypoints(kp, cam["K"], cam["dist"])
        if estimate_focal and camera is None:
            from ram_avatar.capture.focal import estimate_focal_for_capture

            K, entry = estimate_focal_for_capture(body, kp_fit, info.width, info.height, device)
            cam = {**cam, "K": np.asarray(K), "source": "estimated_focal", "focal_estimate": entry}
        t1 = time.time()
        params = fit_sequence(body, kp_fit, cam["K"], fit_config, device=device, masks=masks,
                              dist=np.asarray(cam["dist"]))
        timings["fit_s"] = time.time() - t1
        Kt = torch.as_tensor(cam["K"], dtype=torch.float32, device=device)
        errors = reprojection_errors(body, params, kp_fit, Kt)
        with torch.no_grad():
            head_T = body(params.to(device), return_vertices=False).head_transform.cpu().numpy()
        face_local = face_to_head_local(kp_fit.face, head_T, cam["K"])
        face_local = fill_invalid(face_local, kp.face_valid) if kp.face_valid.any() else np.zeros_like(face_local)
        return Tracked(info=info, start=start, end=end, camera=cam, keypoints=kp, keypoints_fit=kp_fit,
                       masks=masks, params=params, errors=errors, face_local=face_local,
                       timings=timings, everyone=everyone)
    except BaseException:
        masks.close()
        raise


def _resolve_body_model(body_model: str, model_path, dev: torch.device) -> tuple:
    """Load the body model; an SMPL-X file is first imported into the model cache.

    Returns (body model, model_path as the manifest names it: a ``sha256:`` reference for SMPL-X)."""
    if body_model == "smplx" and model_path is not None and not str(model_path).startswith("sha256:"):
        from ram_avatar.body.smplx_backend import import_smplx_model

        # into the user's model cache (numeric arrays only); the manifest names it by hash
        model_path = import_smplx_model(model_path)["ref"]
    return load_body_model(body_model, model_path=model_path, device=dev), model_path


def _warn_other_people(everyone: dict, kp: Keypoints2D, video: Path) -> dict:
    """:func:`other_people` of the capture on the sampled masks of everyone in view
    (:attr:`Tracked.everyone`), with a warning when another person persists."""
    others = other_people(everyone, kp)
    if others["persists"]:
        x0, y0, x1, y1 = others["box"]
        log.warning(
            "another person-sized region is in %d of %d checked frames (%.0f%%) outside the person "
            "being fitted: the fit follows one person, and the tracker can jump to the other one "
            "(or merge them) when they come close. Trim the video to a part with one person "
            "(--start/--end), or crop "
            "it to the fitted person, e.g. ffmpeg -i %s -vf crop=%d:%d:%d:%d cropped.mp4",
            others["frames"], others["checked"], 100 * others["fraction"], video.name,
            x1 - x0 + (x1 - x0) % 2, y1 - y0 + (y1 - y0) % 2, x0, y0)
    return others


def _nan_median(a: np.ndarray) -> float | None:
    """Median of the non-NaN values, None when there are none."""
    a = a[~np.isnan(a)]
    return float(np.median(a)) if len(a) else None


def _capture_manifest(video: Path, tr, valid: np.ndarray, body, model_path, fit_config: FitConfig | None,
                      others: dict) -> dict:
    """The ``manifest.json`` of a captured sequence (source, camera, body model, crop, errors)."""
    kp, errors, info, cam = tr.keypoints, tr.errors, tr.info, tr.camera
    return {
        "source": {"name": video.name, "sha256": sha256_file(video), "start": int(tr.start), "end": int(tr.end),
                   "frame_count": info.frame_count},
        "fps": float(info.fps), "width": info.width, "height": info.height,
        "frames": int(tr.end - tr.start), "valid_frames": int(valid.sum()),
        "camera": {"K": np.asarray(cam["K"]).tolist(), "dist": np.asarray(cam["dist"]).tolist(),
                   **{k: v for k, v in cam.items() if k not in ("K", "dist")}},
        "body_model": {"name": body.name, "num_betas": body.num_betas,
                       "num_body_joints": body.num_body_joints, "num_expression": body.num_expression,
                       "model_path": str(model_path) if model_path else None},
        "crop": training_crop(kp),
        "valid": valid.astype(int).tolist(),
        "reprojection_error": {
            "unit": "fraction of the person's bounding-box height",
            **{g: {"median": _nan_median(e), "per_frame": [None if np.isnan(x) else round(float(x), 5) for x in e]}
               for g, e in errors.items()}},
        "fit_config": (fit_config or FitConfig()).to_dict(),
        # which model made masks.npz (captures without this entry used Selfie Segmentation,
        # which misses legs and lower bodies: see capture.keypoints.detect_keypoints)
        "masks": {"source": PERSON_MASK_SOURCE},
        "other_people": others,
        "timings": tr.timings,
    }


def _write_sequence_files(tmp: Path, seq: FittedSequence, tr, video: Path, body, overlay: bool,
                          t0: float) -> None:
    """Write the sequence, source copy, overlay video and texture into ``tmp``; fills the timings."""
    timings = tr.timings
    seq.save(tmp, masks=tr.masks)
    shutil.copyfile(video, tmp / SOURCE)
    if overlay:
        t2 = time.time()
        write_overlay(tmp / OVERLAY, video, tr.start, tr.end, tr.info.fps, body, tr.params,
                      tr.keypoints_fit, tr.camera["K"])
        timings["overlay_s"] = time.time() - t2
    # the training frames' appearance in the body's UV atlas: texture.png (issue 10)
    timings["texture_s"] = bake_capture_texture(seq, body)
    timings["total_s"] = time.time() - t0
    seq.manifest["timings"] = timings
    seq.save(tmp)


def _discard_partial_capture(tmp: Path | None, subject_dir: Path, created: bool) -> int:
    """Remove a failed capture's temporary folder (and ``subject_dir`` when this capture created
    it and it is empty); returns the bytes that had been written."""
    written = _folder_bytes(tmp) if tmp is not None else 0
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    if created:
        try:
            subject_dir.rmdir()  # only when empty: nothing of ours is left
        except OSError:
            pass
    return written


def _disk_full_error(e: BaseException, subject_dir: Path, final: Path, video: Path, written: int,
                     masks: PersonMasks, overlay: bool) -> DiskFullError:
    """The :class:`DiskFullError` of a capture whose writing filled the disk (sizes, what is left)."""
    src = video.stat().st_size
    need = max(written, masks.size // 20) + src * (2 if overlay else 1)
    free = free_bytes(subject_dir)
    intact = (f"the previous sequence in {final} is intact" if final.exists()
              else "nothing was written")
    return DiskFullError(
        f"the disk is full: writing the captured sequence into {subject_dir} failed after "
        f"{fmt_bytes(written)} ({e.__class__.__name__}: {e}). It needs about "
        f"{fmt_bytes(need)} (source copy {fmt_bytes(src)}"
        f"{', overlay video about as much' if overlay else ''}, masks and fit); "
        f"{fmt_bytes(free)} are free there. {intact[0].upper() + intact[1:]}; free some "
        "space (or use --no-overlay) and capture again.")


def capture(video: str | Path, subject_dir: str | Path, start: int = 0, end: int | None = None,
            camera: str | Path | None = None, body_model: str = "anny", model_path=None,
            device: str = "auto", fit_config: FitConfig | None = None, overlay: bool = True,
            min_person_fraction: float = 0.5, estimate_focal: bool = False,
            overwrite: str | None = None,
            min_valid_fraction: float = MIN_VALID_FRACTION) -> FittedSequence:
    """Capture a subject from a monocular video.

    Args:
        video: input video path.
        subject_dir: output subject directory; ``sequence/`` is (re)written inside it.
        start, end: frame range [start, end) (``end=None``: to the last frame).
        camera: optional camera.json; default field of view otherwise (io.camera).
        body_model, model_path: body-model backend (``anny`` or ``smplx`` + its file or
            ``sha256:`` reference; a file is imported into the user's model cache and the
            manifest names it by hash, never by path).
        device: ``auto``, ``cpu`` or ``cuda`` for the body fit.
        fit_config: FitConfig overrides.
        overlay: also write ``overlay.mp4``.
        min_person_fraction: fail when a person is found in fewer frames than this fraction.
        estimate_focal: without ``camera``, estimate the focal length from the video itself.
        overwrite: when ``subject_dir`` already holds a subject: None refuses, ``"move"`` moves
            its sequence, runs, export and mda into ``subject_dir/replaced-<time>/``,
            ``"remove"`` deletes them (both only after the new sequence is complete).
        min_valid_fraction: fail when fewer than this fraction of the frames have a usable
            body fit (nothing is written then).
    Returns:
        The saved FittedSequence.
    Raises:
        VideoError: missing/corrupt video or an empty frame range.
        NoPersonError: no person in most frames (or the person is too small).
        CaptureError: ``subject_dir`` holds a subject and no ``overwrite``; too few valid frames.
        RunLockedError: another capture is writing into ``subject_dir``.
        DiskFullError: the disk filled up while writing (nothing is left behind).
        ModelFileError: body-model files missing.
    All outputs are first written to a temporary directory next to the destination and moved
    into place only when everything succeeded: a failure leaves no half-written sequence.
    """
    t0 = time.time()
    video = Path(video)
    subject_dir = Path(subject_dir)
    check_output_folder(subject_dir, overwrite)  # fail before minutes of tracking
    dev = resolve_device(device)
    body, model_path = _resolve_body_model(body_model, model_path, dev)
    tr = track_video(video, body, start, end, camera, dev, fit_config, estimate_focal, min_person_fraction)
    with tr.masks:  # their temporary file is removed at the end
        kp, errors = tr.keypoints, tr.errors
        valid = kp.pose_valid & (np.nan_to_num(errors["body"], nan=1.0) < MAX_VALID_BODY_ERROR)
        _check_valid_fraction(valid, kp, errors, min_valid_fraction, tr.info)
        others = _warn_other_people(tr.everyone, kp, video)
        manifest = _capture_manifest(video, tr, valid, body, model_path, fit_config, others)
        seq = FittedSequence(params=tr.params, keypoints=kp, valid=valid, face_local=tr.face_local,
                             manifest=manifest)

        created = not subject_dir.exists()
        final = subject_dir / SEQUENCE_DIR
        tmp = None
        try:
            with FolderLock(subject_dir, what="subject", name=".capture.lock"):
                remove_stale_temporaries(subject_dir)
                parts = check_output_folder(subject_dir, overwrite)  # again, under the lock
                tmp = Path(tempfile.mkdtemp(prefix=".sequence.", dir=subject_dir))
                _write_sequence_files(tmp, seq, tr, video, body, overlay, t0)
                _replace_subject(subject_dir, parts, overwrite)
                tmp.rename(final)
        except BaseException as e:
            written = _discard_partial_capture(tmp, subject_dir, created)
            if is_disk_full(e):
                raise _disk_full_error(e, subject_dir, final, video, written, tr.masks, overlay) from None
            raise
    seq.root = final
    log.info("captured %d frames (%d valid), body reprojection median %.4f of bbox height, in %.0f s",
             seq.num_frames, valid.sum(), manifest["reprojection_error"]["body"]["median"] or float("nan"),
             tr.timings["total_s"])
    return seq


def _check_valid_fraction(valid: np.ndarray, kp: Keypoints2D, errors: dict,
                          min_fraction: float, info) -> None:
    """Raise :class:`CaptureError` when fewer than ``min_fraction`` of the frames are valid."""
    T = len(valid)
    n = int(valid.sum())
    if T and n >= min_fraction * T:
        return
    found = int(kp.pose_valid.sum())
    fit_ok = int((kp.pose_valid & (np.nan_to_num(errors["body"], nan=1.0) < MAX_VALID_BODY_ERROR)).sum())
    hint = ("the person was found in most frames but the body fit does not match them: is the "
            "person upright, whole and unoccluded? " if found >= min_fraction * T else
            "MediaPipe found the person in too few frames: ")
    raise CaptureError(
        f"only {n} of {T} frames ({n / max(T, 1):.0%}) have a usable body fit (a person found in "
        f"{found}, a body reprojection error below {MAX_VALID_BODY_ERROR:.0%} of the person's "
        f"height in {fit_ok}); training needs at least {min_fraction:.0%}. Nothing was written. "
        f"{hint}Record the whole body in view, in good light, with one person facing the camera, "
        f"or trim the video to the part where that holds (--start/--end). The video was decoded "
        f"as {info.width}x{info.height}"
        + (f" after applying its {info.rotation} degree display rotation" if info.rotation else "")
        + ".")


def _replace_subject(subject_dir: Path, parts: list[str], overwrite: str | None) -> None:
    """Move the old subject ``parts`` aside (``replaced-<time>/``) or remove them."""
    if not parts:
        return
    if overwrite == "remove":
        for name in parts:
            p = subject_dir / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        log.warning("removed the previous subject's %s from %s", ", ".join(parts), subject_dir)
        return
    dest = subject_dir / time.strftime("replaced-%Y%m%d-%H%M%S")
    n = 1
    while dest.exists():
        dest = dest.with_name(f"{dest.name.split('.')[0]}.{n}")
        n += 1
    dest.mkdir()
    for name in parts:
        (subject_dir / name).rename(dest / name)
    log.warning("moved the previous subject's %s to %s", ", ".join(parts), dest)


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
