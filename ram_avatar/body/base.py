"""Body-model interface shared by every backend (Anny, SMPL-X).

Parameters follow the ``smplx`` vocabulary (betas, global_orient, body_pose, left_hand_pose,
right_hand_pose, jaw_pose, expression, transl), axis-angle in radians, metres. A backend maps
its own skeleton onto the landmark layouts of MediaPipe (33 pose landmarks, 21 landmarks per
hand) so that capture can fit any backend to the same 2D keypoints (RAM-Avatar Sec. 3.1 uses
SMPL-X + MANO; Anny is our embedded licence-free default, see DESIGN.md).

World frame of a posed body: ``x = R(global_orient) @ x_model + transl``, where the model frame
is the backend's native rest frame; :attr:`BodyModel.upright_orient` is the global orientation
(axis-angle) that makes the model stand upright facing an OpenCV camera (+y down, +z forward).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import roma
import torch
from torch import nn

#: MediaPipe Pose landmark names, in MediaPipe's index order (33).
MEDIAPIPE_POSE_NAMES = [
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
    "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip",
    "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel",
    "right_heel", "left_foot_index", "right_foot_index",
]

#: MediaPipe Hands landmark names (21), index order.
MEDIAPIPE_HAND_NAMES = [
    "wrist", "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip", "index_mcp", "index_pip",
    "index_dip", "index_tip", "middle_mcp", "middle_pip", "middle_dip", "middle_tip", "ring_mcp",
    "ring_pip", "ring_dip", "ring_tip", "pinky_mcp", "pinky_pip", "pinky_dip", "pinky_tip",
]

#: Pose landmarks used as "body" joints when measuring body reprojection error (torso, limbs,
#: feet; the face and finger landmarks of the pose model are measured by their own groups).
BODY_LANDMARKS = [11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32]
#: Pose landmarks on the head (nose, eyes, ears).
HEAD_LANDMARKS = [0, 2, 5, 7, 8]


#: Body parts of :meth:`BodyModel.vertex_parts`, in label order; ``left``/``right`` are the
#: subject's own sides (the backend's ``left_*`` / ``*.L`` joints).
PART_NAMES = ("head", "torso", "left_arm", "right_arm", "left_hand", "right_hand", "legs")
_HEAD, _TORSO, _LARM, _RARM, _LHAND, _RHAND, _LEGS = range(len(PART_NAMES))
_COLLAR_WORDS = ("collar", "clavicle")
_HEAD_WORDS = ("neck", "head")
_HAND_WORDS = ("wrist", "hand")
_ARM_WORDS = ("shoulder", "arm", "elbow")
_LEG_WORDS = ("hip", "leg", "thigh", "knee", "ankle", "foot", "toe")


def _joint_side(name: str) -> str | None:
    """``left`` / ``right`` from a joint name's tokens (``left_wrist``, ``wrist.L``), else None."""
    tokens = set(re.split(r"[^a-z0-9]+", name.lower()))
    if tokens & {"left", "l"}:
        return "left"
    if tokens & {"right", "r"}:
        return "right"
    return None


