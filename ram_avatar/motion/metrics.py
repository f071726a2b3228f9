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

``mda_curve`` measures the trade-off of a filter (issue 10, item 7): for each mode
(``global``: every part aligned; ``part``: per-part out-of-distribution gating) and strength,
the driving sequence's nearest-training-pose distance after filtering against its arm
correlation and jerk. ``plot_mda_curve`` draws it (matplotlib, optional).
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


class _Source:
    """A driving sequence's source-side measurements, computed once and shared by every
    filter setting (:func:`driving_metrics`, :func:`mda_curve`)."""

    def __init__(self, body, body_pose, betas, train_bank, global_orient=None, transl=None):
        self.body, self.betas, self.bank = body, betas, train_bank
        self.bp = torch.as_tensor(np.asarray(body_pose), dtype=torch.float32)
        self.go, self.tr = global_orient, transl
        self.lm = landmarks(body, self.bp, betas)
        self.nn_before = nn_distance_mm(self.lm, train_bank)
        self.acc, self.jerk = accel_jerk(self.lm)
        if global_orient is not None:
            self.acc_w, self.jerk_w = accel_jerk(landmarks(body, self.bp, betas, global_orient, transl))

    def measure(self, aligner, strength: float, fps: float, mode: str | None = None) -> dict:
        out = torch.as_tensor(aligner.align(self.bp.numpy(), strength=strength, fps=fps, mode=mode))
        lm_out = landmarks(self.body, out, self.betas)
        acc_a, jerk_a = accel_jerk(lm_out)
        res = {
            "frames": int(self.bp.shape[0]),
            "ood_nn_distance_before": float(self.nn_before.mean()),
            "ood_nn_distance_after": float(nn_distance_mm(lm_out, self.bank).mean()),
            "arm_correlation": arm_correlation(self.lm, lm_out),
            "angle_change_deg": group_angle_change_deg(self.bp, out),
            "accel_before": self.acc, "accel_after": acc_a, "jerk_before": self.jerk, "jerk_after": jerk_a,
        }
        w = getattr(aligner, "last_part_weights", None)
        if strength > 0 and w is not None and w.shape[0] == out.shape[0]:
            from ram_avatar.motion.mda import PARTS
            res["part_weight_mean"] = {p: float(w[:, i].mean()) for i, p in enumerate(PARTS)}
        if self.go is not None:
            acc_wa, jerk_wa = accel_jerk(landmarks(self.body, out, self.betas, self.go, self.tr))
            res.update(accel_world_before=self.acc_w, accel_world_after=acc_wa,
                       jerk_world_before=self.jerk_w, jerk_world_after=jerk_wa)
        return res


def driving_metrics(aligner, body_pose, betas, train_bank: np.ndarray, body=None,
                    global_orient=None, transl=None, strength: float = 1.0, fps: float = 30.0,
                    mode: str | None = None) -> dict:
    """OOD metrics of one driving sequence (module docstring).

    Args:
        aligner: :class:`~ram_avatar.motion.mda.MotionAligner`.
        body_pose: (T, 35, 3) driving poses; ``global_orient`` / ``transl`` (T, 3) for the
            world-space acceleration (default: body frame).
        betas: (6,) subject shape; train_bank: (M, 33, 3) body-frame landmarks of the
            subject's training poses; fps: frame rate of the driving sequence.
        mode: aligner mode (``part`` / ``global``; default the aligner's).
    Returns:
        dict with ood_nn_distance_before/after, arm_correlation, accel_before/after,
        jerk_before/after, angle_change_deg, frames (and ``part_weight_mean`` per part in
        part mode).
    """
    src = _Source(_body(body), body_pose, betas, train_bank, global_orient, transl)
    return src.measure(aligner, strength, fps, mode)


