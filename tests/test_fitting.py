"""Body fitting recovers a known pose from its own projected landmarks (both backends)."""

from __future__ import annotations

import numpy as np
import torch

from ram_avatar.capture.fitting import FitConfig, fit_sequence, project, reprojection_errors
from ram_avatar.capture.keypoints import Keypoints2D


def _synthetic_keypoints(body, T=6, seed=0):
    """Project a smoothly moving, posed body into a 640x480 camera."""
    g = torch.Generator().manual_seed(seed)
    W, H = 640, 480
    K = torch.tensor([[600.0, 0, W / 2], [0, 600.0, H / 2], [0, 0, 1]])
    p = body.zero_params(T)
    p.transl[:, 2] = 3.5
    base = 0.25 * torch.randn(1, body.num_body_joints, 3, generator=g)
    ramp = torch.linspace(0, 1, T)[:, None, None]
    p.body_pose = base * ramp
    if body.name == "anny":  # raise the arms out of the rest A-pose, like extended taiji arms
        for side, sign in (("L", 1.0), ("R", -1.0)):
            j = body.body_joint_names.index(f"upperarm01.{side}")
            p.body_pose[:, j, 1] = sign * 0.8 * ramp[:, 0, 0]
    with torch.no_grad():
        out = body(p, return_vertices=False)
    pose2d = project(out.pose_landmarks, K).numpy()
    kp = Keypoints2D.empty(T)
    kp.pose = np.concatenate([pose2d, np.ones((T, 33, 1))], -1).astype(np.float32)
    kp.pose[:, ~body.pose_landmark_mask.numpy(), 2] = 0.0
    kp.pose_valid[:] = True
    hands = project(out.hand_landmarks, K).numpy()
    kp.left_hand = np.concatenate([hands[:, 0], np.ones((T, 21, 1))], -1).astype(np.float32)
    kp.right_hand = np.concatenate([hands[:, 1], np.ones((T, 21, 1))], -1).astype(np.float32)
    kp.left_hand_valid[:] = True
    kp.right_hand_valid[:] = True
    return kp, K.numpy(), p


def test_fit_recovers_synthetic_anny(anny_body):
    kp, K, truth = _synthetic_keypoints(anny_body)
    params = fit_sequence(anny_body, kp, K, FitConfig(iters_global=30, iters_body=150, iters_hands=40),
                          show_progress=False)
    err = reprojection_errors(anny_body, params, kp, torch.as_tensor(K, dtype=torch.float32))
    assert np.nanmedian(err["body"]) < 0.01, err["body"]
    assert np.nanmedian(err["hands"]) < 0.03, err["hands"]
    assert np.nanmedian(err["face"]) < 0.02, err["face"]
    assert params.betas.shape == (1, anny_body.num_betas)
    assert params.body_pose.shape == (6, 35, 3)
    # depth is recovered to within 10 % (scale ambiguity is bounded by the shape prior)
    assert np.allclose(params.transl[:, 2].numpy(), truth.transl[:, 2].numpy(), rtol=0.1)


def test_fit_smplx_synthetic(smplx_dir):
    from ram_avatar.body import load_body_model

    body = load_body_model("smplx", model_path=smplx_dir)
    kp, K, _ = _synthetic_keypoints(body, T=4)
    params = fit_sequence(body, kp, K, FitConfig(iters_global=30, iters_body=120, iters_hands=0),
                          show_progress=False)
    err = reprojection_errors(body, params, kp, torch.as_tensor(K, dtype=torch.float32))
    assert np.nanmedian(err["body"]) < 0.02
