"""Measurements of Motion Distribution Alignment (RAM-Avatar Sec. 3.3 / issue 4, item 6).

All positions are Anny pose landmarks (MediaPipe order; the 16 :data:`BODY_LANDMARKS`:
shoulders, elbows, wrists, hips, knees, ankles, heels, toes) of the subject's own body shape,
in millimetres. "Body frame" means ``global_orient = 0``, ``transl = 0`` and the hip midpoint
subtracted, so that only the articulated pose counts.

* ``id_angle_change_deg``: on the subject's held-out poses (last 10 %, never trained on), mean
  over frames and the 18 joint groups of the rotation angle between filtered and input pose.
* ``id_position_change_mm``: same frames, mean landmark displacement caused by the filter.
* ``ood_nn_distance_before`` / ``_after``: for the driving poses, mean over frames of the
  distance (mean per-landmark, body frame, mm) to the nearest training pose of the subject,
  before and after filtering. Lower after = closer to what the renderer has seen.
* ``arm_correlation``: Pearson correlation over time between source and filtered arm motion
  (elbow and wrist positions relative to their shoulder, body frame, 12 coordinate series,
  weighted by the source's variance): 1 = the arms still do what the driver does.
* ``accel_before`` / ``_after``: mean frame-to-frame joint acceleration, the norm of the second
  difference of body-frame landmark positions (mm / frame^2) of the driving sequence;
  ``jerk_before`` / ``_after``: same with the third difference (mm / frame^3). Body frame,
  because the filter changes only ``body_pose``. ``*_world_*``: the same in world space (with
  the driving ``global_orient`` / ``transl``), what a viewer sees. On monocular captures the
  fit's ``global_orient`` noise is partly cancelled by opposite ``body_pose`` noise; a filter
  that cleans ``body_pose`` uncovers it, so world jerk can rise while body-frame jerk falls:
  smooth the driving capture's root before or after MDA.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ram_avatar.body.base import BODY_LANDMARKS, BodyParams
from ram_avatar.motion.prior import geodesic_deg
from ram_avatar.motion.retarget import body_pose_to_groups

log = logging.getLogger(__name__)

_SHOULDER, _ELBOW, _WRIST = (11, 12), (13, 14), (15, 16)
_HIPS = (23, 24)


def _body(body):
    if body is None:
        from ram_avatar.body import load_body_model
        body = load_body_model("anny")
    return body


@torch.no_grad()
def landmarks(body, body_pose: torch.Tensor, betas: torch.Tensor, global_orient=None, transl=None,
              chunk: int = 256) -> np.ndarray:
    """Pose landmarks (T, 33, 3) in metres for poses (T, 35, 3); body frame (hip midpoint at the
    origin, no global rotation) unless ``global_orient`` (T, 3) / ``transl`` (T, 3) are given."""
    T = body_pose.shape[0]
    out = []
    for s in range(0, T, chunk):
        bp = torch.as_tensor(body_pose[s:s + chunk], dtype=torch.float32)
        n = bp.shape[0]
        p = body.zero_params(n)
        p.betas = torch.as_tensor(betas, dtype=torch.float32).reshape(1, -1).expand(n, -1)
        p.body_pose = bp
        if global_orient is None:
            p.global_orient = torch.zeros(n, 3)
            p.transl = torch.zeros(n, 3)
        else:
            p.global_orient = torch.as_tensor(global_orient[s:s + chunk], dtype=torch.float32)
            p.transl = torch.as_tensor(transl[s:s + chunk], dtype=torch.float32)
        lm = body(p, return_vertices=False).pose_landmarks
        if global_orient is None:
            lm = lm - lm[:, list(_HIPS)].mean(1, keepdim=True)
        out.append(lm)
    return torch.cat(out).double().numpy()


def nn_distance_mm(query: np.ndarray, bank: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Per query pose, the distance (mean over body landmarks, mm) to the nearest bank pose.

    Args:
        query: (N, 33, 3) body-frame landmarks, metres; bank: (M, 33, 3).
    Returns:
        (N,) millimetres.
    """
    q = torch.from_numpy(query[:, BODY_LANDMARKS])
    b = torch.from_numpy(bank[:, BODY_LANDMARKS])
    out = []
    for s in range(0, q.shape[0], chunk):
        d = (q[s:s + chunk, None] - b[None]).norm(dim=-1).mean(-1)                      # (n, M)
        out.append(d.min(1).values)
    return torch.cat(out).numpy() * 1000


