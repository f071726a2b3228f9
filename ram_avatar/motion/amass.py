"""AMASS-style SMPL-H / SMPL-X motion files -> Anny ``body_pose`` (RAM-Avatar Sec. 3.3 data).

AMASS (https://amass.is.tue.mpg.de, licence-gated, not shipped) stores one clip per ``.npz``:

* ``poses`` (T, 156) SMPL-H (root + 21 body + 2x15 hand joints) or (T, 165) SMPL-X (root +
  21 body + jaw + 2 eyes + 2x15 hand joints), or (T, 72) SMPL; axis-angle radians, each joint
  relative to its parent in the T-pose's world-aligned axes; alternatively ``root_orient``
  (T, 3) + ``pose_body`` (T, 63) (AMASS SMPL-X "N" release);
* ``trans`` (T, 3) metres, world z up;
* ``mocap_framerate`` (SMPL-H) or ``mocap_frame_rate`` (SMPL-X) in Hz.

Only the 22 body joints are used (hands stay at rest; the prior models ``body_pose``). The SMPL
rotations are turned into world joint rotations by forward kinematics and retargeted with the
same rest-pose alignment as BVH (:mod:`ram_avatar.motion.retarget`): SMPL's local axes are its
T-pose axes, so the calibration is static, solved from the T-pose bone directions and the
anatomical hinge axes instead of from data. SMPL model files are not needed: the T-pose joint
layout below is an approximation of the SMPL/SMPL-X neutral template (directions within a few
degrees), used only for bone directions and for the source-joint positions of the check in
:func:`ram_avatar.motion.retarget.direction_errors`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ram_avatar.motion.bvh import MocapFormatError
from ram_avatar.motion.retarget import (ANNY_GROUPS, GROUP_NAMES, AnnyReference, Calibration,
                                        MocapPoses, _hinge_pairs, _rot_x, _unit, _wahba,
                                        anny_reference, flat_foot_direction, world_groups_to_params)

log = logging.getLogger(__name__)

#: SMPL / SMPL-H / SMPL-X body joints (the first 22 of every layout).
SMPL_JOINTS = ["pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
               "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
               "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
               "left_elbow", "right_elbow", "left_wrist", "right_wrist"]
SMPL_PARENTS = np.array([-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19])
#: Approximate neutral T-pose joints (metres, SMPL canonical axes: x left, y up, z forward),
#: relative to the pelvis.
SMPL_REST_JOINTS = np.array([
    [0.000, 0.000, 0.000], [0.058, -0.082, -0.018], [-0.060, -0.091, -0.014],
    [0.004, 0.124, -0.038], [0.104, -0.460, -0.011], [-0.108, -0.460, -0.017],
    [0.007, 0.262, -0.031], [0.090, -0.860, -0.050], [-0.090, -0.860, -0.048],
    [0.003, 0.316, -0.005], [0.118, -0.915, 0.073], [-0.118, -0.915, 0.076],
    [-0.002, 0.527, -0.043], [0.078, 0.431, -0.031], [-0.082, 0.430, -0.036],
    [0.005, 0.590, 0.008], [0.172, 0.455, -0.043], [-0.174, 0.455, -0.047],
    [0.432, 0.441, -0.066], [-0.430, 0.440, -0.065], [0.687, 0.447, -0.070],
    [-0.690, 0.446, -0.071]])

#: Anny group -> (SMPL driving joint, segment end joint or None).
SMPL_GROUPS = {
    "hip.L": ("left_hip", "left_knee"), "knee.L": ("left_knee", "left_ankle"),
    "ankle.L": ("left_ankle", "left_foot"), "hip.R": ("right_hip", "right_knee"),
    "knee.R": ("right_knee", "right_ankle"), "ankle.R": ("right_ankle", "right_foot"),
    "spine_low": ("spine2", "spine3"), "spine_up": ("spine3", "neck"), "neck": ("neck", "head"),
    "head": ("head", None),
    "clavicle.L": ("left_collar", "left_shoulder"), "shoulder.L": ("left_shoulder", "left_elbow"),
    "elbow.L": ("left_elbow", "left_wrist"), "wrist.L": ("left_wrist", None),
    "clavicle.R": ("right_collar", "right_shoulder"), "shoulder.R": ("right_shoulder", "right_elbow"),
    "elbow.R": ("right_elbow", "right_wrist"), "wrist.R": ("right_wrist", None),
}


def _rotvec_to_matrix(v: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    return Rotation.from_rotvec(v.reshape(-1, 3)).as_matrix().reshape(*v.shape[:-1], 3, 3)


def read_amass(path: str | Path) -> dict:
    """Read an AMASS-style npz.

    Returns:
        dict with ``poses`` (T, 22, 3) root + 21 body joints (axis-angle radians), ``trans``
        (T, 3) metres (z up), ``fps`` float, ``layout`` (``smplh``, ``smplx``, ``smpl``).
    Raises:
        MocapFormatError: unreadable file, missing keys, unknown pose width.
    """
    path = Path(path)
    try:
        data = dict(np.load(path, allow_pickle=False))
    except Exception as e:  # noqa: BLE001
        raise MocapFormatError(f"cannot read AMASS npz {path}: {e}") from e
    if "poses" in data:
        poses = np.asarray(data["poses"], dtype=np.float64)
        width = poses.shape[-1] if poses.ndim == 2 else -1
        layout = {156: "smplh", 165: "smplx", 72: "smpl", 66: "smpl-body"}.get(width)
        if layout is None:
            raise MocapFormatError(f"{path}: 'poses' has shape {poses.shape}; expected (T, 156) SMPL-H, "
                                   "(T, 165) SMPL-X, (T, 72) SMPL or (T, 66)")
        body = poses[:, :66]
    elif "root_orient" in data and "pose_body" in data:
        body = np.concatenate([data["root_orient"], data["pose_body"][:, :63]], -1).astype(np.float64)
        layout = "smplx"
    else:
        raise MocapFormatError(f"{path}: no 'poses' (or 'root_orient' + 'pose_body') array; keys: {sorted(data)}")
    T = body.shape[0]
    if "trans" not in data or np.asarray(data["trans"]).shape != (T, 3):
        raise MocapFormatError(f"{path}: 'trans' must be (T, 3) with T={T}")
    fps = None
    for k in ("mocap_framerate", "mocap_frame_rate", "fps", "frame_rate"):
        if k in data:
            fps = float(np.asarray(data[k]).reshape(-1)[0])
            break
    if fps is None:
        log.warning("%s: no frame rate key; assuming 30 fps", path)
        fps = 30.0
    if not np.isfinite(body).all():
        raise MocapFormatError(f"{path}: poses contain NaN/Inf")
    return {"poses": body.reshape(T, 22, 3), "trans": np.asarray(data["trans"], dtype=np.float64),
            "fps": fps, "layout": layout}


def smpl_calibration(ref: AnnyReference | None = None, rest: np.ndarray = SMPL_REST_JOINTS) -> Calibration:
    """Static rest-pose alignment of the SMPL T-pose to Anny's reference pose.

    Each group's constant rotation maps Anny's reference bone direction onto the T-pose bone
    direction (exact) and Anny's hinge / left axis onto the T-pose's (knees flex backward, elbows
    forward, spine and neck twist from the left axis, clavicles from the chest's up axis).
    """
    ref = ref or anny_reference()
    J = {n: i for i, n in enumerate(SMPL_JOINTS)}
    seg = {}
    for g, (drv, end) in SMPL_GROUPS.items():
        if end is not None:
            seg[g] = _unit(rest[J[end]] - rest[J[drv]])
    fwd = np.array([0.0, 0, 1])
    hinge_src = {}
    for s in "LR":
        knee = _unit(np.cross(seg[f"hip.{s}"], _rot_x(60) @ seg[f"knee.{s}"]))  # shin backward (-z)
        elbow = _unit(np.cross(seg[f"shoulder.{s}"], fwd))                       # forearm forward
        ankle = _unit(np.cross(seg[f"knee.{s}"], seg[f"ankle.{s}"]))
        for g, n in (("hip", knee), ("knee", knee), ("ankle", ankle), ("shoulder", elbow), ("elbow", elbow)):
            hinge_src[f"{g}.{s}"] = n
    hinges = _hinge_pairs(ref)
    a_left = _unit(ref.head("upperleg01.L") - ref.head("upperleg01.R"))
    a_up = _unit(ref.head("spine02") - ref.head("root"))
    O_root = _wahba(np.stack([a_left, a_up]),
                    np.stack([_unit(rest[J["left_hip"]] - rest[J["right_hip"]]), _unit(rest[J["spine2"]])]),
                    np.array([100.0, 1.0]))
    O = {}
    for g in ANNY_GROUPS:
        drv, end = SMPL_GROUPS[g.name]
        if end is None:
            continue
        a1, b1 = ref.segment(g), seg[g.name]
        if g.name.startswith("ankle"):  # the T-pose foot is flat: keep Anny's foot flat
            drop = float(np.degrees(np.arctan2(-b1[1], np.hypot(b1[0], b1[2]))))
            a1 = flat_foot_direction(ref, g.name[-1], drop)
        if g.name in hinges:
            a2, b2 = hinges[g.name][2], hinge_src[g.name]
            if g.name.startswith("ankle"):
                a2 = _unit(np.cross(ref.segment(ANNY_GROUPS[GROUP_NAMES.index(hinges[g.name][0])]), a1))
        elif g.name.startswith("clavicle"):
            a2, b2 = ref.segment(ANNY_GROUPS[GROUP_NAMES.index("spine_up")]), seg["spine_up"]
        else:
            a2, b2 = np.array([1.0, 0, 0]), np.array([1.0, 0, 0])
        O[g.name] = _wahba(np.stack([a1, a2]), np.stack([b1, b2]), np.array([100.0, 1.0]))
    for g in ANNY_GROUPS:
        if g.name not in O:
            O[g.name] = O[g.parent]
    return Calibration(skeleton="smpl", root=O_root, groups=O, frames=0)


def smpl_forward_kinematics(poses: np.ndarray, trans: np.ndarray, rest: np.ndarray = SMPL_REST_JOINTS):
    """World joint rotations and positions of SMPL body poses on the approximate skeleton.

    Args:
        poses: (T, 22, 3) axis-angle radians.
        trans: (T, 3) metres.
    Returns:
        rot (T, 22, 3, 3) world rotations (SMPL axes -> world), pos (T, 22, 3) metres.
    """
    R = _rotvec_to_matrix(poses)
    T = poses.shape[0]
    rot = np.empty((T, 22, 3, 3))
    pos = np.empty((T, 22, 3))
    for j, p in enumerate(SMPL_PARENTS):
        if p < 0:
            rot[:, j] = R[:, j]
            pos[:, j] = trans + rest[j]
        else:
            rot[:, j] = rot[:, p] @ R[:, j]
            pos[:, j] = pos[:, p] + np.einsum("tij,j->ti", rot[:, p], rest[j] - rest[p])
    return rot, pos


def retarget_amass(path_or_data, calibration: Calibration | None = None, up_axis: str = "z",
                   distance: float = 3.0) -> MocapPoses:
    """Retarget an AMASS-style npz (or the dict of :func:`read_amass`) to Anny.

    Args:
        path_or_data: ``.npz`` path or :func:`read_amass` output.
        calibration: default :func:`smpl_calibration`.
        up_axis: world up of the file (AMASS: ``z``).
        distance: first-frame pelvis depth in front of the camera, metres.
    Returns:
        :class:`~ram_avatar.motion.retarget.MocapPoses` (source joints from the approximate
        SMPL skeleton, for the direction check).
    """
    data = read_amass(path_or_data) if not isinstance(path_or_data, dict) else path_or_data
    cal = calibration or smpl_calibration()
    R, P = smpl_forward_kinematics(data["poses"], data["trans"])
    J = {n: i for i, n in enumerate(SMPL_JOINTS)}
    G_root = R[:, 0] @ cal.root
    G = np.stack([np.swapaxes(G_root, -1, -2) @ R[:, J[SMPL_GROUPS[g.name][0]]] @ cal.groups[g.name]
                  for g in ANNY_GROUPS], 1)
    up = np.zeros(3)
    up["xyz".index(up_axis[-1].lower())] = -1.0 if up_axis.startswith("-") else 1.0
    body_pose, orient, transl, M, origin = world_groups_to_params(G_root, G, P[:, 0], up, distance)
    joints = ((P - origin) @ M.T + np.array([0, 0, distance])).astype(np.float32)
    segs = {g: (J[d], J[e]) for g, (d, e) in SMPL_GROUPS.items() if e is not None}
    name = str(Path(path_or_data).name) if not isinstance(path_or_data, dict) else "amass"
    return MocapPoses(body_pose=body_pose, global_orient=orient, transl=transl, fps=data["fps"],
                      source=name, joint_names=list(SMPL_JOINTS), joint_positions=joints,
                      joint_parents=SMPL_PARENTS.copy(), segments=segs)
