"""SMPL-X body-model backend (user-supplied, licence-gated model files).

SMPL-X (Pavlakos et al., CVPR 2019) is the template of the RAM-Avatar paper (Sec. 3.1). Its
files cannot be redistributed: the user downloads ``SMPLX_NEUTRAL.npz`` from
https://smpl-x.is.tue.mpg.de and points ``--model-path`` at it. We wrap the ``smplx`` package
(optional extra ``ram-avatar-studio[smplx]``) with full-rotation (non-PCA) hands.

Joint layout of ``smplx`` output ``joints`` (127 with ``use_face_contour=False``): 55 skeleton
joints (0 pelvis ... 21 right wrist, 22 jaw, 23/24 eyes, 25-39 left hand, 40-54 right hand
in the order index, middle, pinky, ring, thumb), then vertex landmarks 55 nose, 56 right eye,
57 left eye, 58 right ear, 59 left ear, 60-65 feet (L big toe, L small toe, L heel, R ...),
66-70 left fingertips (thumb, index, middle, ring, pinky), 71-75 right fingertips.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ram_avatar.body.base import (BodyModel, BodyOutput, BodyParams, MEDIAPIPE_POSE_NAMES,
                                  rotvec_to_rotmat)
from ram_avatar.errors import ModelFileError

NUM_VERTICES = 10475
NUM_JOINTS = 55
#: keys (and trailing shapes) a usable SMPLX_*.npz must contain
REQUIRED_KEYS = {
    "v_template": (NUM_VERTICES, 3), "f": (20908, 3), "J_regressor": (NUM_JOINTS, NUM_VERTICES),
    "weights": (NUM_VERTICES, NUM_JOINTS), "kintree_table": (2, NUM_JOINTS),
    "shapedirs": (NUM_VERTICES, 3, None), "posedirs": (NUM_VERTICES, 3, 486),
    "hands_componentsl": (45, 45), "hands_componentsr": (45, 45), "hands_meanl": (45,),
    "hands_meanr": (45,), "lmk_faces_idx": (None,), "lmk_bary_coords": (None, 3),
    "dynamic_lmk_faces_idx": (79, 17), "dynamic_lmk_bary_coords": (79, 17, 3),
    "vt": (None, 2), "ft": (20908, 3),
}
SMPLX_BODY_JOINTS = [
    "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar",
    "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
    "right_wrist",
]
SMPLX_HAND_JOINTS = [f"{f}{k}" for f in ("index", "middle", "pinky", "ring", "thumb") for k in (1, 2, 3)]
_HEAD_CHAIN = [0, 3, 6, 9, 12, 15]  # pelvis -> spine1 -> spine2 -> spine3 -> neck -> head

_POSE_JOINT = {
    "nose": 55, "left_eye": 57, "right_eye": 56, "left_ear": 59, "right_ear": 58,
    "left_shoulder": 16, "right_shoulder": 17, "left_elbow": 18, "right_elbow": 19,
    "left_wrist": 20, "right_wrist": 21, "left_pinky": 31, "right_pinky": 46, "left_index": 25,
    "right_index": 40, "left_thumb": 38, "right_thumb": 53, "left_hip": 1, "right_hip": 2,
    "left_knee": 4, "right_knee": 5, "left_ankle": 7, "right_ankle": 8, "left_heel": 62,
    "right_heel": 65, "left_foot_index": 60, "right_foot_index": 63,
}


def _hand21(wrist: int, first: int, tips: int) -> list[int]:
    """SMPL-X joint indices of MediaPipe's hand-21 layout for one hand."""
    finger_first = {"index": first, "middle": first + 3, "pinky": first + 6, "ring": first + 9,
                    "thumb": first + 12}
    out = [wrist]
    for f, name in enumerate(("thumb", "index", "middle", "ring", "pinky")):
        out += [finger_first[name], finger_first[name] + 1, finger_first[name] + 2, tips + f]
    return out


def find_smplx_file(model_path, gender: str = "neutral") -> Path:
    """Locate ``SMPLX_<GENDER>.npz`` from a file path or a directory.

    Raises:
        ModelFileError: nothing found; the message says where to put the file.
    """
    name = f"SMPLX_{gender.upper()}.npz"
    if model_path is None:
        raise ModelFileError(
            "--body-model smplx needs --model-path DIR pointing at the SMPL-X model files "
            f"(DIR/{name} or DIR/smplx/{name}); download them from https://smpl-x.is.tue.mpg.de "
            "(licence required), or use the embedded default --body-model anny.")
    p = Path(model_path).expanduser()
    for cand in (p, p / name, p / "smplx" / name):
        if cand.is_file():
            return cand
    raise ModelFileError(
        f"SMPL-X model file not found: looked for {p}, {p / name} and {p / 'smplx' / name}. "
        f"Put {name} (from https://smpl-x.is.tue.mpg.de) in that directory, or use "
        "--body-model anny.")