def arm_correlation(src: np.ndarray, out: np.ndarray) -> float:
    """Variance-weighted mean Pearson correlation of shoulder-relative elbow/wrist coordinates
    over time between source and filtered landmarks (T, 33, 3); NaN when T < 3."""
    if src.shape[0] < 3:
        return float("nan")
    cs, ws = [], []
    for side in range(2):
        for j in (_ELBOW[side], _WRIST[side]):
            a = src[:, j] - src[:, _SHOULDER[side]]
            b = out[:, j] - out[:, _SHOULDER[side]]
            for k in range(3):
                x, y = a[:, k] - a[:, k].mean(), b[:, k] - b[:, k].mean()
                vx, vy = (x ** 2).sum(), (y ** 2).sum()
                if vx < 1e-10:
                    continue
                cs.append((x * y).sum() / np.sqrt(vx * max(vy, 1e-12)))
                ws.append(vx)
    if not ws:
        return float("nan")
    return float(np.average(cs, weights=ws))


def accel_jerk(world_lm: np.ndarray) -> tuple[float, float]:
    """Mean norm of the 2nd and 3rd time differences of body landmarks (T, 33, 3) metres ->
    (mm / frame^2, mm / frame^3); NaN when too short."""
    x = world_lm[:, BODY_LANDMARKS] * 1000
    acc = np.linalg.norm(np.diff(x, 2, axis=0), axis=-1).mean() if len(x) > 2 else float("nan")
    jerk = np.linalg.norm(np.diff(x, 3, axis=0), axis=-1).mean() if len(x) > 3 else float("nan")
    return float(acc), float(jerk)


def group_angle_change_deg(before: torch.Tensor, after: torch.Tensor) -> float:
    """Mean rotation angle (deg) between the joint-group rotations of two (T, 35, 3) poses."""
    a = body_pose_to_groups(torch.as_tensor(before, dtype=torch.float64))
    b = body_pose_to_groups(torch.as_tensor(after, dtype=torch.float64))
    return float(geodesic_deg(a, b).mean())


def driving_metrics(aligner, body_pose, betas, train_bank: np.ndarray, body=None,
                    global_orient=None, transl=None, strength: float = 1.0, fps: float = 30.0) -> dict:
    """OOD metrics of one driving sequence (module docstring).

    Args:
        aligner: :class:`~ram_avatar.motion.mda.MotionAligner`.
        body_pose: (T, 35, 3) driving poses; ``global_orient`` / ``transl`` (T, 3) for the
            world-space acceleration (default: body frame).
        betas: (6,) subject shape; train_bank: (M, 33, 3) body-frame landmarks of the
            subject's training poses; fps: frame rate of the driving sequence.
    Returns:
        dict with ood_nn_distance_before/after, arm_correlation, accel_before/after,
        jerk_before/after, angle_change_deg, frames.
    """
    body = _body(body)
    bp = torch.as_tensor(np.asarray(body_pose), dtype=torch.float32)
    out = torch.as_tensor(aligner.align(bp.numpy(), strength=strength, fps=fps))
    lm_src = landmarks(body, bp, betas)
    lm_out = landmarks(body, out, betas)
    acc_b, jerk_b = accel_jerk(lm_src)
    acc_a, jerk_a = accel_jerk(lm_out)
    res = {
        "frames": int(bp.shape[0]),
        "ood_nn_distance_before": float(nn_distance_mm(lm_src, train_bank).mean()),
        "ood_nn_distance_after": float(nn_distance_mm(lm_out, train_bank).mean()),
        "arm_correlation": arm_correlation(lm_src, lm_out),
        "angle_change_deg": group_angle_change_deg(bp, out),
        "accel_before": acc_b, "accel_after": acc_a, "jerk_before": jerk_b, "jerk_after": jerk_a,
    }
    if global_orient is not None:
        acc_wb, jerk_wb = accel_jerk(landmarks(body, bp, betas, global_orient, transl))
        acc_wa, jerk_wa = accel_jerk(landmarks(body, out, betas, global_orient, transl))
        res.update(accel_world_before=acc_wb, accel_world_after=acc_wa,
                   jerk_world_before=jerk_wb, jerk_world_after=jerk_wa)
    return res


