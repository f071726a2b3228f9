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

    def posed_vertices_rest(self, betas: torch.Tensor) -> torch.Tensor:
        """Vertices (1, V, 3) in the upright rest pose for ``betas`` (1, n_betas)."""
        p = self.zero_params(1, device=betas.device)
        p.betas = betas
        p.transl = torch.zeros_like(p.transl)
        return self.forward(p).vertices