def validate_smplx_npz(path: Path) -> None:
    """Check that an SMPL-X npz has every key ``smplx`` needs with the right shapes.

    Raises:
        ModelFileError: unreadable file, missing key or wrong shape (the message names them).
    """
    try:
        data = np.load(path, allow_pickle=True)
        keys = set(data.files)
    except Exception as e:  # noqa: BLE001 - any read failure is a bad model file
        raise ModelFileError(f"cannot read SMPL-X file {path}: {e}. Re-download it.") from e
    missing = sorted(set(REQUIRED_KEYS) - keys)
    if missing:
        raise ModelFileError(
            f"{path} is not a usable SMPL-X model file: missing keys {missing}. Use the "
            "SMPLX_NEUTRAL.npz of the official SMPL-X (v1.1) download, which includes UVs (vt, ft).")
    for k, shape in REQUIRED_KEYS.items():
        got = data[k].shape
        if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
            raise ModelFileError(f"{path}: key {k!r} has shape {got}, expected {shape} (None = any)")


class SMPLXBodyModel(BodyModel):
    """SMPL-X through the ``smplx`` package, as a :class:`BodyModel`.

    Args:
        model_path: directory containing ``SMPLX_NEUTRAL.npz`` (or ``smplx/SMPLX_NEUTRAL.npz``),
            or the file itself.
        gender: ``neutral``, ``male`` or ``female``.
        num_betas: shape coefficients (10 by default).
        num_expression: expression coefficients (10 by default).
    Raises:
        ModelFileError: missing/malformed model file, or the ``smplx`` package is not installed.
    """

    name = "smplx"

    def __init__(self, model_path, gender: str = "neutral", num_betas: int = 10,
                 num_expression: int = 10):
        super().__init__()
        path = find_smplx_file(model_path, gender)
        validate_smplx_npz(path)
        try:
            import smplx
        except ImportError as e:
            raise ModelFileError("the SMPL-X backend needs the smplx package: "
                                 "pip install 'ram-avatar-studio[smplx]'") from e
        self.model_file = path
        self.smplx = smplx.SMPLX(str(path), gender=gender, num_betas=num_betas,
                                 num_expression_coeffs=num_expression, use_pca=False,
                                 flat_hand_mean=True, use_face_contour=False)
        self.smplx.requires_grad_(False)
        data = np.load(path, allow_pickle=True)
        self.num_betas, self.num_expression = num_betas, num_expression
        self.body_joint_names = list(SMPLX_BODY_JOINTS)
        self.hand_joint_names = list(SMPLX_HAND_JOINTS)
        #: body_pose indices of the knees (flexion = +x in SMPL-X rest axes)
        self.knee_joints = [SMPLX_BODY_JOINTS.index("left_knee"), SMPLX_BODY_JOINTS.index("right_knee")]
        self.num_vertices_ = NUM_VERTICES
        self.register_buffer("default_betas", torch.zeros(num_betas))
        self.register_buffer("faces", torch.as_tensor(data["f"].astype(np.int64)))
        self.register_buffer("uv_coords", torch.as_tensor(data["vt"].astype(np.float32)))
        self.register_buffer("uv_faces", torch.as_tensor(data["ft"].astype(np.int64)))
        # SMPL-X is y-up facing +z  ->  OpenCV: rotate 180 degrees about x (up = -y, face = -z).
        self.register_buffer("upright_orient", torch.tensor([np.pi, 0.0, 0.0]))
        mask = torch.zeros(33, dtype=torch.bool)
        ref = torch.zeros(33, dtype=torch.long)
        for i, n in enumerate(MEDIAPIPE_POSE_NAMES):
            if n in _POSE_JOINT:
                mask[i], ref[i] = True, _POSE_JOINT[n]
        self.register_buffer("pose_landmark_mask", mask)
        self.register_buffer("pose_ref", ref)
        self.register_buffer("hand_ref", torch.tensor([_hand21(20, 25, 66), _hand21(21, 40, 71)]))

    def forward(self, params: BodyParams, return_vertices: bool = True) -> BodyOutput:
        p = params.expand_betas()
        B = p.batch_size
        zeros3 = torch.zeros(B, 3, device=p.transl.device, dtype=p.transl.dtype)
        out = self.smplx(betas=p.betas, global_orient=p.global_orient,
                         body_pose=p.body_pose.reshape(B, -1),
                         left_hand_pose=p.left_hand_pose.reshape(B, -1),
                         right_hand_pose=p.right_hand_pose.reshape(B, -1),
                         jaw_pose=p.jaw_pose, leye_pose=zeros3, reye_pose=zeros3,
                         expression=p.expression, transl=p.transl, return_verts=True)
        J = out.joints
        pose = J[:, self.pose_ref] * self.pose_landmark_mask[None, :, None]
        hands = J[:, self.hand_ref]                                   # (B, 2, 21, 3)
        # head rotation = product of the rotations along the chain pelvis..head
        rots = torch.cat([p.global_orient[:, None], p.body_pose], 1)  # (B, 22, 3)
        R = torch.eye(3, device=J.device, dtype=J.dtype).expand(B, 3, 3)
        for j in _HEAD_CHAIN:
            R = R @ rotvec_to_rotmat(rots[:, j])
        head_T = torch.eye(4, device=J.device, dtype=J.dtype).repeat(B, 1, 1)
        head_T[:, :3, :3] = R
        head_T[:, :3, 3] = J[:, 15]
        return BodyOutput(vertices=out.vertices if return_vertices else None,
                          pose_landmarks=pose, hand_landmarks=hands, head_transform=head_T)
