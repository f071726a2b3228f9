"""Anny body-model backend (embedded default; Apache-2.0 code, CC0 assets).

Anny (NAVER, PyPI ``anny``) is a MakeHuman-derived body: 13,718 vertices with UVs, a 104-bone
rig with 15 finger bones per hand, metres, z-up, facing -y, pelvis at the origin. Its shape
parameters are six phenotype values in [0, 1] (gender, age, muscle, weight, height,
proportions); we call them ``betas`` to keep the ``smplx`` vocabulary.

Pose parameters use Anny's ``local-ref`` parameterisation: each bone's rotation is expressed in
the axes of the rest pose (so knee flexion is a rotation about +x). Landmarks: Anny's COCO
keypoint regressor (face points, feet) and bone heads (joint centres), plus a fingertip vertex
per finger; they are mapped to MediaPipe's layouts here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from typing import NamedTuple

import numpy as np
import torch

from ram_avatar.body.base import (BodyModel, BodyOutput, BodyParams, MEDIAPIPE_POSE_NAMES,
                                  rigid_apply, rotvec_to_rotmat)
from ram_avatar.errors import ModelFileError

log = logging.getLogger(__name__)

SIDES = ("L", "R")
#: Anny bones driven by ``body_pose`` (35): legs, spine, arms, neck and head. Toes, eyes and
#: metacarpals stay at rest; the root carries ``global_orient``.
ANNY_BODY_BONES = [
    *[f"{b}.{s}" for s in SIDES for b in ("pelvis", "upperleg01", "upperleg02", "lowerleg01",
                                           "lowerleg02", "foot")],
    "spine05", "spine04", "spine03", "spine02", "spine01",
    *[f"{b}.{s}" for s in SIDES for b in ("clavicle", "shoulder01", "upperarm01", "upperarm02",
                                           "lowerarm01", "lowerarm02", "wrist")],
    "neck01", "neck02", "neck03", "head",
]
#: Finger bones per hand (15), thumb first, in the order of ``*_hand_pose``.
ANNY_FINGER_BONES = [f"finger{f}-{k}" for f in range(1, 6) for k in range(1, 4)]

# MediaPipe pose landmark -> COCO-regressor label of Anny, or ("bone", name-without-side) to use a
# bone head; ``None`` = not provided (eye corners, mouth corners).
_POSE_SOURCES = {
    "nose": "nose", "left_eye": "left_eye", "right_eye": "right_eye", "left_ear": "left_ear",
    "right_ear": "right_ear", "left_shoulder": "left_shoulder", "right_shoulder": "right_shoulder",
    "left_elbow": "left_elbow", "right_elbow": "right_elbow", "left_wrist": "left_wrist",
    "right_wrist": "right_wrist", "left_pinky": ("bone", "finger5-1.L"),
    "right_pinky": ("bone", "finger5-1.R"), "left_index": ("bone", "finger2-1.L"),
    "right_index": ("bone", "finger2-1.R"), "left_thumb": ("bone", "finger1-2.L"),
    "right_thumb": ("bone", "finger1-2.R"), "left_hip": "left_hip", "right_hip": "right_hip",
    "left_knee": "left_knee", "right_knee": "right_knee", "left_ankle": "left_ankle",
    "right_ankle": "right_ankle", "left_heel": "left_heel", "right_heel": "right_heel",
    "left_foot_index": "left_big_toe", "right_foot_index": "right_big_toe",
}


@functools.lru_cache(maxsize=8)
def _ancestor_steps(parents: tuple[int, ...]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Index tensors of pointer jumping over a bone tree (:func:`anny_forward_kinematics`).

    Nodes are the bones plus an identity node ``n = len(parents)`` above the root. Step k
    gathers, for every node, its 2^k-th ancestor (``n`` past the root), so that
    ``X <- X[:, steps[k]] @ X`` for k = 0, 1, ... turns each node's transform relative to its
    parent into its transform relative to the identity node. Returns ((n,) int64 parent of
    every bone, the root its own; one (n + 1,) int64 tensor per step).
    """
    n = len(parents)
    up = [p if p >= 0 else n for p in parents] + [n]
    depth = 0
    for c in range(n):
        d, a = 0, c
        while a != n:
            a, d = up[a], d + 1
        depth = max(depth, d)
    steps = []
    while (1 << len(steps)) < depth:
        steps.append(torch.tensor(up, dtype=torch.long))
        up = [up[a] for a in up]
    return torch.tensor([p if p >= 0 else c for c, p in enumerate(parents)]), steps


