"""Motion out: the driven avatar's motion as ``.npz`` (smplx-style) or ``.bvh`` (issue 13).

``drive --motion-out FILE`` writes the body parameters that were rendered (after retargeting
and motion distribution alignment) so the motion can be reused in a DCC tool or another
pipeline:

- ``.npz``: the :class:`~ram_avatar.body.base.BodyParams` fields in the smplx vocabulary
  (``betas``, ``global_orient``, ``body_pose``, ``left_hand_pose``, ``right_hand_pose``,
  ``jaw_pose``, ``expression``, ``transl``; axis-angle radians, metres, camera frame), plus
  ``joints (T,J,3)`` the skeleton's joint (bone head) positions in metres in the OpenCV camera
  frame, ``joint_names (J,)``, ``parents (J,)``, ``fps`` and ``body_model``;
- ``.bvh``: the body model's skeleton (Anny: 104 bones) as a Biovision Hierarchy, Y up (the
  camera frame turned 180 degrees about x: +y up, +z towards the camera), metres, rest pose
  = the avatar's own upright rest pose with world-aligned joint frames (offsets are the rest
  pose's bone-head differences), root ``Xposition Yposition Zposition Zrotation Xrotation
  Yrotation``, other joints ``Zrotation Xrotation Yrotation`` (``R = Rz Rx Ry``, degrees),
  ``Frame Time`` = 1/fps. Leaf joints get an ``End Site`` along their rest bone. Blender's BVH
  importer reads this layout (its default Y-up import turns it upright); forward kinematics of
  the file reproduces ``joints`` (tests/test_drive_outputs.py checks it with the ``bvh``
  package, a parser written elsewhere).

A joint's BVH rotation is its bone's rotation relative to the rest pose, ``Q_j = R_j R_j,rest^T``
in the BVH frame, local to its parent: ``L_j = Q_parent^T Q_j``. Because the skeleton is
rigid (a child's head is fixed in its parent's frame) ``head_j = head_parent + Q_parent
offset_j`` holds exactly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ram_avatar.errors import RamAvatarError
from ram_avatar.utils import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

#: camera frame (x right, y down, z forward) -> BVH frame (x right, y up, z towards the camera)
CAMERA_TO_BVH = np.diag([1.0, -1.0, -1.0])


def skeleton_frames(body, params, chunk: int = 64) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """World (camera-frame) transforms of every skeleton joint, posed and at rest.

    Args:
        body: the body model (the ``anny`` backend exposes its bone transforms).
        params: BodyParams of T frames.
    Returns:
        names (J,), parents (J,) int (-1 at the root), posed (T,J,4,4) float64 camera-frame
        transforms (rotation, bone head in metres), rest (J,4,4) float64: the same shape upright
        at the origin (``BodyModel.upright_orient``, no translation).
    Raises:
        RamAvatarError: a body model without bone transforms (the SMPL-X backend, for now).
    """
    if not hasattr(body, "_bone_transforms"):
        raise RamAvatarError(f"--motion-out needs the skeleton's joint transforms, which the "
                             f"{getattr(body, 'name', type(body).__name__)} body model does not "
                             "expose yet: use an anny subject")
    from ram_avatar.body.base import rotvec_to_rotmat

    names, parents = body.joint_tree()
    posed = []
    with torch.no_grad():
        for c in range(0, params.batch_size, chunk):
            p = params.index(torch.arange(c, min(c + chunk, params.batch_size))).to(body.device)
            _, _, bone = body._bone_transforms(p)                         # (B,J,4,4) model space
            G = torch.eye(4, dtype=bone.dtype, device=bone.device).repeat(len(bone), 1, 1)
            G[:, :3, :3] = rotvec_to_rotmat(p.global_orient)
            G[:, :3, 3] = p.transl
            posed.append((G[:, None] @ bone).double().cpu().numpy())
        rest_p = body.zero_params(1, device=body.device)
        rest_p.betas = params.betas[:1].to(body.device)
        rest_p.transl = torch.zeros_like(rest_p.transl)
        _, _, bone = body._bone_transforms(rest_p)
        G = torch.eye(4, dtype=bone.dtype, device=bone.device)
        G[:3, :3] = rotvec_to_rotmat(rest_p.global_orient)[0]
        rest = (G @ bone[0]).double().cpu().numpy()
    return list(names), np.asarray(parents, np.int64), np.concatenate(posed), rest


def write_npz(path: str | Path, body, params, fps: float) -> dict:
    """Write the ``.npz`` motion file (module docstring); returns a summary dict."""
    names, parents, posed, _ = skeleton_frames(body, params)
    arrays = {k: v.astype(np.float32) for k, v in params.as_numpy().items()}
    arrays.update(joints=posed[:, :, :3, 3].astype(np.float32), joint_names=np.array(names),
                  parents=parents, fps=np.float64(fps), body_model=np.array(getattr(body, "name", "")))
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return {"path": str(path), "format": "npz", "frames": int(posed.shape[0]),
            "joints": len(names), "fps": float(fps)}


def bvh_channels(posed: np.ndarray, rest: np.ndarray, parents: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BVH offsets and motion channels from camera-frame joint transforms.

    Args:
        posed: (T,J,4,4), rest: (J,4,4) camera-frame transforms; parents: (J,).
    Returns:
        offsets (J,3) metres (BVH frame; root 0), root_pos (T,3) metres, euler (T,J,3) degrees
        in Z, X, Y order (``R = Rz Rx Ry``).
    """
    from scipy.spatial.transform import Rotation

    C = CAMERA_TO_BVH
    Rp = np.einsum("ab,tjbc->tjac", C, posed[..., :3, :3])
    hp = np.einsum("ab,tjb->tja", C, posed[..., :3, 3])
    Rr = np.einsum("ab,jbc->jac", C, rest[:, :3, :3])
    hr = np.einsum("ab,jb->ja", C, rest[:, :3, 3])
    Q = np.einsum("tjab,jcb->tjac", Rp, Rr)                  # R_posed R_rest^T
    offsets = np.zeros_like(hr)
    L = Q.copy()
    for j, p in enumerate(parents):
        if p >= 0:
            offsets[j] = hr[j] - hr[p]
            L[:, j] = np.einsum("tba,tbc->tac", Q[:, p], Q[:, j])  # Q_p^T Q_j
    T, J = L.shape[:2]
    euler = Rotation.from_matrix(L.reshape(-1, 3, 3)).as_euler("ZXY", degrees=True).reshape(T, J, 3)
    root = int(np.flatnonzero(parents < 0)[0])
    return offsets, hp[:, root], euler


