"""Retarget mocap skeletons into the Anny body-pose space (data for RAM-Avatar Sec. 3.3).

The motion prior (:mod:`ram_avatar.motion.prior`) and the avatar-specific decoder
(:mod:`ram_avatar.motion.mda`) live in the body model's pose space: ``body_pose`` (T, 35, 3),
axis-angle radians in Anny's ``local-ref`` parameterisation over
:data:`ram_avatar.body.anny_backend.ANNY_BODY_BONES`. Mocap skeletons (BVH: Bandai-Namco, CMU,
Mixamo; AMASS SMPL-H/SMPL-X npz, :mod:`ram_avatar.motion.amass`) have other joints, other rest
poses (a straight "all frames aligned" BVH zero pose, the SMPL T-pose) and other axes, so they
are mapped here.

**Joint groups.** Anny splits anatomical joints into several bones (thigh = ``upperleg01`` +
twist bone ``upperleg02``; five spine bones; three neck bones; clavicle + ``shoulder01``...), and
the capture fit (an L2 pose prior) spreads rotations over them. Everything in Sec. 3.3 therefore
works on 18 anatomical :data:`ANNY_GROUPS` (hips, knees, ankles, two spine groups, neck, head,
clavicles, shoulders, elbows, wrists): a group's rotation is the product of its bones'
``local-ref`` rotations (exact: ``local-ref`` deltas compose in world-aligned reference axes,
``G_child = G_parent @ D``), and a group rotation is written back by giving each bone the
power ``R ** w_i`` of it (weights sum to 1, so the product is exactly ``R``). Weights put the
whole rotation on the bone at the anatomical joint, so a retargeted segment is rigid and its
direction is exact.

**Rest-pose alignment.** With ``G_g`` the rotation taking group ``g`` from Anny's reference
(A-)pose to the posed body (model frame, relative to the pelvis), a source joint's world
rotation ``Rs`` maps to ``G_g = (Rs_root O_root)^T Rs_g O_g``: ``O_g`` is a constant rotation
from Anny's reference axes to the source joint's local axes, solved once per skeleton (Wahba /
Kabsch, :func:`calibrate`) from (1) the bone direction (Anny reference direction <-> the source
child offset in the joint's frame; exact) and (2) a second axis for twist: the hinge normal
``thigh x shin`` / ``upper arm x forearm`` / ``shin x foot`` for limbs and the left-right axis
for the spine and neck, averaged over many frames. Head and wrists (no child offset in most BVH
files) inherit their parent's calibration: the source's zero relative rotation is Anny's
reference relative pose.

**Root.** ``global_orient`` and ``transl`` put the body in an OpenCV-style world (x right, y
down, z forward, metres) as :meth:`BodyModel.zero_params` does: the first frame faces the
camera (-z) and its pelvis sits at (0, 0, 3) m; later frames keep the source's trajectory.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ram_avatar.body.anny_backend import ANNY_BODY_BONES
from ram_avatar.motion.bvh import BVHMotion, MocapFormatError, read_bvh

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JointGroup:
    """An anatomical joint of the Anny rig made of one or more consecutive bones.

    Attributes:
        name: group name (``hip.L``, ``spine_low``, ...).
        bones: Anny bones in chain order (parent first), all in ``ANNY_BODY_BONES``.
        weights: share of the group rotation given to each bone when writing ``body_pose``
            (sum 1).
        parent: parent group, ``None`` for groups attached to the pelvis (root).
        start, end: Anny bones whose heads are the segment's start and end (``end=None``:
            the group has no length in the mocap skeletons, only an orientation).
    """

    name: str
    bones: tuple[str, ...]
    weights: tuple[float, ...]
    parent: str | None
    start: str
    end: str | None


def _side(s: str) -> list[JointGroup]:
    o = "L" if s == "L" else "R"
    return [
        JointGroup(f"hip.{o}", (f"pelvis.{o}", f"upperleg01.{o}", f"upperleg02.{o}"), (0, 1, 0), None,
                   f"upperleg01.{o}", f"lowerleg01.{o}"),
        JointGroup(f"knee.{o}", (f"lowerleg01.{o}", f"lowerleg02.{o}"), (1, 0), f"hip.{o}",
                   f"lowerleg01.{o}", f"foot.{o}"),
        JointGroup(f"ankle.{o}", (f"foot.{o}",), (1,), f"knee.{o}", f"foot.{o}", f"toe3-1.{o}"),
    ]


def _arm(s: str) -> list[JointGroup]:
    return [
        JointGroup(f"clavicle.{s}", (f"clavicle.{s}", f"shoulder01.{s}"), (1, 0), "spine_up",
                   f"clavicle.{s}", f"upperarm01.{s}"),
        JointGroup(f"shoulder.{s}", (f"upperarm01.{s}", f"upperarm02.{s}"), (1, 0), f"clavicle.{s}",
                   f"upperarm01.{s}", f"lowerarm01.{s}"),
        JointGroup(f"elbow.{s}", (f"lowerarm01.{s}", f"lowerarm02.{s}"), (1, 0), f"shoulder.{s}",
                   f"lowerarm01.{s}", f"wrist.{s}"),
        JointGroup(f"wrist.{s}", (f"wrist.{s}",), (1,), f"elbow.{s}", f"wrist.{s}", None),
    ]


#: The 18 anatomical joint groups covering the 35 ``body_pose`` bones, parents before children.
ANNY_GROUPS: tuple[JointGroup, ...] = (
    *_side("L"), *_side("R"),
    JointGroup("spine_low", ("spine05", "spine04", "spine03", "spine02"), (0, 0, 0, 1), None,
               "spine02", "spine01"),
    JointGroup("spine_up", ("spine01",), (1,), "spine_low", "spine01", "neck01"),
    JointGroup("neck", ("neck01", "neck02", "neck03"), (1, 0, 0), "spine_up", "neck01", "head"),
    JointGroup("head", ("head",), (1,), "neck", "head", None),
    *_arm("L"), *_arm("R"),
)
GROUP_NAMES = [g.name for g in ANNY_GROUPS]
NUM_GROUPS = len(ANNY_GROUPS)
#: parent group index per group (-1: pelvis)
GROUP_PARENTS = [GROUP_NAMES.index(g.parent) if g.parent else -1 for g in ANNY_GROUPS]
#: group index -> mirrored group index (left <-> right)
GROUP_MIRROR = [GROUP_NAMES.index(n.replace(".L", ".X").replace(".R", ".L").replace(".X", ".R"))
                for n in GROUP_NAMES]
#: ANNY_BODY_BONES index -> group index
BONE_GROUP = np.zeros(len(ANNY_BODY_BONES), dtype=np.int64)
#: ANNY_BODY_BONES index -> weight of the bone in its group
BONE_WEIGHT = np.zeros(len(ANNY_BODY_BONES))
#: ANNY_BODY_BONES index -> cumulative weight up to and including the bone within its group
BONE_CUM_WEIGHT = np.zeros(len(ANNY_BODY_BONES))
for _gi, _g in enumerate(ANNY_GROUPS):
    assert abs(sum(_g.weights) - 1) < 1e-9
    _c = 0.0
    for _b, _w in zip(_g.bones, _g.weights):
        _bi = ANNY_BODY_BONES.index(_b)
        BONE_GROUP[_bi], BONE_WEIGHT[_bi] = _gi, _w
        _c += _w
        BONE_CUM_WEIGHT[_bi] = _c
assert sorted(b for g in ANNY_GROUPS for b in g.bones) == sorted(ANNY_BODY_BONES)
#: group -> ANNY_BODY_BONES indices, chain order
GROUP_BONES = [[ANNY_BODY_BONES.index(b) for b in g.bones] for g in ANNY_GROUPS]


# ----------------------------------------------------------------------------------------------
# body_pose <-> group rotations (torch, differentiable)

def _rotvec_to_rotmat(v: torch.Tensor) -> torch.Tensor:
    import roma
    return roma.rotvec_to_rotmat(v)


def _rotmat_to_rotvec(R: torch.Tensor) -> torch.Tensor:
    import roma
    return roma.rotmat_to_rotvec(R)


def body_pose_to_groups(body_pose: torch.Tensor) -> torch.Tensor:
    """Compose Anny bone rotations into anatomical group rotations.

    Args:
        body_pose: (..., 35, 3) axis-angle radians, ``local-ref`` (ANNY_BODY_BONES order).
    Returns:
        (..., 18, 3, 3) group rotation matrices relative to the parent group (ANNY_GROUPS
        order), the product of the bones' rotations in chain order.
    """
    R = _rotvec_to_rotmat(body_pose)
    out = []
    for bones in GROUP_BONES:
        M = R[..., bones[0], :, :]
        for b in bones[1:]:
            M = M @ R[..., b, :, :]
        out.append(M)
    return torch.stack(out, dim=-3)


def groups_to_body_pose(groups: torch.Tensor) -> torch.Tensor:
    """Write group rotations back to the 35 bones (bone ``i`` gets ``R ** w_i``).

    Args:
        groups: (..., 18, 3, 3) group rotations relative to the parent group.
    Returns:
        (..., 35, 3) axis-angle ``body_pose``; :func:`body_pose_to_groups` of it gives
        ``groups`` back exactly (up to float error).
    """
    v = _rotmat_to_rotvec(groups)                                     # (..., G, 3)
    w = torch.as_tensor(BONE_WEIGHT, dtype=v.dtype, device=v.device)
    idx = torch.as_tensor(BONE_GROUP, device=v.device)
    return v[..., idx, :] * w[:, None]


def replace_groups(body_pose: torch.Tensor, new_groups: torch.Tensor) -> torch.Tensor:
    """Change the group rotations of ``body_pose`` to ``new_groups`` while keeping how the
    source spread each group over its bones.

    For a group with bone rotations ``D_1..D_k`` (product ``R``) and target ``R'``, the
    correction ``C = R' R^T`` is spread along the chain: the partial products become
    ``P'_i = C^(c_i) P_i`` with ``c_i`` the cumulative bone weights, so ``P'_k = R'`` exactly and
    ``C = I`` leaves the pose unchanged.

    Args:
        body_pose: (..., 35, 3) source pose.
        new_groups: (..., 18, 3, 3) target group rotations (relative to parent groups).
    Returns:
        (..., 35, 3) new ``body_pose``.
    """
    R = _rotvec_to_rotmat(body_pose)                                  # (..., 35, 3, 3)
    # partial products P_i of each group's chain, all bones at once (one level per chain depth)
    P = R.clone()
    for bones, prevs in _CHAIN_LEVELS[1:]:
        P[..., bones, :, :] = P[..., prevs, :, :] @ R[..., bones, :, :]
    src = P[..., _GROUP_LAST, :, :]                                   # (..., G, 3, 3) group products
    cvec = _rotmat_to_rotvec(new_groups @ src.transpose(-1, -2))      # (..., G, 3) corrections
    cw = torch.as_tensor(BONE_CUM_WEIGHT, dtype=cvec.dtype, device=cvec.device)
    Pn = _rotvec_to_rotmat(cvec[..., BONE_GROUP, :] * cw[:, None]) @ P  # corrected partial products
    # bone rotation D_i = P'_{i-1}^T P'_i (the first bone of a group: P'_1)
    D = Pn.clone()
    for bones, prevs in _CHAIN_LEVELS[1:]:
        D[..., bones, :, :] = Pn[..., prevs, :, :].transpose(-1, -2) @ Pn[..., bones, :, :]
    return _rotmat_to_rotvec(D).to(body_pose.dtype)


def _chain_levels() -> list[tuple[list[int], list[int]]]:
    """Bones by depth in their group's chain: [(bones at depth d, their predecessors)]."""
    levels: list[tuple[list[int], list[int]]] = []
    for bones in GROUP_BONES:
        for d, b in enumerate(bones):
            while len(levels) <= d:
                levels.append(([], []))
            levels[d][0].append(b)
            levels[d][1].append(bones[d - 1] if d else b)
    return levels