class AnnyRestChain(NamedTuple):
    """The shape-only part of :func:`anny_forward_kinematics` (:func:`anny_rest_chain`).

    Attributes:
        steps: pointer-jumping index tensors (:func:`_ancestor_steps`), on the device.
        upt: (1 or B, nb, 3, 3) ``U_p^T``, the parent's reference orientation transposed.
        u: (1 or B, nb, 3, 3) or (nb, 3, 3) reference orientations ``U_c``.
        k_t: (1 or B, nb, 3) translations ``U_p^T A_p (h_c - h_p)`` of ``K_c`` (root 0).
        q: (1 or B, nb, 3, 3) rest rotations ``Q_c``; h: (1 or B, nb, 3) rest heads ``h_c``.
    """

    steps: list
    upt: torch.Tensor
    u: torch.Tensor
    k_t: torch.Tensor
    q: torch.Tensor
    h: torch.Tensor


def anny_rest_chain(model, rest_bone_poses: torch.Tensor,
                    dtype: torch.dtype | None = None) -> AnnyRestChain:
    """The terms of :func:`anny_forward_kinematics` that depend on the shape only (its
    ``K_c`` without the rotation, the rest poses, the tree's pointer-jumping steps), from
    ``rest_bone_poses (1 or B, nb, 4, 4)``, in ``dtype`` (default the rest poses').

    Raises:
        ValueError: a model in another pose parameterisation than ``local-ref``.
    """
    if getattr(model, "pose_parameterization", None) != "local-ref":
        raise ValueError("anny_forward_kinematics implements the local-ref parameterisation, "
                         f"not {getattr(model, 'pose_parameterization', None)!r}")
    dev, dt = rest_bone_poses.device, dtype or rest_bone_poses.dtype
    parent, steps = _ancestor_steps(tuple(int(p) for p in model.bone_parents))
    parent = parent.to(dev)
    Q, h = rest_bone_poses[..., :3, :3].to(dt), rest_bone_poses[..., :3, 3].to(dt)
    U = model.reference_bone_orientations
    U = Q if U is None else U.to(dev, dt)
    A = U[..., 1:, :, :] @ Q[..., 1:, :, :].transpose(-1, -2)
    A = torch.cat([torch.eye(3, dtype=dt, device=dev).expand_as(A[..., :1, :, :]), A], -3)
    Upt = U[..., parent, :, :].transpose(-1, -2)
    k_t = (Upt @ A[..., parent, :, :] @ (h - h[..., parent, :])[..., None])[..., 0]
    k_t[..., 0, :] = 0.0
    return AnnyRestChain([a.to(dev) for a in steps], Upt, U, k_t, Q, h)