def write_bvh(path: str | Path, body, params, fps: float) -> dict:
    """Write the ``.bvh`` motion file (module docstring); returns a summary dict.

    Raises:
        RamAvatarError: more than one root joint, or a body model without bone transforms.
    """
    names, parents, posed, rest = skeleton_frames(body, params)
    roots = np.flatnonzero(parents < 0)
    if len(roots) != 1:
        raise RamAvatarError(f"BVH needs one root joint, the skeleton has {len(roots)}")
    offsets, root_pos, euler = bvh_channels(posed, rest, parents)
    children = {j: [] for j in range(len(names))}
    for j, p in enumerate(parents):
        if p >= 0:
            children[int(p)].append(j)
    hr = np.einsum("ab,jb->ja", CAMERA_TO_BVH, rest[:, :3, 3])
    lines, order = ["HIERARCHY"], []

    def emit(j: int, depth: int) -> None:
        ind = "  " * depth
        kind = "ROOT" if parents[j] < 0 else "JOINT"
        lines.append(f"{ind}{kind} {names[j]}")
        lines.append(f"{ind}{{")
        lines.append(f"{ind}  OFFSET {offsets[j][0]:.6f} {offsets[j][1]:.6f} {offsets[j][2]:.6f}")
        if parents[j] < 0:
            lines.append(f"{ind}  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation")
        else:
            lines.append(f"{ind}  CHANNELS 3 Zrotation Xrotation Yrotation")
        order.append(j)
        for c in children[j]:
            emit(c, depth + 1)
        if not children[j]:  # End Site along the rest bone (parent -> joint direction)
            d = hr[j] - hr[parents[j]] if parents[j] >= 0 else np.array([0.0, 0.1, 0.0])
            n = np.linalg.norm(d)
            end = d / n * min(0.05, 0.5 * n) if n > 1e-9 else np.array([0.0, 0.01, 0.0])
            lines.append(f"{ind}  End Site")
            lines.append(f"{ind}  {{")
            lines.append(f"{ind}    OFFSET {end[0]:.6f} {end[1]:.6f} {end[2]:.6f}")
            lines.append(f"{ind}  }}")
        lines.append(f"{ind}}}")

    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * len(names) + 100))
    try:
        emit(int(roots[0]), 0)
    finally:
        sys.setrecursionlimit(limit)
    T = posed.shape[0]
    lines += ["MOTION", f"Frames: {T}", f"Frame Time: {1.0 / float(fps):.8f}"]
    root = int(roots[0])
    for t in range(T):
        vals = [root_pos[t, 0], root_pos[t, 1], root_pos[t, 2]]
        for j in order:
            vals.extend(euler[t, j])
        lines.append(" ".join(f"{v:.6f}" for v in vals))
    path = Path(path)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return {"path": str(path), "format": "bvh", "frames": T, "joints": len(names),
            "fps": float(fps), "channels": 6 + 3 * (len(names) - 1)}


def write_motion(path: str | Path, body, params, fps: float) -> dict:
    """Write ``params`` (T frames of the driven avatar) as ``.npz`` or ``.bvh`` by suffix.

    Raises:
        RamAvatarError: another suffix, or a body model without bone transforms.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        out = write_npz(path, body, params, fps)
    elif suffix == ".bvh":
        out = write_bvh(path, body, params, fps)
    else:
        raise RamAvatarError(f"motion output {path}: use a .npz or .bvh file")
    log.info("motion: %s (%d frames, %d joints)", out["path"], out["frames"], out["joints"])
    return out
