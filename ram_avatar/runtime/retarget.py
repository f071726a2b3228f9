"""Retarget a driver's tracked motion onto the avatar (RAM-Avatar Sec. 3.3, "full-body control").

The driver and the avatar share the body model's pose space, so joint rotations transfer
directly; what differs is the body shape (bone lengths), the camera and where each person
stands. Retargeting therefore:

1. keeps the driver's per-frame ``global_orient``, ``body_pose`` and finger poses;
2. swaps in the avatar's ``betas`` (its own bone lengths);
3. re-places the root: the driver's root displacement from its median position, scaled by the
   ratio of the avatar's to the driver's leg length, is added to the avatar's median training
   position (the avatar stays framed as in its training crop);
4. keeps the feet on the ground: the avatar's lowest foot landmark is put on the avatar's
   training ground level in every frame where it is near the ground (contact), while frames
   clearly above it (jumps) keep the clip-wide offset and so their height;
5. transfers facial expression as the driver's deviation from its mean head-local face mesh,
   added to the avatar's mean face mesh.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ram_avatar.body.base import BodyModel, BodyParams
from ram_avatar.errors import RamAvatarError

FOOT_LANDMARKS = [27, 28, 29, 30, 31, 32]  # ankles, heels, foot index (MediaPipe pose)


def _leg_length(body: BodyModel, betas: torch.Tensor) -> float:
    """Hip-centre to ankle-centre distance (m) of the rest pose for ``betas`` (1, n)."""
    p = body.zero_params(1, device=betas.device)
    p.betas = betas
    with torch.no_grad():
        lm = body(p, return_vertices=False).pose_landmarks[0]
    hip = 0.5 * (lm[23] + lm[24])
    ankle = 0.5 * (lm[27] + lm[28])
    return float(torch.linalg.norm(hip - ankle))


def ground_level(body: BodyModel, params: BodyParams) -> float:
    """Median over frames of the lowest foot landmark's camera y (metres; y points down)."""
    with torch.no_grad():
        lm = body(params.to(body.device), return_vertices=False).pose_landmarks
    return float(lm[:, FOOT_LANDMARKS, 1].max(1).values.median())


def retarget(driver: BodyParams, avatar: BodyParams, body: BodyModel,
             driver_face_local: np.ndarray | None = None,
             avatar_face_local: np.ndarray | None = None,
             avatar_train_mask: np.ndarray | None = None,
             jump_threshold: float = 0.12) -> tuple[BodyParams, np.ndarray | None, dict]:
    """Map a driver's per-frame parameters onto the avatar (module docstring).

    Args:
        driver: BodyParams of the driving clip (batch T_d; betas (1, n) = driver's shape, e.g.
            from capture or ``calibrate driver``).
        avatar: the avatar's captured BodyParams (batch T_a; betas (1, n)).
        body: the shared body model.
        driver_face_local, avatar_face_local: (T, 478, 3) head-local face meshes or None.
        avatar_train_mask: (T_a,) bool frames of the avatar used for placement statistics.
        jump_threshold: metres above the ground beyond which a frame counts as a jump.
    Returns:
        (retargeted BodyParams of batch T_d, face_local (T_d, 478, 3) or None, info dict with
        ``scale``, ``ground_offset_m`` and the avatar's ``ground_level_m``).
    """
    dev = body.device
    sel = np.ones(avatar.batch_size, bool) if avatar_train_mask is None else np.asarray(avatar_train_mask, bool)
    a_sel = avatar.index(torch.as_tensor(np.nonzero(sel)[0]))
    scale = _leg_length(body, avatar.betas.to(dev)) / max(_leg_length(body, driver.betas.to(dev)), 1e-3)
    d_t = driver.transl
    a_center = a_sel.transl.median(0).values
    transl = a_center[None] + scale * (d_t - d_t.median(0).values[None])
    out = replace(driver, betas=avatar.betas.clone(), transl=transl)
    g_avatar = ground_level(body, a_sel)
    with torch.no_grad():
        lm = body(out.to(dev), return_vertices=False).pose_landmarks.cpu()
    feet = lm[:, FOOT_LANDMARKS, 1].max(1).values
    offset = g_avatar - float(feet.median())
    # per-frame ground contact: frames whose lowest foot is within ``jump_threshold`` of the
    # ground are snapped onto it (monocular depth jitter otherwise sinks or lifts the feet by
    # ~10 cm); higher frames are jumps and keep their height. Offsets are median-filtered
    # over 5 frames so contact changes do not pop.
    lift = g_avatar - (feet + offset)                              # > 0: above the ground
    per_frame = torch.where(lift < jump_threshold, g_avatar - feet, torch.full_like(feet, offset))
    if len(per_frame) >= 5:
        padded = torch.nn.functional.pad(per_frame[None, None], (2, 2), mode="replicate")[0, 0]
        per_frame = padded.unfold(0, 5, 1).median(-1).values
    out.transl = out.transl + torch.stack([torch.zeros_like(per_frame), per_frame,
                                           torch.zeros_like(per_frame)], -1)
    face = None
    if avatar_face_local is not None:
        base = np.median(avatar_face_local[sel], axis=0)
        if driver_face_local is not None:
            face = base[None] + (driver_face_local - np.median(driver_face_local, axis=0)[None])
        else:
            face = np.repeat(base[None], driver.batch_size, 0)
    return out, face, {"scale": scale, "ground_offset_m": offset, "ground_level_m": g_avatar}


def load_driver_betas(path: str | Path, body: BodyModel) -> torch.Tensor:
    """The driver's body shape (1, n_betas) from a ``driver.json`` (``ram-avatar calibrate driver``).

    Raises:
        RamAvatarError: unreadable file, another body model, or betas of the wrong length.
    """
    try:
        d = json.loads(Path(path).read_text())
        betas = torch.tensor(d["betas"], dtype=torch.float32).reshape(1, -1)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RamAvatarError(f"cannot read driver calibration {path}: {e}; re-run "
                             "`ram-avatar calibrate driver`") from e
    if d.get("body_model") != body.name or betas.shape[1] != body.num_betas:
        raise RamAvatarError(f"{path} was calibrated with body model {d.get('body_model')!r} "
                             f"({betas.shape[1]} betas); the avatar uses {body.name!r}: re-run "
                             "`ram-avatar calibrate driver` with the same body model")
    return betas