_CHAIN_LEVELS = _chain_levels()
#: group -> its last bone (whose partial product is the group rotation)
_GROUP_LAST = [bones[-1] for bones in GROUP_BONES]


# ----------------------------------------------------------------------------------------------
# Anny reference pose

@dataclass
class AnnyReference:
    """Anny's reference (zero-``body_pose``) skeleton, model frame (z up, facing -y, metres).

    Attributes:
        labels: (104,) bone labels.
        heads: (104, 3) bone heads at the reference pose.
        betas: (6,) the phenotype the reference was computed for.
    """

    labels: list[str]
    heads: np.ndarray
    betas: np.ndarray
    sole_tilt_deg: float = 0.0

    def head(self, bone: str) -> np.ndarray:
        return self.heads[self.labels.index(bone)]

    def segment(self, group: JointGroup) -> np.ndarray:
        """(3,) unit reference direction of a group's segment (start head -> end head)."""
        d = self.head(group.end) - self.head(group.start)
        return d / np.linalg.norm(d)

    def group_offsets(self) -> np.ndarray:
        """(18, 3) offset of each group's start joint from its parent group's start joint (the
        pelvis centre for root groups), reference pose, metres; used by the prior's FK loss."""
        out = np.zeros((NUM_GROUPS, 3))
        for gi, g in enumerate(ANNY_GROUPS):
            p = GROUP_PARENTS[gi]
            base = self.head("root") if p < 0 else self.head(ANNY_GROUPS[p].start)
            out[gi] = self.head(g.start) - base
        return out

    def group_tips(self) -> np.ndarray:
        """(18, 3) end offset of each group's segment from its start joint (zeros for groups
        without ``end``; the head and wrists get a short stub from Anny's geometry)."""
        out = np.zeros((NUM_GROUPS, 3))
        for gi, g in enumerate(ANNY_GROUPS):
            if g.end is not None:
                out[gi] = self.head(g.end) - self.head(g.start)
        # orientation-only groups: a stub along the bone so the FK loss sees their rotation
        for name, tip in (("head", "eye.L"), ("wrist.L", "finger3-1.L"), ("wrist.R", "finger3-1.R")):
            gi = GROUP_NAMES.index(name)
            out[gi] = self.head(tip) - self.head(ANNY_GROUPS[gi].start)
        return out