def _subject_bank(subject_dir, body, aligner, sequence):
    """(aligner, sequence, betas, train frames, held-out frames, (M, 33, 3) training landmarks)."""
    from ram_avatar.io.sequence import load_sequence
    from ram_avatar.motion.mda import MotionAligner, training_split
    seq = sequence or load_sequence(subject_dir)
    aligner = aligner or MotionAligner.load(subject_dir)
    betas = seq.params.betas[0]
    split = training_split(subject_dir, seq, aligner.meta.get("split"), aligner.config.val_fraction)
    tr, va = split.train, split.val
    bank = landmarks(body, seq.params.body_pose[torch.from_numpy(tr)], betas)
    return aligner, seq, betas, tr, va, bank


def _id_metrics(aligner, seq, va, betas, bank, body, strength, mode) -> dict:
    """Held-out subject poses (in distribution), filtered as one stream."""
    if not len(va):
        return {"id_angle_change_deg": None, "id_position_change_mm": None}
    src = seq.params.body_pose[torch.from_numpy(va)]
    out = torch.as_tensor(aligner.align(src.numpy(), strength=strength, fps=seq.fps, mode=mode))
    lm_s, lm_o = landmarks(body, src, betas), landmarks(body, out, betas)
    return {"id_angle_change_deg": group_angle_change_deg(src, out),
            "id_position_change_mm": float(np.linalg.norm(lm_s - lm_o, axis=-1)[:, BODY_LANDMARKS].mean() * 1000),
            "id_nn_distance_before": float(nn_distance_mm(lm_s, bank).mean()),
            "id_nn_distance_after": float(nn_distance_mm(lm_o, bank).mean())}