def joint_parts(names: Sequence[str], parents: Sequence[int]) -> np.ndarray:
    """Assign every joint of a kinematic tree to a body part (:data:`PART_NAMES`).

    Walks the tree from the root; a joint inherits its parent's part unless it starts a new
    one. Under the torso (the root and the spine): the neck/head joint starts ``head``; a
    side-tagged joint whose parent is a collar/clavicle (or whose name says shoulder/arm/elbow)
    starts that side's arm (the collar itself stays torso); a side-tagged child of the root, or
    a side-tagged hip/leg/knee/ankle/foot/toe joint, starts ``legs``. Under an arm, the wrist
    (or a ``hand`` joint) starts that side's hand. Works from names and parents alone, for the
    Anny rig (``clavicle.L``, ``wrist.L``, ``neck01``, ``pelvis.L``) and the SMPL-X skeleton
    (``left_collar``, ``left_wrist``, ``neck``, ``left_hip``).

    Args:
        names: (J,) joint (bone) names.
        parents: (J,) parent index of each joint, -1 for the root(s).
    Returns:
        (J,) int64 part label of each joint, indices into :data:`PART_NAMES`.
    Raises:
        ValueError: lengths differ, a parent index out of range, or a cycle.
    """
    J = len(names)
    parents = [int(p) for p in parents]
    if len(parents) != J or any(p < -1 or p >= J or p == j for j, p in enumerate(parents)):
        raise ValueError(f"parents must be {J} indices in [-1, {J}) with no self-parent")
    low = [n.lower() for n in names]
    part = np.full(J, -1, np.int64)
    while (part < 0).any():  # parents before children, whatever the joint order
        ready = [j for j in np.nonzero(part < 0)[0] if parents[j] < 0 or part[parents[j]] >= 0]
        if not ready:
            raise ValueError("the joint tree has a cycle: "
                             f"{[names[j] for j in np.nonzero(part < 0)[0]][:5]}")
        for j in ready:
            p = parents[j]
            inherited = _TORSO if p < 0 else int(part[p])
            side, n = _joint_side(names[j]), low[j]
            new = inherited
            if inherited == _TORSO and p >= 0:
                if side and any(w in low[p] for w in _COLLAR_WORDS):
                    new = _LARM if side == "left" else _RARM
                elif side and any(w in n for w in _COLLAR_WORDS):
                    new = _TORSO
                elif side and (parents[p] < 0 or any(w in n for w in _LEG_WORDS)):
                    new = _LEGS
                elif side and any(w in n for w in _ARM_WORDS):
                    new = _LARM if side == "left" else _RARM
                elif any(w in n for w in _HEAD_WORDS):
                    new = _HEAD
            elif inherited in (_LARM, _RARM) and any(w in n for w in _HAND_WORDS):
                new = _LHAND if inherited == _LARM else _RHAND
            part[j] = new
    return part


@dataclass
class BodyParams:
    """Pose and shape parameters of a batch of B bodies (``smplx`` vocabulary).

    Attributes:
        betas: (B, n_betas) shape coefficients (Anny: phenotype values in [0, 1]).
        global_orient: (B, 3) axis-angle root orientation, radians.
        body_pose: (B, J_body, 3) axis-angle per body joint, radians.
        left_hand_pose, right_hand_pose: (B, 15, 3) axis-angle per finger joint.
        jaw_pose: (B, 3) axis-angle (zeros for backends without a jaw).
        expression: (B, n_expr) expression coefficients (may be (B, 0)).
        transl: (B, 3) translation, metres.
    """

    betas: torch.Tensor
    global_orient: torch.Tensor
    body_pose: torch.Tensor
    left_hand_pose: torch.Tensor
    right_hand_pose: torch.Tensor
    jaw_pose: torch.Tensor
    expression: torch.Tensor
    transl: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.global_orient.shape[0]

    def to(self, *args, **kwargs) -> "BodyParams":
        return BodyParams(**{f.name: getattr(self, f.name).to(*args, **kwargs) for f in fields(self)})

    def index(self, idx) -> "BodyParams":
        """Select frames ``idx`` (int, slice, index tensor) from every field (betas broadcast)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v if (f.name == "betas" and v.shape[0] == 1) else v[idx]
        return BodyParams(**out)

    def expand_betas(self) -> "BodyParams":
        """Return a copy whose betas have the batch size of the pose (broadcast a (1, n) shape)."""
        if self.betas.shape[0] == self.batch_size:
            return self
        return replace(self, betas=self.betas.expand(self.batch_size, -1))

    def as_numpy(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name).detach().cpu().numpy() for f in fields(self)}

    @classmethod
    def from_numpy(cls, arrays: dict[str, np.ndarray], device="cpu", dtype=torch.float32) -> "BodyParams":
        return cls(**{f.name: torch.as_tensor(np.asarray(arrays[f.name]), dtype=dtype, device=device)
                      for f in fields(cls)})


PARAM_NAMES = [f.name for f in fields(BodyParams)]


@dataclass
class BodyOutput:
    """Posed body in world (camera) coordinates.

    Attributes:
        vertices: (B, V, 3) metres, or None when only landmarks were asked for.
        pose_landmarks: (B, 33, 3) positions of the MediaPipe pose landmarks; rows where
            :attr:`BodyModel.pose_landmark_mask` is False are zero.
        hand_landmarks: (B, 2, 21, 3) [left, right] MediaPipe hand landmarks.
        head_transform: (B, 4, 4) rigid world transform of the head (its origin at the head
            joint), used to re-pose the face template on the avatar's head.
    """

    vertices: torch.Tensor | None
    pose_landmarks: torch.Tensor
    hand_landmarks: torch.Tensor
    head_transform: torch.Tensor


def rotvec_to_rotmat(rotvec: torch.Tensor) -> torch.Tensor:
    """Axis-angle (..., 3) radians -> rotation matrices (..., 3, 3) (Rodrigues, via roma)."""
    return roma.rotvec_to_rotmat(rotvec)


def rigid_apply(R: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply x' = R x + t to points. R (B,3,3), t (B,3), x (B,N,3) -> (B,N,3)."""
    return torch.einsum("bij,bnj->bni", R, x) + t[:, None, :]