@functools.lru_cache(maxsize=4)
def _anny_reference_cached(betas: tuple[float, ...] | None) -> AnnyReference:
    from ram_avatar.body import load_body_model
    body = load_body_model("anny")
    p = body.zero_params(1)
    if betas is not None:
        p.betas = torch.tensor([betas], dtype=torch.float32)
    with torch.no_grad():
        _, _, poses = body._bone_transforms(p)
        p.global_orient = torch.zeros(1, 3)
        lm = body(p, return_vertices=False).pose_landmarks[0].double().numpy()
    # sole tilt of the reference foot (heel -> big toe below horizontal, z up), both sides
    tilt = []
    for heel, toe in ((29, 31), (30, 32)):
        v = lm[toe] - lm[heel]
        tilt.append(np.degrees(np.arctan2(-v[2], np.hypot(v[0], v[1]))))
    return AnnyReference(labels=list(body.bone_labels), heads=poses[0, :, :3, 3].double().numpy(),
                         betas=p.betas[0].numpy().copy(), sole_tilt_deg=float(np.mean(tilt)))


def anny_reference(betas=None) -> AnnyReference:
    """The Anny reference skeleton for ``betas`` (6,) (default: average phenotype 0.5)."""
    key = None if betas is None else tuple(float(b) for b in np.asarray(betas).reshape(-1))
    return _anny_reference_cached(key)


# ----------------------------------------------------------------------------------------------
# source skeletons

@dataclass(frozen=True)
class SkeletonMap:
    """Joint correspondence of a mocap skeleton to :data:`ANNY_GROUPS`.

    Attributes:
        name: skeleton family (``bandai-namco``, ``cmu``, ``mixamo``).
        root: pelvis joint (drives ``global_orient`` / ``transl``).
        up: a joint above the pelvis (spine), for the pelvis' up axis.
        hips: (left, right) hip joints, for the pelvis' left axis.
        shoulders: (left, right) joints rigid with the chest, for the chest's left axis.
        groups: group name -> (driving joint, segment end joint or ``None``); the driving
            joint's world rotation orients the group, the end joint gives its direction.
        prefix: joint-name prefix stripped before matching (``mixamorig:``).
    """

    name: str
    root: str
    up: str
    hips: tuple[str, str]
    shoulders: tuple[str, str]
    groups: dict
    prefix: str = ""


def _limbs(L: dict, R: dict) -> dict:
    out = {}
    for side, names in (("L", L), ("R", R)):
        for g, v in names.items():
            out[f"{g}.{side}"] = v
    return out


BANDAI_NAMCO = SkeletonMap(
    name="bandai-namco", root="Hips", up="Spine", hips=("UpperLeg_L", "UpperLeg_R"),
    shoulders=("Shoulder_L", "Shoulder_R"),
    groups={
        **_limbs(*[{"hip": (f"UpperLeg_{s}", f"LowerLeg_{s}"), "knee": (f"LowerLeg_{s}", f"Foot_{s}"),
                    "ankle": (f"Foot_{s}", f"Toes_{s}"), "clavicle": (f"Shoulder_{s}", f"UpperArm_{s}"),
                    "shoulder": (f"UpperArm_{s}", f"LowerArm_{s}"), "elbow": (f"LowerArm_{s}", f"Hand_{s}"),
                    "wrist": (f"Hand_{s}", None)} for s in "LR"]),
        "spine_low": ("Spine", "Chest"), "spine_up": ("Chest", "Neck"), "neck": ("Neck", "Head"),
        "head": ("Head", None),
    })