def mda_metrics(subject_dir: str | Path, source_params: BodyParams | None = None, strength: float = 1.0,
                extra_sources: dict | None = None, body=None, aligner=None, sequence=None,
                source_fps: float = 30.0, extra_fps: float = 30.0, mode: str | None = None) -> dict:
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
        mode: aligner mode (``part`` / ``global``; default the aligner's ``config.mode``).
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
    body = _body(body)
    aligner, seq, betas, tr, va, bank = _subject_bank(subject_dir, body, aligner, sequence)
    res: dict = {"strength": strength, "mode": aligner._resolve_mode(mode),
                 "frames": {"train": int(len(tr)), "held_out": int(len(va))}}
    # in-distribution: the avatar run's held-out frames, filtered as one stream
    res.update(_id_metrics(aligner, seq, va, betas, bank, body, strength, mode))
    keys = ("ood_nn_distance_before", "ood_nn_distance_after", "arm_correlation", "jerk_before",
            "jerk_after", "accel_before", "accel_after", "jerk_world_before", "jerk_world_after",
            "accel_world_before", "accel_world_after")
    if source_params is not None:
        d = driving_metrics(aligner, source_params.body_pose, betas, bank, body,
                            source_params.global_orient, source_params.transl, strength, source_fps, mode)
        res.update({k: d[k] for k in keys})
        res["frames"]["source"] = d["frames"]
        res["source_angle_change_deg"] = d["angle_change_deg"]
        if "part_weight_mean" in d:
            res["part_weight_mean"] = d["part_weight_mean"]
    else:
        res.update({k: None for k in keys})
    if extra_sources:
        res["sources"] = {name: driving_metrics(aligner, bp, betas, bank, body, strength=strength,
                                                fps=extra_fps, mode=mode)
                          for name, bp in extra_sources.items()}
    if getattr(aligner, "gate", None) is not None:
        res["part_gate"] = aligner.gate.summary()
    return res


#: strengths of the trade-off curve (issue 10, item 7)
CURVE_STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def mda_curve(subject_dir: str | Path, source_params: BodyParams, strengths=CURVE_STRENGTHS,
              modes=("global", "part"), body=None, aligner=None, sequence=None,
              source_fps: float = 30.0) -> dict:
    """Trade-off curve of motion alignment: OOD distance against arm correlation and jerk.

    For each mode and strength, the driving sequence (``source_params``) is filtered as one
    stream and measured as in :func:`driving_metrics`; the subject's held-out poses give the
    in-distribution change. Source landmarks and the training bank are computed once.

    Args:
        subject_dir: captured subject with ``mda/``.
        source_params: BodyParams of the driving sequence (T consecutive frames).
        strengths: filter strengths in [0, 1]; modes: aligner modes (``global``, ``part``).
        body, aligner, sequence: preloaded objects (loaded when omitted).
        source_fps: frame rate of the driving sequence.
    Returns:
        dict with ``rows`` (one per mode x strength: mode, strength,
        ood_nn_distance_before/after, ood_reduction (fraction), arm_correlation, jerk_after,
        jerk_world_after, accel_after, id_angle_change_deg, id_position_change_mm,
        part_weight_mean), the source's ``jerk_before`` / ``jerk_world_before``, ``frames``
        and the gate's radii (``part_gate``).
    Raises:
        SequenceFormatError / CheckpointError: missing capture or MDA model;
        ValueError: strength outside [0, 1] or unknown mode.
    """
    body = _body(body)
    aligner, seq, betas, tr, va, bank = _subject_bank(subject_dir, body, aligner, sequence)
    src = _Source(body, source_params.body_pose, betas, bank, source_params.global_orient, source_params.transl)
    rows = []
    for mode in modes:
        for s in strengths:
            d = src.measure(aligner, float(s), source_fps, mode)
            idm = _id_metrics(aligner, seq, va, betas, bank, body, float(s), mode)
            before, after = d["ood_nn_distance_before"], d["ood_nn_distance_after"]
            rows.append({"mode": mode, "strength": float(s), "ood_nn_distance_before": before,
                         "ood_nn_distance_after": after, "ood_reduction": 1.0 - after / before,
                         "arm_correlation": d["arm_correlation"], "jerk_after": d["jerk_after"],
                         "jerk_world_after": d.get("jerk_world_after"), "accel_after": d["accel_after"],
                         "id_angle_change_deg": idm["id_angle_change_deg"],
                         "id_position_change_mm": idm["id_position_change_mm"],
                         "part_weight_mean": d.get("part_weight_mean")})
            log.info("mda curve %s %.2f: OOD %.1f -> %.1f mm (%.0f%%), arm corr %.3f, jerk %.2f",
                     mode, s, before, after, 100 * rows[-1]["ood_reduction"], d["arm_correlation"], d["jerk_after"])
    return {"rows": rows, "frames": {"train": int(len(tr)), "held_out": int(len(va)), "source": int(src.bp.shape[0])},
            "jerk_before": src.jerk, "jerk_world_before": getattr(src, "jerk_w", None),
            "part_gate": aligner.gate.summary() if getattr(aligner, "gate", None) is not None else None}


def plot_mda_curve(curve: dict, path: str | Path) -> Path | None:
    """Draw :func:`mda_curve`'s result as a PNG: OOD distance after (mm, x) against arm
    correlation (left) and body-frame jerk (right), one line per mode, points labelled by
    strength. Returns the path, or None (with a log line) when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: no curve plot (pip install matplotlib)")
        return None
    from ram_avatar.utils import atomic_path
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for mode in dict.fromkeys(r["mode"] for r in curve["rows"]):
        rs = [r for r in curve["rows"] if r["mode"] == mode]
        x = [r["ood_nn_distance_after"] for r in rs]
        for ax, key in zip(axes, ("arm_correlation", "jerk_after")):
            ax.plot(x, [r[key] for r in rs], "o-", label=mode)
            for r in rs:
                ax.annotate(f"{r['strength']:g}", (r["ood_nn_distance_after"], r[key]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
    axes[0].set_ylabel("arm correlation with the driver")
    axes[1].set_ylabel("jerk, body frame (mm / frame$^3$)")
    for ax in axes:
        ax.set_xlabel("nearest-training-pose distance after (mm)")
        ax.grid(alpha=0.3)
        ax.legend(title="mode (labels: strength)")
    fig.suptitle("motion alignment trade-off")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
