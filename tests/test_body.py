"""Body-model backends: shapes, landmark maps, the exact landmark LBS, and SMPL-X file errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ram_avatar.body import BODY_LANDMARKS, load_body_model
from ram_avatar.errors import ModelFileError, RamAvatarError


def test_anny_shapes_and_uvs(anny_body):
    p = anny_body.zero_params(3)
    out = anny_body(p)
    assert out.vertices.shape == (3, 13718, 3)
    assert out.pose_landmarks.shape == (3, 33, 3)
    assert out.hand_landmarks.shape == (3, 2, 21, 3)
    assert out.head_transform.shape == (3, 4, 4)
    assert anny_body.faces.shape[1] == 3 and anny_body.faces.max() < 13718
    assert anny_body.uv_faces.shape == anny_body.faces.shape
    uv = anny_body.uv_coords
    assert float(uv.min()) >= 0.0 and float(uv.max()) <= 1.0
    assert anny_body.num_body_joints == 35 and len(anny_body.hand_joint_names) == 15
    # all body landmarks are provided
    assert bool(anny_body.pose_landmark_mask[BODY_LANDMARKS].all())


def test_anny_upright_facing_camera(anny_body):
    out = anny_body(anny_body.zero_params(1))
    lm = out.pose_landmarks[0]
    # OpenCV camera: head above (smaller y) the ankles, subject's left on the image right
    assert lm[0, 1] < lm[27, 1] - 1.2           # nose at least 1.2 m above the ankle
    assert lm[11, 0] > lm[12, 0]                # left shoulder has larger x
    assert lm[0, 2] < lm[23, 2]                 # nose nearer to the camera than the hip (facing it)
    # the wrist landmark of the hand skeleton coincides with the pose wrist (same joint)
    assert torch.linalg.norm(out.hand_landmarks[0, 0, 0] - lm[15]) < 0.02


def test_anny_landmarks_match_full_skinning(anny_body):
    """Landmarks computed without skinning the mesh equal Anny's COCO regressor on the full mesh."""
    import anny

    torch.manual_seed(0)
    p = anny_body.zero_params(2)
    p.body_pose = 0.3 * torch.randn_like(p.body_pose)
    p.betas = torch.rand(1, anny_body.num_betas)
    out = anny_body(p)
    coco = anny.KeypointsRegressor.coco(anny_body.anny)({"vertices": out.vertices})
    labels = anny.KeypointsRegressor.coco(anny_body.anny).labels
    for mp_idx, lab in [(0, "nose"), (15, "left_wrist"), (27, "left_ankle"), (32, "right_big_toe")]:
        assert torch.allclose(out.pose_landmarks[:, mp_idx], coco[:, labels.index(lab)], atol=1e-4)


def test_smplx_backend_with_synthetic_file(smplx_dir):
    body = load_body_model("smplx", model_path=smplx_dir)
    p = body.zero_params(2)
    out = body(p)
    assert out.vertices.shape == (2, 10475, 3)
    assert out.pose_landmarks.shape == (2, 33, 3) and out.hand_landmarks.shape == (2, 2, 21, 3)
    lm = out.pose_landmarks[0]
    assert lm[0, 1] < lm[27, 1]                 # upright in the camera frame
    assert lm[11, 0] > lm[12, 0]                # left shoulder on the image right
    assert body.uv_faces.shape == (20908, 3)
    # rotating the left elbow moves the left wrist but not the right one
    p2 = body.zero_params(1)
    p2.body_pose[0, body.body_joint_names.index("left_elbow")] = torch.tensor([0.0, 1.0, 0.0])
    o2 = body(p2)
    assert torch.linalg.norm(o2.pose_landmarks[0, 15] - lm[15]) > 0.05
    assert torch.linalg.norm(o2.pose_landmarks[0, 16] - lm[16]) < 1e-5


def test_smplx_missing_files_error(tmp_path):
    with pytest.raises(ModelFileError, match="SMPLX_NEUTRAL.npz"):
        load_body_model("smplx", model_path=tmp_path)
    with pytest.raises(ModelFileError, match="--model-path"):
        load_body_model("smplx", model_path=None)


def test_smplx_wrong_file_error(tmp_path):
    np.savez(tmp_path / "SMPLX_NEUTRAL.npz", v_template=np.zeros((10, 3)))
    with pytest.raises(ModelFileError, match="missing keys"):
        load_body_model("smplx", model_path=tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "SMPLX_NEUTRAL.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="cannot read"):
        load_body_model("smplx", model_path=tmp_path / "x")


def test_unknown_body_model():
    with pytest.raises(RamAvatarError, match="anny, smplx"):
        load_body_model("mano")


def test_anny_forward_kinematics_matches_anny(anny_body):
    """Our pointer-jumping FK equals Anny's own forward_kinematic (local-ref, rotation deltas),
    values and gradients, for one pose and a batch, at a random shape."""
    from ram_avatar.body.anny_backend import anny_forward_kinematics
    from ram_avatar.body.base import rotvec_to_rotmat

    m = anny_body.anny
    g = torch.Generator().manual_seed(0)
    rest = anny_body._rest_model(torch.rand(1, anny_body.num_betas, generator=g))["rest_bone_poses"]
    for B in (1, 3):
        rv = (0.5 * torch.randn(B, m.bone_count, 3, generator=g)).requires_grad_(True)
        R = rotvec_to_rotmat(rv)
        D = torch.zeros(B, m.bone_count, 4, 4)
        D[..., :3, :3] = R
        D[..., 3, 3] = 1.0
        T_ref, W_ref = m.get_bone_transforms(D, rest)
        T, W = anny_forward_kinematics(m, R, rest)
        assert T.shape == W.shape == (B, m.bone_count, 4, 4)
        assert torch.allclose(T, T_ref, atol=2e-6) and torch.allclose(W, W_ref, atol=2e-6)
        w = torch.randn(B, m.bone_count, 4, 4, generator=g)
        (g_ref,) = torch.autograd.grad((T_ref * w).sum() + (W_ref * w).sum(), rv, retain_graph=True)
        (g_ours,) = torch.autograd.grad((T * w).sum() + (W * w).sum(), rv)
        assert torch.allclose(g_ours, g_ref, atol=1e-4, rtol=1e-4)