def _cmu_like(name: str, spine: tuple[str, str, str], prefix: str = "") -> SkeletonMap:
    low, up, chest = spine
    return SkeletonMap(
        name=name, root="Hips", up=low, hips=("LeftUpLeg", "RightUpLeg"),
        shoulders=("LeftShoulder", "RightShoulder"), prefix=prefix,
        groups={
            **_limbs(*[{"hip": (f"{s}UpLeg", f"{s}Leg"), "knee": (f"{s}Leg", f"{s}Foot"),
                        "ankle": (f"{s}Foot", f"{s}ToeBase"), "clavicle": (f"{s}Shoulder", f"{s}Arm"),
                        "shoulder": (f"{s}Arm", f"{s}ForeArm"), "elbow": (f"{s}ForeArm", f"{s}Hand"),
                        "wrist": (f"{s}Hand", None)} for s in ("Left", "Right")]),
            "spine_low": (up, chest), "spine_up": (chest, "Neck"), "neck": ("Neck", "Head"),
            "head": ("Head", None),
        })


#: CMU mocap in the common BVH conversion (Hips, LowerBack, Spine, Spine1, Neck, Neck1, Head,
#: LeftShoulder, LeftArm, ...). Not exercised on real CMU files here (none are shipped).
CMU = _cmu_like("cmu", ("LowerBack", "Spine", "Spine1"))
#: Mixamo rigs (``mixamorig:`` prefix; Spine, Spine1, Spine2).
MIXAMO = _cmu_like("mixamo", ("Spine", "Spine1", "Spine2"), prefix="mixamorig:")
SKELETON_MAPS = (BANDAI_NAMCO, CMU, MIXAMO)


def _required_joints(sm: SkeletonMap) -> set[str]:
    req = {sm.root, sm.up, *sm.hips, *sm.shoulders}
    for drv, end in sm.groups.values():
        req.add(drv)
        if end:
            req.add(end)
    return req


def detect_skeleton(names: list[str]) -> SkeletonMap:
    """The :class:`SkeletonMap` whose joints all appear in ``names``.

    Raises:
        MocapFormatError: no known skeleton matches (the message lists what is missing).
    """
    best = None
    for sm in SKELETON_MAPS:
        stripped = {n[len(sm.prefix):] if sm.prefix and n.startswith(sm.prefix) else n for n in names}
        missing = _required_joints(sm) - stripped
        if not missing:
            return sm
        if best is None or len(missing) < len(best[1]):
            best = (sm, missing)
    raise MocapFormatError(
        f"unknown BVH skeleton: closest is {best[0].name!r} but it lacks {sorted(best[1])}. "
        f"Supported: {[s.name for s in SKELETON_MAPS]}; pass skeleton=SkeletonMap(...) for others.")


def _jidx(motion: BVHMotion, sm: SkeletonMap, name: str) -> int:
    full = sm.prefix + name if sm.prefix and (sm.prefix + name) in motion.names else name
    return motion.index(full)


# ----------------------------------------------------------------------------------------------
# calibration