class BodyModel(nn.Module, abc.ABC):
    """A skinned parametric body with faces, UVs and MediaPipe landmark maps.

    Subclasses set: ``name``, ``num_betas``, ``num_expression``, ``body_joint_names``
    (J_body), ``hand_joint_names`` (15 per hand), buffers ``faces`` (F, 3) int64,
    ``uv_coords`` (Vt, 2) in [0, 1] (v up), ``uv_faces`` (F, 3) int64, ``pose_landmark_mask``
    (33,) bool, ``upright_orient`` (3,), and ``default_betas`` (n_betas,).
    """

    name: str
    num_betas: int
    num_expression: int
    body_joint_names: list[str]
    hand_joint_names: list[str]

    @property
    def num_vertices(self) -> int:
        return int(self.num_vertices_)

    @property
    def num_body_joints(self) -> int:
        return len(self.body_joint_names)

    @property
    def device(self) -> torch.device:
        return self.faces.device

    def zero_params(self, batch_size: int, device=None, dtype=torch.float32) -> BodyParams:
        """Rest-pose parameters, upright and facing the camera, 3 m in front of it.

        Returns:
            BodyParams with batch ``batch_size`` and the default betas.
        """
        device = device or self.device
        z = lambda *s: torch.zeros(*s, device=device, dtype=dtype)  # noqa: E731
        transl = z(batch_size, 3)
        transl[:, 2] = 3.0
        return BodyParams(
            betas=self.default_betas.to(device, dtype)[None].expand(batch_size, -1).clone(),
            global_orient=self.upright_orient.to(device, dtype)[None].expand(batch_size, -1).clone(),
            body_pose=z(batch_size, self.num_body_joints, 3),
            left_hand_pose=z(batch_size, 15, 3), right_hand_pose=z(batch_size, 15, 3),
            jaw_pose=z(batch_size, 3), expression=z(batch_size, self.num_expression),
            transl=transl,
        )

    @abc.abstractmethod
    def forward(self, params: BodyParams, return_vertices: bool = True) -> BodyOutput:
        """Pose the body.

        Args:
            params: BodyParams of batch B (betas of batch 1 are broadcast).
            return_vertices: skin the full mesh (V vertices); False computes only landmarks and
                the head transform, which is much cheaper (used inside fitting loops).
        Returns:
            BodyOutput in world coordinates (metres).
        """

    def joint_tree(self) -> tuple[list[str], np.ndarray]:
        """The skinning skeleton: joint (bone) names (J,) and parent indices (J,) int, -1 at
        the root, in the column order of :meth:`vertex_joint`."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its skeleton")

    def vertex_joint(self) -> np.ndarray:
        """(V,) int64: the joint with the largest skinning weight of every vertex."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its skinning weights")

    def vertex_parts(self) -> np.ndarray:
        """Body part of every vertex, from the skinning weights: the part
        (:func:`joint_parts`) of the vertex's max-weight joint (:meth:`vertex_joint`).

        Returns:
            (V,) int64 indices into :data:`PART_NAMES` (cached; do not modify).
        """
        cached = getattr(self, "_vertex_parts", None)
        if cached is None:
            names, parents = self.joint_tree()
            cached = joint_parts(names, parents)[self.vertex_joint()]
            self._vertex_parts = cached
        return cached

    def face_parts(self) -> np.ndarray:
        """Body part of every face of :attr:`faces`: the part shared by at least two of its
        corners (:meth:`vertex_parts`), else its first corner's. (F,) int64."""
        vp = self.vertex_parts()[self.faces.cpu().numpy()]          # (F, 3)
        return np.where(vp[:, 1] == vp[:, 2], vp[:, 1], vp[:, 0])

    def posed_vertices_rest(self, betas: torch.Tensor) -> torch.Tensor:
        """Vertices (1, V, 3) in the upright rest pose for ``betas`` (1, n_betas)."""
        p = self.zero_params(1, device=betas.device)
        p.betas = betas
        p.transl = torch.zeros_like(p.transl)
        return self.forward(p).vertices