def mda_metrics(subject_dir: str | Path, source_params: BodyParams | None = None, strength: float = 1.0,
                extra_sources: dict | None = None, body=None, aligner=None, sequence=None,
                source_fps: float = 30.0, extra_fps: float = 30.0) -> dict:
    """All Sec. 3.3 measurements of a subject's fitted MDA (issue 4, item 6).

    Args:
        subject_dir: captured subject with ``mda/`` (run fit-mda first).
        source_params: BodyParams of a driving sequence (T consecutive frames, e.g. the capture
            of ``basketball_drive.mp4``); its body_pose is filtered, global_orient / transl are
            used for the world-space acceleration.
        strength: filter strength.
        source_fps, extra_fps: frame rates of the driving sequence and of the extra sources.
        extra_sources: name -> (T, 35, 3) body poses (e.g. retargeted mocap kicks / runs),
            reported under ``sources``.
        body: Anny body model (loaded when omitted); aligner / sequence: preloaded objects.
    Returns:
        dict with ``id_angle_change_deg``, ``id_position_change_mm``, ``id_nn_distance_before``,
        ``id_nn_distance_after`` (held-out poses), ``ood_nn_distance_before``,
        ``ood_nn_distance_after``, ``arm_correlation``, ``jerk_before``, ``jerk_after``,
        ``accel_before``, ``accel_after`` (body frame) and ``*_world_*`` (driving sequence; None
        without ``source_params``),
        ``frames`` counts and ``sources`` (per extra source, same OOD keys).
    Raises:
        SequenceFormatError / CheckpointError: missing capture or MDA model.
    """
    from ram_avatar.io.sequence import load_sequence
    from ram_avatar.motion.mda import MotionAligner, split_subject_frames
    body = _body(body)
    seq = sequence or load_sequence(subject_dir)
    aligner = aligner or MotionAligner.load(subject_dir)
    betas = seq.params.betas[0]
    val_fraction = aligner.config.val_fraction
    tr, va = split_subject_frames(seq.valid, val_fraction)
    bp_all = seq.params.body_pose
    bank = landmarks(body, bp_all[torch.from_numpy(tr)], betas)
    res: dict = {"strength": strength, "frames": {"train": int(len(tr)), "held_out": int(len(va))}}
    # in-distribution: the held-out tail, filtered as one stream (contiguous valid frames)
    if len(va):
        src = bp_all[torch.from_numpy(va)]
        out = torch.as_tensor(aligner.align(src.numpy(), strength=strength, fps=seq.fps))
        lm_s, lm_o = landmarks(body, src, betas), landmarks(body, out, betas)
        res["id_angle_change_deg"] = group_angle_change_deg(src, out)
        res["id_position_change_mm"] = float(np.linalg.norm(lm_s - lm_o, axis=-1)[:, BODY_LANDMARKS].mean() * 1000)
        res["id_nn_distance_before"] = float(nn_distance_mm(lm_s, bank).mean())
        res["id_nn_distance_after"] = float(nn_distance_mm(lm_o, bank).mean())
    else:
        res.update(id_angle_change_deg=None, id_position_change_mm=None)
    keys = ("ood_nn_distance_before", "ood_nn_distance_after", "arm_correlation", "jerk_before",
            "jerk_after", "accel_before", "accel_after", "jerk_world_before", "jerk_world_after",
            "accel_world_before", "accel_world_after")
    if source_params is not None:
        d = driving_metrics(aligner, source_params.body_pose, betas, bank, body,
                            source_params.global_orient, source_params.transl, strength, source_fps)
        res.update({k: d[k] for k in keys})
        res["frames"]["source"] = d["frames"]
        res["source_angle_change_deg"] = d["angle_change_deg"]
    else:
        res.update({k: None for k in keys})
    if extra_sources:
        res["sources"] = {name: driving_metrics(aligner, bp, betas, bank, body, strength=strength, fps=extra_fps)
                          for name, bp in extra_sources.items()}
    return res