def _wahba(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Rotation O (3, 3) minimising sum_k w_k |O a_k - b_k|^2 (Kabsch). a, b (N, 3), w (N,)."""
    H = (w[:, None, None] * b[:, :, None] * a[:, None, :]).sum(0)
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(U @ Vt)) or 1.0
    return U @ np.diag([1.0, 1.0, d]) @ Vt


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _rot_x(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


@dataclass
class Calibration:
    """Constant rotations from Anny's reference axes to a source skeleton's local joint axes.

    Attributes:
        skeleton: the :class:`SkeletonMap` name.
        root: (3, 3) for the pelvis (``Rs_root @ root`` maps Anny model axes to source world).
        groups: group name -> (3, 3).
        frames: number of frames it was solved from.
    """

    skeleton: str
    root: np.ndarray
    groups: dict[str, np.ndarray]
    frames: int = 0


def _hinge_pairs(ref: AnnyReference) -> dict[str, tuple[str, str, np.ndarray]]:
    """group -> (first segment group, second segment group, Anny reference hinge normal)."""
    out = {}
    for s in "LR":
        seg = {k: ref.segment(ANNY_GROUPS[GROUP_NAMES.index(f"{k}.{s}")])
               for k in ("hip", "knee", "ankle", "shoulder", "elbow")}
        # Anny's reference knee is almost straight: flex it (about +x, local-ref) to get the hinge
        knee = _unit(np.cross(seg["hip"], _rot_x(60) @ seg["knee"]))
        ankle = _unit(np.cross(seg["knee"], seg["ankle"]))
        elbow = _unit(np.cross(seg["shoulder"], seg["elbow"]))
        out[f"hip.{s}"] = (f"hip.{s}", f"knee.{s}", knee)
        out[f"knee.{s}"] = (f"hip.{s}", f"knee.{s}", knee)
        out[f"ankle.{s}"] = (f"knee.{s}", f"ankle.{s}", ankle)
        out[f"shoulder.{s}"] = (f"shoulder.{s}", f"elbow.{s}", elbow)
        out[f"elbow.{s}"] = (f"shoulder.{s}", f"elbow.{s}", elbow)
    return out


def flat_foot_direction(ref: AnnyReference, side: str, source_drop_deg: float) -> np.ndarray:
    """Anny-frame direction that a source foot segment must map to so that a flat source foot
    gives a flat Anny foot.

    Foot joints of mocap skeletons (ankle -> ball / toe joint) and Anny's (``foot`` head ->
    ``toe3-1`` head) point below the horizontal by different angles when the sole is flat, so
    matching directions exactly would leave Anny's feet pointed or flexed. The returned vector
    has the azimuth of Anny's reference foot and drops ``source_drop_deg`` plus the reference
    sole tilt below the horizontal.
    """
    f = ref.segment(ANNY_GROUPS[GROUP_NAMES.index(f"ankle.{side}")])
    horiz = _unit(np.array([f[0], f[1], 0.0]))
    e = np.radians(source_drop_deg + ref.sole_tilt_deg)
    return _unit(horiz * np.cos(e) - np.array([0, 0, 1.0]) * np.sin(e))


def _stance_drop_deg(motions: list[BVHMotion], sm: SkeletonMap, up: np.ndarray, side_joints) -> float | None:
    """Mean angle (deg) below the horizontal of the source foot segment while the foot is flat
    on the floor (ankle and toe joints both within 2 cm of their lowest height in the clip and
    the foot slower than 0.3 m/s); ``None`` when no such frame exists."""
    drops = []
    for m in motions:
        _, P = m.world()
        for foot, toe in side_joints:
            pf, pt = P[:, _jidx(m, sm, foot)], P[:, _jidx(m, sm, toe)]
            hf, ht = pf @ up, pt @ up
            speed = np.linalg.norm(np.gradient(pf, axis=0), axis=-1) * m.fps
            st = (hf < hf.min() + 0.02) & (ht < ht.min() + 0.02) & (speed < 0.3)
            if st.any():
                v = pt[st] - pf[st]
                h = np.linalg.norm(v - (v @ up)[:, None] * up, axis=-1)
                drops.append(np.degrees(np.arctan2(-(v @ up), h)))
    if not drops:
        return None
    return float(np.median(np.concatenate(drops)))


def calibrate(motions: list[BVHMotion], skeleton: SkeletonMap | None = None,
              max_frames: int = 20000, ref: AnnyReference | None = None, up_axis: str = "y",
              flat_feet: bool = True, neutral: tuple[str, ...] = ("neck", "head", "wrist.L", "wrist.R")
              ) -> Calibration:
    """Solve the rest-pose alignment of a BVH skeleton to Anny (module docstring).

    Args:
        motions: clips of one skeleton family (frames are pooled; more variety = better twist
            estimates; one clip works).
        skeleton: correspondence table (default: :func:`detect_skeleton`).
        max_frames: frames used at most (evenly subsampled).
        ref: Anny reference skeleton (default: average phenotype).
        up_axis: world up axis of the files (for the flat-foot detection).
        flat_feet: align the feet so that a source foot standing flat gives a flat Anny foot
            (:func:`flat_foot_direction`) instead of matching the ankle->toe direction.
        neutral: groups whose mean rotation relative to their parent group over the corpus is
            mapped to Anny's reference relative rotation instead of matching directions: the
            neck (mocap neck joints sit more upright than Anny's forward-tilted cervical bones,
            which would tilt the head back), the head and the wrists (no length in most BVH
            files; mocap hands rest slightly flexed).
    Returns:
        :class:`Calibration`.
    """
    if not motions:
        raise MocapFormatError("calibrate() needs at least one motion")
    sm = skeleton or detect_skeleton(motions[0].names)
    ref = ref or anny_reference()
    total = sum(m.num_frames for m in motions)
    step = max(1, total // max_frames)
    Rs, Ps = [], []
    for m in motions:
        R, P = m.world()
        Rs.append(R[::step])
        Ps.append(P[::step])
    R, P = np.concatenate(Rs), np.concatenate(Ps)
    m0 = motions[0]
    J = lambda n: _jidx(m0, sm, n)  # noqa: E731

    def local(joint: str, vec: np.ndarray) -> np.ndarray:
        """world vectors (N,3) -> joint-local, averaged, unit."""
        return _unit(np.einsum("tji,tj->i", R[:, J(joint)], vec))

    # pelvis: left axis (exact), up axis (secondary)
    a_left = _unit(ref.head("upperleg01.L") - ref.head("upperleg01.R"))
    a_up = _unit(ref.head("spine02") - ref.head("root"))
    b_left = local(sm.root, _unit(P[:, J(sm.hips[0])] - P[:, J(sm.hips[1])]))
    b_up = local(sm.root, _unit(P[:, J(sm.up)] - P[:, J(sm.root)]))
    O_root = _wahba(np.stack([a_left, a_up]), np.stack([b_left, b_up]), np.array([100.0, 1.0]))

    seg_world = {}
    for g in ANNY_GROUPS:
        drv, end = sm.groups[g.name]
        if end is not None:
            seg_world[g.name] = P[:, J(end)] - P[:, J(drv)]
    hinges = _hinge_pairs(ref)
    lateral = (_unit(P[:, J(sm.shoulders[0])] - P[:, J(sm.shoulders[1])])
               + _unit(P[:, J(sm.hips[0])] - P[:, J(sm.hips[1])]))
    chest_up = seg_world["spine_up"]
    up = np.zeros(3)
    up["xyz".index(up_axis[-1].lower())] = -1.0 if up_axis.startswith("-") else 1.0
    drop = None
    if flat_feet:
        feet = [sm.groups[f"ankle.{s}"] for s in "LR"]
        drop = _stance_drop_deg(motions[: max(1, min(len(motions), 200))], sm, up, feet)
        log.debug("flat-foot drop of the source foot: %s deg", drop)
    O: dict[str, np.ndarray] = {}
    for g in ANNY_GROUPS:
        drv, end = sm.groups[g.name]
        if end is None:
            continue
        a1, b1 = ref.segment(g), local(drv, seg_world[g.name])
        if g.name.startswith("ankle") and drop is not None:
            a1 = flat_foot_direction(ref, g.name[-1], drop)
        if g.name in hinges:
            s1, s2, a2 = hinges[g.name]
            if g.name.startswith("ankle"):
                a2 = _unit(np.cross(ref.segment(ANNY_GROUPS[GROUP_NAMES.index(s1)]), a1))
            n = np.cross(seg_world[s1], seg_world[s2]) / np.maximum(
                np.linalg.norm(seg_world[s1], axis=-1) * np.linalg.norm(seg_world[s2], axis=-1), 1e-12)[:, None]
            b2 = local(drv, n)
        elif g.name.startswith("clavicle"):
            a2, b2 = ref.segment(ANNY_GROUPS[GROUP_NAMES.index("spine_up")]), local(drv, chest_up)
        else:
            a2, b2 = np.array([1.0, 0, 0]), local(drv, lateral)
        O[g.name] = _wahba(np.stack([a1, a2]), np.stack([b1, b2]), np.array([100.0, 1.0]))
    for g in ANNY_GROUPS:  # orientation-only groups inherit their parent's axes
        if g.name not in O:
            O[g.name] = O[g.parent]
    for g in ANNY_GROUPS:  # parents first
        if g.name not in neutral or g.parent is None:
            continue
        parent_joint, joint = sm.groups[g.parent][0], sm.groups[g.name][0]
        Q = np.swapaxes(R[:, J(parent_joint)], -1, -2) @ R[:, J(joint)]
        U, _, Vt = np.linalg.svd(Q.mean(0))
        Qm = U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))]) @ Vt
        O[g.name] = Qm.T @ O[g.parent]
    return Calibration(skeleton=sm.name, root=O_root, groups=O, frames=int(R.shape[0]))


# ----------------------------------------------------------------------------------------------
# retargeting

@dataclass
class MocapPoses:
    """Mocap retargeted to Anny.

    Attributes:
        body_pose: (T, 35, 3) float32 axis-angle radians (``local-ref``).
        global_orient: (T, 3) float32 axis-angle, OpenCV-style world (y down, first frame
            facing the camera).
        transl: (T, 3) float32 metres (first frame's pelvis at (0, 0, 3)).
        fps: frames per second.
        source: clip name.
        joint_names: (J,) source joint names (empty when unknown).
        joint_positions: (T, J, 3) float32 source joints in the same world as ``transl``.
        joint_parents: (J,) int parent index per source joint.
        segments: group name -> (driving joint index, end joint index) of the source skeleton
            (groups with a direction only), for :func:`direction_errors`.
    """

    body_pose: np.ndarray
    global_orient: np.ndarray
    transl: np.ndarray
    fps: float
    source: str = ""
    joint_names: list[str] = field(default_factory=list)
    joint_positions: np.ndarray | None = None
    joint_parents: np.ndarray | None = None
    segments: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.body_pose.shape[0])

    def to_body_params(self, body=None, betas=None):
        """As :class:`~ram_avatar.body.base.BodyParams` of batch T (fingers, jaw at rest)."""
        from ram_avatar.body.base import BodyParams
        T = self.num_frames
        z = lambda *s: torch.zeros(*s)  # noqa: E731
        if betas is None:
            betas = torch.full((1, 6), 0.5) if body is None else body.default_betas[None].clone()
        return BodyParams(betas=torch.as_tensor(betas, dtype=torch.float32).reshape(1, -1),
                          global_orient=torch.as_tensor(self.global_orient),
                          body_pose=torch.as_tensor(self.body_pose), left_hand_pose=z(T, 15, 3),
                          right_hand_pose=z(T, 15, 3), jaw_pose=z(T, 3),
                          expression=z(T, 0 if body is None else body.num_expression),
                          transl=torch.as_tensor(self.transl))


def _facing_frame(up_world: np.ndarray, forward_world: np.ndarray) -> np.ndarray:
    """Rotation M (3,3) taking source world to the output world: up -> -y, the horizontal part
    of ``forward`` -> -z (towards the camera)."""
    up = _unit(up_world)
    f = forward_world - up * (forward_world @ up)
    if np.linalg.norm(f) < 1e-6:
        f = np.array([1.0, 0, 0]) if abs(up[0]) < 0.9 else np.array([0.0, 0, 1])
        f = f - up * (f @ up)
    f = _unit(f)
    src = np.stack([up, f, np.cross(up, f)], 1)             # columns: up, fwd, up x fwd
    dst_up, dst_f = np.array([0.0, -1, 0]), np.array([0.0, 0, -1])
    dst = np.stack([dst_up, dst_f, np.cross(dst_up, dst_f)], 1)
    return dst @ src.T


def _mat_to_rotvec(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    shp = R.shape[:-2]
    return Rotation.from_matrix(R.reshape(-1, 3, 3)).as_rotvec().reshape(*shp, 3)


def world_groups_to_params(G_root: np.ndarray, G: np.ndarray, root_pos: np.ndarray,
                           up_world: np.ndarray, distance: float = 3.0) -> tuple[np.ndarray, ...]:
    """Turn per-frame group orientations into Anny parameters.

    Args:
        G_root: (T, 3, 3) pelvis orientation, Anny model axes -> source world.
        G: (T, 18, 3, 3) group orientations relative to the pelvis (Anny model axes).
        root_pos: (T, 3) pelvis position in source world, metres.
        up_world: (3,) source world up axis.
        distance: first-frame pelvis depth in front of the camera, metres.
    Returns:
        body_pose (T, 35, 3), global_orient (T, 3), transl (T, 3), M (3, 3) source world ->
        output world, origin (3,) (output = M (x - origin) + (0, 0, distance)).
    """
    T = G.shape[0]
    par = np.array(GROUP_PARENTS)
    Gp = np.where((par < 0)[None, :, None, None], np.eye(3)[None, None], G[:, np.maximum(par, 0)])
    D = np.swapaxes(Gp, -1, -2) @ G                                      # (T, G, 3, 3)
    v = _mat_to_rotvec(D)
    body_pose = v[:, BONE_GROUP] * BONE_WEIGHT[None, :, None]
    fwd0 = G_root[0] @ np.array([0.0, -1, 0])                            # Anny faces -y
    M = _facing_frame(up_world, fwd0)
    orient = _mat_to_rotvec(M[None] @ G_root)
    origin = root_pos[0]
    transl = (root_pos - origin) @ M.T + np.array([0, 0, distance])
    return (body_pose.astype(np.float32), orient.astype(np.float32), transl.astype(np.float32), M, origin)


def retarget_bvh(motion: BVHMotion | str | Path, calibration: Calibration | None = None,
                 skeleton: SkeletonMap | None = None, up_axis: str = "y",
                 distance: float = 3.0) -> MocapPoses:
    """Retarget a BVH clip to Anny ``body_pose`` / ``global_orient`` / ``transl``.

    Args:
        motion: parsed clip or path.
        calibration: from :func:`calibrate` (default: calibrate on this clip alone; pool many
            clips of the same skeleton for consistent twist).
        skeleton: correspondence table (default: detected from joint names).
        up_axis: the file's world up axis (``x``, ``y``, ``z``, optionally ``-y``...); BVH is
            almost always ``y``.
        distance: depth of the first frame's pelvis in front of the camera, metres.
    Returns:
        :class:`MocapPoses` (source joints included, for :func:`direction_errors`).
    """
    if not isinstance(motion, BVHMotion):
        motion = read_bvh(motion)
    sm = skeleton or detect_skeleton(motion.names)
    cal = calibration or calibrate([motion], sm, up_axis=up_axis)
    R, P = motion.world()
    J = lambda n: _jidx(motion, sm, n)  # noqa: E731
    G_root = R[:, J(sm.root)] @ cal.root                                 # Anny model -> world
    G = np.stack([np.swapaxes(G_root, -1, -2) @ R[:, J(sm.groups[g.name][0])] @ cal.groups[g.name]
                  for g in ANNY_GROUPS], 1)
    up = np.zeros(3)
    up["xyz".index(up_axis[-1].lower())] = -1.0 if up_axis.startswith("-") else 1.0
    body_pose, orient, transl, M, origin = world_groups_to_params(G_root, G, P[:, J(sm.root)], up, distance)
    joints = ((P - origin) @ M.T + np.array([0, 0, distance])).astype(np.float32)
    segs = {g.name: (J(sm.groups[g.name][0]), J(sm.groups[g.name][1]))
            for g in ANNY_GROUPS if sm.groups[g.name][1] is not None}
    return MocapPoses(body_pose=body_pose, global_orient=orient, transl=transl, fps=motion.fps,
                      source=str(motion.path.name if motion.path else ""), joint_names=list(motion.names),
                      joint_positions=joints, joint_parents=np.asarray(motion.parents), segments=segs)


# ----------------------------------------------------------------------------------------------
# checks

def anny_joint_positions(poses: MocapPoses, body=None, chunk: int = 512) -> np.ndarray:
    """World positions (T, 104, 3) of Anny's bone heads for retargeted poses (metres)."""
    from ram_avatar.body import load_body_model
    body = body or load_body_model("anny")
    params = poses.to_body_params(body)
    out = []
    with torch.no_grad():
        for s in range(0, poses.num_frames, chunk):
            p = params.index(slice(s, s + chunk))
            _, _, bp = body._bone_transforms(p)
            Rg = _rotvec_to_rotmat(p.global_orient)
            out.append(torch.einsum("bij,bnj->bni", Rg, bp[..., :3, 3]) + p.transl[:, None])
    return torch.cat(out).double().numpy()


def direction_errors(poses: MocapPoses, body=None, heads: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Angle between each retargeted Anny segment and its source segment, per frame.

    Segments: every group with a length (``JointGroup.end``), Anny ``start -> end`` bone heads
    versus source ``driving joint -> end joint``, both in the output world.

    Args:
        poses: from :func:`retarget_bvh` (needs source joints).
        body: Anny body model (loaded when omitted).
        heads: precomputed :func:`anny_joint_positions` (optional).
    Returns:
        group name -> (T,) error in degrees.
    """
    if poses.joint_positions is None:
        raise ValueError("direction_errors needs the source joints (retarget_bvh output)")
    from ram_avatar.body.anny_backend import AnnyBodyModel  # noqa: F401  (type only)
    ref = anny_reference()
    H = anny_joint_positions(poses, body) if heads is None else heads
    out = {}
    for g in ANNY_GROUPS:
        if g.name not in poses.segments:
            continue
        a = _unit(H[:, ref.labels.index(g.end)] - H[:, ref.labels.index(g.start)])
        i, j = poses.segments[g.name]
        b = _unit(poses.joint_positions[:, j] - poses.joint_positions[:, i])
        out[g.name] = np.degrees(np.arccos(np.clip((a * b).sum(-1), -1, 1)))
    return out


def twist_errors(poses: MocapPoses, body=None, heads: np.ndarray | None = None,
                 min_bend_deg: float = 25.0) -> dict[str, np.ndarray]:
    """Twist check: angle between Anny's and the source's hinge-plane normals.

    Direction errors cannot see a limb rotated about its own axis; the plane of a bent knee
    (thigh x shin), elbow (upper arm x forearm) and ankle (shin x foot) can. Frames where the
    source joint is bent less than ``min_bend_deg`` are NaN (the plane is ill-defined).

    Returns:
        ``knee.L``, ``elbow.R``, ... -> (T,) degrees (NaN where straight).
    """
    ref = anny_reference()
    H = anny_joint_positions(poses, body) if heads is None else heads
    S = poses.joint_positions
    out = {}
    for s in "LR":
        for name, g1, g2 in (("knee", "hip", "knee"), ("elbow", "shoulder", "elbow"),
                             ("ankle", "knee", "ankle")):
            a, b = ANNY_GROUPS[GROUP_NAMES.index(f"{g1}.{s}")], ANNY_GROUPS[GROUP_NAMES.index(f"{g2}.{s}")]
            na = np.cross(H[:, ref.labels.index(a.end)] - H[:, ref.labels.index(a.start)],
                          H[:, ref.labels.index(b.end)] - H[:, ref.labels.index(b.start)])
            (i1, j1), (i2, j2) = poses.segments[a.name], poses.segments[b.name]
            u, v = S[:, j1] - S[:, i1], S[:, j2] - S[:, i2]
            ns = np.cross(u, v)
            sin_bend = np.linalg.norm(ns, axis=-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
            bent = (sin_bend > np.sin(np.radians(min_bend_deg))) & ((u * v).sum(-1) < np.inf)
            err = np.degrees(np.arccos(np.clip((_unit(na) * _unit(ns)).sum(-1), -1, 1)))
            out[f"{name}.{s}"] = np.where(bent, err, np.nan)
    # left-right axes of the pelvis and chest (twist of the root and the spine)
    for name, (la, ra), key in (("pelvis", ("upperleg01.L", "upperleg01.R"), "hip"),
                                ("chest", ("clavicle.L", "clavicle.R"), "clavicle")):
        na = H[:, ref.labels.index(la)] - H[:, ref.labels.index(ra)]
        ns = S[:, poses.segments[f"{key}.L"][0]] - S[:, poses.segments[f"{key}.R"][0]]
        out[name] = np.degrees(np.arccos(np.clip((_unit(na) * _unit(ns)).sum(-1), -1, 1)))
    return out


#: segments deliberately not direction-matched (flat-foot and neutral-neck calibration)
DESIGN_OFFSET_GROUPS = ("ankle.L", "ankle.R", "neck")


def retarget_report(poses: MocapPoses, body=None) -> dict:
    """Summary of :func:`direction_errors` and :func:`twist_errors` of one clip (degrees):
    ``direction_mean`` / ``direction_max`` over the direction-matched segments (all but
    :data:`DESIGN_OFFSET_GROUPS`, whose constant offsets are reported in
    ``design_offset_deg``), ``twist_mean`` / ``twist_p95`` over the knee and elbow hinge planes
    and the pelvis / chest left axes, and per-joint means."""
    H = anny_joint_positions(poses, body)
    d = direction_errors(poses, heads=H)
    t = twist_errors(poses, heads=H)
    exact = [k for k in d if k not in DESIGN_OFFSET_GROUPS]
    dv = np.concatenate([d[k] for k in exact])
    tv = np.concatenate([v[np.isfinite(v)] for k, v in t.items() if not k.startswith("ankle")])
    return {"frames": poses.num_frames, "direction_mean": float(dv.mean()), "direction_max": float(dv.max()),
            "design_offset_deg": {k: float(d[k].mean()) for k in d if k in DESIGN_OFFSET_GROUPS},
            "twist_mean": float(tv.mean()) if tv.size else float("nan"),
            "twist_p95": float(np.percentile(tv, 95)) if tv.size else float("nan"),
            "direction": {k: float(v.mean()) for k, v in d.items()},
            "twist": {k: float(np.nanmean(v)) if np.isfinite(v).any() else None for k, v in t.items()}}


def plot_retarget_strip(poses: MocapPoses, path: str | Path, frames: list[int] | None = None,
                        body=None, title: str | None = None, dpi: int = 80) -> Path:
    """Draw source skeleton (blue) beside the posed Anny skeleton (red) for a few frames.

    Two rows: front view (x right, y up on the page) and side view (z, y). Writes a PNG.

    Args:
        poses: :func:`retarget_bvh` output.
        path: output ``.png``.
        frames: frame indices (default: 6 evenly spaced).
    Returns:
        ``path``.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ram_avatar.utils import atomic_path
    ref = anny_reference()
    H = anny_joint_positions(poses, body)
    T = poses.num_frames
    frames = frames if frames is not None else list(np.linspace(0, T - 1, 6).astype(int))
    fig, axes = plt.subplots(2, len(frames), figsize=(2.6 * len(frames), 6.4), squeeze=False)
    anny_pairs = [(g.start, g.end) for g in ANNY_GROUPS if g.end] + [
        ("root", "upperleg01.L"), ("root", "upperleg01.R"), ("root", "spine02"),
        ("spine01", "clavicle.L"), ("spine01", "clavicle.R"), ("head", "eye.L"), ("head", "eye.R"),
        ("wrist.L", "finger3-1.L"), ("wrist.R", "finger3-1.R")]
    par = np.asarray(poses.joint_parents)
    ground_root = 0 if (par == 0).sum() == 1 and len(par) > 2 else -2  # BVH ground node
    for c, f in enumerate(frames):
        src = poses.joint_positions[f]
        ctr = src.mean(0)
        for r, (u, v) in enumerate(((0, 1), (2, 1))):
            ax = axes[r, c]
            for j, p in enumerate(poses.joint_parents):
                if p >= 0 and not (p == ground_root) and np.linalg.norm(src[j] - src[p]) > 1e-6:
                    ax.plot([src[p, u] - ctr[u] - 0.5, src[j, u] - ctr[u] - 0.5],
                            [-src[p, v], -src[j, v]], "-", color="tab:blue", lw=2)
            for a, b in anny_pairs:
                pa, pb = H[f, ref.labels.index(a)], H[f, ref.labels.index(b)]
                ax.plot([pa[u] - ctr[u] + 0.5, pb[u] - ctr[u] + 0.5], [-pa[v], -pb[v]], "-",
                        color="tab:red", lw=2)
            ax.set_aspect("equal")
            ax.set_xlim(-1.3, 1.3)
            ax.set_ylim(-ctr[1] - 1.1, -ctr[1] + 1.1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frame {f}", fontsize=9)
        axes[0, 0].set_ylabel("front (x, y)")
        axes[1, 0].set_ylabel("side (z, y)")
    fig.suptitle(title or f"{poses.source}: source (blue) | Anny (red)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path