def anny_forward_kinematics(model, rotations: torch.Tensor, rest_bone_poses: torch.Tensor,
                            chain: AnnyRestChain | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Anny's forward kinematics for pure bone rotations, in few batched operations.

    The same result as ``model.get_bone_transforms(D, rest_bone_poses)`` (``anny.utils.
    kinematics.forward_kinematic``, ``local-ref`` parameterisation) for deltas ``D = [R_c | 0]``,
    which are all this project poses: with ``U_c`` the reference orientations, ``P_c = [Q_c |
    h_c]`` the rest poses and ``A_c = U_c Q_c^T`` (``A_0 = I``), each bone's pose relative to its
    parent is ``K_c = [U_p^T R_c U_c | U_p^T A_p (h_c - h_p)]`` (the root's is
    ``[U_0^T R_0 U_0 | 0]``), the posed poses are the chain ``W_c = W_p K_c``, and the skinning
    transforms ``T_c = W_c P_c^-1``. The chain is evaluated by pointer jumping (Hillis and
    Steele's parallel prefix on a tree): ``ceil(log2 depth)`` batched 4x4 products over all
    bones (5 for Anny's 17 levels) instead of one per level.

    Anny builds every 4x4 through ``roma.Rigid`` objects and products as broadcast sums; on the
    live fit's batch of 1 that per-call overhead made it 2.4-2.9x slower than this form
    (1.13-1.34 against 0.47 ms for one pose, on the 2-core development machine).

    Args:
        model: the ``anny`` rigged model (``local-ref`` parameterisation).
        rotations: (B, nb, 3, 3) bone rotations ``R_c`` (identity = rest).
        rest_bone_poses: (1 or B, nb, 4, 4) rest bone poses of the shape.
        chain: the shape's :func:`anny_rest_chain` of ``rest_bone_poses``, when the caller
            keeps it (a fixed shape: the live fit), else computed here.
    Returns:
        (skinning transforms T (B, nb, 4, 4), posed bone poses W (B, nb, 4, 4)), metres.
    Raises:
        ValueError: a model in another pose parameterisation.
    """
    if chain is None:
        chain = anny_rest_chain(model, rest_bone_poses, rotations.dtype)
    dev, dt = rotations.device, rotations.dtype
    B, nb = rotations.shape[:2]
    # K_c for every bone plus an identity node at index nb, the root's "parent"
    X = torch.zeros(B, nb + 1, 4, 4, dtype=dt, device=dev)
    X[:, :nb, :3, :3] = chain.upt @ rotations @ chain.u
    X[:, :nb, :3, 3] = chain.k_t
    X[:, :, 3, 3] = 1.0
    X[:, nb, :3, :3] = torch.eye(3, dtype=dt, device=dev)
    # pointer jumping: after step k, X_c is the product of the 2^k transforms above and at c
    for anc in chain.steps:
        X = X[:, anc] @ X
    W = X[:, :nb]
    T = torch.zeros_like(W)
    rot = W[..., :3, :3] @ chain.q.transpose(-1, -2)
    T[..., :3, :3] = rot
    T[..., :3, 3] = W[..., :3, 3] - (rot @ chain.h[..., None])[..., 0]
    T[..., 3, 3] = 1.0
    return T, W


def _quiet_warp() -> None:
    """Keep NVIDIA Warp (an Anny dependency) from printing its initialisation banner.

    Warp prints "Warp x.y initialized: ..." on stdout when it initialises (anny calls
    ``wp.init()`` when its skinning modules load), which breaks CLI verbs that print JSON on
    stdout (``ram-avatar bench live ... | python -m json.tool``). The banner is an info message:
    ``warp.config.log_level`` (Warp >= 1.19) or ``warp.config.quiet`` (older) silence it when
    set before initialisation; :func:`_load_anny` also redirects stdout to stderr meanwhile.
    """
    try:
        import warp
    except ImportError:  # anny without warp: nothing to silence
        return
    warp.config.quiet = True
    level = getattr(warp, "LOG_WARNING", None)
    if level is not None and getattr(warp.config, "log_level", level) < level:
        warp.config.log_level = level


@functools.lru_cache(maxsize=2)
def _load_anny():
    # stdout carries the JSON of CLI verbs: anything anny / warp print while loading goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        _quiet_warp()
        try:
            import anny
        except ImportError as e:  # pragma: no cover - core dependency
            raise ModelFileError("the 'anny' package is not installed: pip install anny") from e
        log.info("loading the Anny body model (the first run builds a cache, about a minute)")
        model = anny.Anny().to(torch.float32)
        model.requires_grad_(False)
        return model, anny.KeypointsRegressor.coco(model)


class AnnyBodyModel(BodyModel):
    """The Anny body as a :class:`~ram_avatar.body.base.BodyModel`.

    ``betas`` (B, 6) are the phenotype values [gender, age, muscle, weight, height, proportions]
    in [0, 1] (0.5 = average). ``jaw_pose`` and ``expression`` are accepted and ignored (Anny's
    rig has no jaw; the face is driven by the separate face map, DESIGN.md).
    """

    name = "anny"
    num_expression = 0

    def __init__(self):
        super().__init__()
        anny_model, coco = _load_anny()
        self._anny = [anny_model]  # kept out of the module tree: frozen, shared, float32
        labels = list(anny_model.bone_labels)
        self.bone_labels = labels
        self.body_joint_names = list(ANNY_BODY_BONES)
        self.hand_joint_names = list(ANNY_FINGER_BONES)
        #: body_pose indices of the knees (hinge joints, flexion = +x in local-ref axes)
        self.knee_joints = [ANNY_BODY_BONES.index("lowerleg01.L"), ANNY_BODY_BONES.index("lowerleg01.R")]
        self.num_betas = len(anny_model.phenotype_labels)
        self.register_buffer("default_betas", torch.full((self.num_betas,), 0.5))
        self.register_buffer("body_idx", torch.tensor([labels.index(b) for b in ANNY_BODY_BONES]))
        self.register_buffer("hand_idx", torch.tensor(
            [[labels.index(f"{b}.{s}") for b in ANNY_FINGER_BONES] for s in SIDES]))
        self.register_buffer("faces", anny_model.get_triangular_faces().long().clone())
        self.register_buffer("uv_coords", anny_model.texture_coordinates.float().clone())
        self.register_buffer("uv_faces", anny_model.face_texture_coordinate_indices.long().clone())
        self.num_vertices_ = anny_model.template_vertices.shape[0]
        # z-up, facing -y  ->  OpenCV camera: up = -y, facing the camera = -z.
        R0 = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
        import roma
        self.register_buffer("upright_orient", roma.rotmat_to_rotvec(R0).float())
        self.head_bone = labels.index("head")

        # --- landmark sources -------------------------------------------------------------
        # Landmark regressor rows: Anny's COCO keypoints (K=23) then one fingertip vertex per
        # finger (2x5). A landmark is a fixed blend of vertices, so under linear blend skinning it
        # is exactly  sum_j T_j (sum_v r_kv w_vj x_v): we precompute the sparse (K*nb, V) matrix
        # r_kv * w_vj and never skin the full mesh inside fitting loops.
        coco_w = coco.regression_weights.float()  # (K, V)
        coco_idx = {lab: i for i, lab in enumerate(coco.labels)}
        tip_vertices = [[self._fingertip_vertex(anny_model, f"finger{f}-2.{s}", f"finger{f}-3.{s}")
                         for f in range(1, 6)] for s in SIDES]
        V, nb = coco_w.shape[1], anny_model.bone_count
        tips = torch.zeros(10, V)
        for i, v in enumerate(v for side in tip_vertices for v in side):
            tips[i, v] = 1.0
        reg = torch.cat([coco_w, tips])                                 # (Kr, V)
        from anny.skinning.skinning import dense_bone_weights
        dense = dense_bone_weights(anny_model.vertex_bone_weights.float(),
                                   anny_model.vertex_bone_indices, nb)  # (V, nb)
        rw = (reg[:, None, :] * dense.T[None]).reshape(-1, V)           # (Kr*nb, V)
        self.register_buffer("landmark_skin", rw.to_sparse().coalesce(), persistent=False)
        self.register_buffer("landmark_skin_sum", rw.sum(1).reshape(reg.shape[0], nb))
        self.num_regressed = reg.shape[0]
        n_coco = coco_w.shape[0]
        mask = torch.zeros(33, dtype=torch.bool)
        pose_kind = torch.zeros(33, dtype=torch.long)
        pose_ref = torch.zeros(33, dtype=torch.long)   # bone index (kind 1)
        pose_cref = torch.zeros(33, dtype=torch.long)  # COCO keypoint index (kind 0)
        for i, name in enumerate(MEDIAPIPE_POSE_NAMES):
            src = _POSE_SOURCES.get(name)
            if src is None:
                continue
            mask[i] = True
            if isinstance(src, tuple):
                pose_kind[i], pose_ref[i] = 1, labels.index(src[1])
            else:
                pose_kind[i], pose_cref[i] = 0, coco_idx[src]
        self.register_buffer("pose_landmark_mask", mask)
        self.register_buffer("pose_kind", pose_kind)
        self.register_buffer("pose_ref", pose_ref)
        self.register_buffer("pose_cref", pose_cref)
        # hand-21: bone heads for wrist + 3 per finger (thumb uses finger1-1..3 as CMC/MCP/IP),
        # fingertip vertex for the tips.
        hand_kind = torch.zeros(2, 21, dtype=torch.long)
        hand_ref = torch.zeros(2, 21, dtype=torch.long)   # bone index (kind 0)
        hand_vref = torch.zeros(2, 21, dtype=torch.long)  # vertex-subset index (kind 1)
        for si, s in enumerate(SIDES):
            hand_ref[si, 0] = labels.index(f"wrist.{s}")
            for f in range(5):
                for k in range(3):
                    hand_ref[si, 1 + 4 * f + k] = labels.index(f"finger{f + 1}-{k + 1}.{s}")
                hand_kind[si, 4 + 4 * f] = 1
                hand_vref[si, 4 + 4 * f] = n_coco + 5 * si + f
        self.register_buffer("hand_kind", hand_kind)
        self.register_buffer("hand_ref", hand_ref)
        self.register_buffer("hand_vref", hand_vref)

    @staticmethod
    def _fingertip_vertex(m, parent: str, bone: str) -> int:
        """Vertex at the tip of a distal finger bone: among the vertices dominated by ``bone``,
        the one farthest along the parent-head -> bone-head direction (rest pose)."""
        labels = list(m.bone_labels)
        heads = m.template_bone_heads.float()
        b = labels.index(bone)
        direction = heads[b] - heads[labels.index(parent)]
        w, idx = m.vertex_bone_weights.float(), m.vertex_bone_indices
        dominant = idx.gather(1, w.argmax(1, keepdim=True))[:, 0]
        cand = torch.nonzero(dominant == b).flatten()
        proj = (m.template_vertices.float()[cand] - heads[b]) @ direction
        return int(cand[proj.argmax()])

    def joint_tree(self) -> tuple[list[str], np.ndarray]:
        """Anny's 104 bones: names (``bone_labels``) and parent indices (-1 at ``root``)."""
        return list(self.bone_labels), np.asarray(self._anny[0].bone_parents, np.int64)

    def vertex_joint(self) -> np.ndarray:
        """(V,) int64: the bone with the largest skinning weight of every vertex (Anny stores
        up to 9 (bone, weight) pairs per vertex)."""
        m = self._anny[0]
        w, idx = m.vertex_bone_weights, m.vertex_bone_indices
        return idx.gather(1, w.argmax(1, keepdim=True))[:, 0].long().cpu().numpy()

    @property
    def anny(self):
        """The wrapped ``anny.Anny`` module on this backend's device."""
        m = self._anny[0]
        if m.template_vertices.device != self.faces.device:
            m = m.to(self.faces.device)
            self._anny[0] = m
        return m

    def _rest_model(self, betas: torch.Tensor) -> dict:
        """Anny's rest model (rest vertices, bone heads and poses) for ``betas`` (B, n).

        The rest model depends on the shape only; when the shape is a constant (no gradient:
        live fitting, retargeting, rendering) the last result is reused, which removes the
        largest per-call cost of a fixed-shape forward.
        """
        m = self.anny
        key = None
        if not betas.requires_grad:
            key = (betas.device, tuple(betas.shape), tuple(betas.detach().flatten().tolist()))
            cached = getattr(self, "_rest_cache", None)
            if cached is not None and cached[0] == key:
                return cached[1]
        pheno, local, facial = m.get_tensor_inputs(None, betas, None, None)[1:]
        coeffs = m._get_phenotype_blendshape_coefficients(pheno, local, facial)
        rest = m.get_rest_model(coeffs)
        if key is not None:
            self._rest_cache = (key, rest, None)  # the landmark basis, on first use
        return rest

    def _landmark_basis(self, rest: dict) -> torch.Tensor:
        """(1 or B, Kr, nb, 3): the rest vertices blended by each regressed landmark's
        per-bone skinning weights (``landmark_skin``); kept with the cached rest model."""
        cached = getattr(self, "_rest_cache", None)
        if cached is not None and cached[1] is rest and cached[2] is not None:
            return cached[2]
        Kr, nb = self.num_regressed, int(self.anny.bone_count)
        A = torch.stack([(self.landmark_skin @ rv).reshape(Kr, nb, 3)
                         for rv in rest["rest_vertices"]])
        if cached is not None and cached[1] is rest:
            self._rest_cache = (cached[0], rest, A)
        return A

    def _bone_transforms(self, params: BodyParams):
        m = self.anny
        B = params.batch_size
        dev, dt = params.global_orient.device, params.global_orient.dtype
        rot = torch.zeros(B, m.bone_count, 3, device=dev, dtype=dt)
        rot = rot.index_copy(1, self.body_idx, params.body_pose)
        rot = rot.index_copy(1, self.hand_idx[0], params.left_hand_pose)
        rot = rot.index_copy(1, self.hand_idx[1], params.right_hand_pose)
        R = rotvec_to_rotmat(rot)
        betas = params.betas
        if betas.shape[0] not in (1, B):
            raise ValueError(f"betas batch {betas.shape[0]} does not match pose batch {B}")
        rest = self._rest_model(betas)
        skin_T, bone_poses = anny_forward_kinematics(m, R, rest["rest_bone_poses"])
        return rest, skin_T, bone_poses

    def forward(self, params: BodyParams, return_vertices: bool = True) -> BodyOutput:
        m = self.anny
        rest, skin_T, bone_poses = self._bone_transforms(params)
        B = skin_T.shape[0]
        Rg = rotvec_to_rotmat(params.global_orient)
        t = params.transl
        # regressed landmarks (COCO + fingertips) by exact LBS of their vertex blend
        A = self._landmark_basis(rest).expand(B, -1, -1, -1)
        reg = (torch.einsum("bjdi,bkji->bkd", skin_T[..., :3, :3], A)
               + torch.einsum("bjd,kj->bkd", skin_T[..., :3, 3], self.landmark_skin_sum))
        heads = bone_poses[..., :3, 3]                               # (B, nb, 3)
        pose = torch.where((self.pose_kind == 1)[None, :, None],
                           heads[:, self.pose_ref], reg[:, self.pose_cref])
        pose = pose * self.pose_landmark_mask[None, :, None]
        hands = torch.where((self.hand_kind == 1)[None, ..., None],
                            reg[:, self.hand_vref],
                            heads[:, self.hand_ref])
        pose = rigid_apply(Rg, t, pose)
        hands = rigid_apply(Rg, t, hands.reshape(B, 42, 3)).reshape(B, 2, 21, 3)
        head = bone_poses[:, self.head_bone]
        G = torch.eye(4, device=head.device, dtype=head.dtype).repeat(B, 1, 1)
        G[:, :3, :3] = Rg
        G[:, :3, 3] = t
        head_T = G @ head
        verts = None
        if return_vertices:
            verts = m.get_skinned_vertices(rest_vertices=rest["rest_vertices"].expand(B, -1, -1),
                                           bone_transforms=skin_T)
            verts = rigid_apply(Rg, t, verts)
        return BodyOutput(vertices=verts, pose_landmarks=pose, hand_landmarks=hands,
                          head_transform=head_T)
