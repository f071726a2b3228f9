"""Focal-length estimation from the body fit (ram_avatar.capture.focal).

The recovery test projects a posed Anny body with a KNOWN focal length (horizontal FOV 66
degrees on 1280x720, f = 985.5 px) in 12 frames with depth variation (subject 1.5-2.5 m away,
turned by up to +-34 degrees, arms moved in depth) and checks that the search finds it within
10 %. Measured with the test's settings (40-80 degree search, 5-point grid + 3 golden-section
fits, 30 + 80 fit iterations; about 40 s on one CPU thread): 64.7 degrees, f = 1010 px
(+2.5 %), median body error 0.00092 of the bbox height vs 0.00136 at the default 55 degrees;
the same set-up with a true FOV of 48 degrees gives 47.6 degrees (f +0.9 %). With 60 fit
iterations instead of 80 the 48-degree case fails (-19 %): the fits must converge well for the
small perspective signal to show.

On real keypoints the cue is much weaker than the keypoint noise (see the module docstring);
on taiji.mp4 (40 frames) the error curve is flat within 10 % from 30 to 90 degrees, the
estimator declines (38 % of the frames fit better at its best FOV) and keeps 55 degrees.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ram_avatar.capture import focal
from ram_avatar.capture.fitting import FitConfig, project
from ram_avatar.capture.keypoints import Keypoints2D
from ram_avatar.errors import NoPersonError
from ram_avatar.io.camera import DEFAULT_FOV_DEG, default_intrinsics

W, H = 1280, 720


def test_fov_focal_conversions():
    f = focal.fov_to_focal(DEFAULT_FOV_DEG, W, H)
    assert f == pytest.approx(default_intrinsics(W, H)[0, 0])
    assert focal.focal_to_fov(f, W, H) == pytest.approx(DEFAULT_FOV_DEG)
    assert focal.fov_to_focal(90.0, W, H) == pytest.approx(W / 2)
    # the longer side counts, also for portrait video
    assert focal.fov_to_focal(60.0, 720, 1280) == pytest.approx(640 / math.tan(math.radians(30)))


def _kp_with_valid(valid: np.ndarray) -> Keypoints2D:
    kp = Keypoints2D.empty(len(valid))
    kp.pose[valid, :, 2] = 0.9
    kp.pose[valid, :, :2] = 100.0
    kp.pose_valid[:] = valid
    return kp


def test_select_focal_frames():
    valid = np.ones(100, bool)
    valid[::3] = False
    idx = focal.select_focal_frames(_kp_with_valid(valid), count=10)
    assert len(idx) == 10 and valid[idx].all()
    assert idx[0] <= 2 and idx[-1] >= 97 and np.all(np.diff(idx) > 0)
    assert len(focal.select_focal_frames(_kp_with_valid(np.ones(5, bool)), count=10)) == 5
    with pytest.raises(NoPersonError, match="focal length"):
        focal.select_focal_frames(_kp_with_valid(np.eye(1, 10, dtype=bool)[0]), count=10)


@pytest.mark.parametrize("gain,improved,accepted", [(0.2, 0.9, True), (0.01, 0.9, False), (0.3, 0.4, False)])
def test_capture_entry_accepts_only_consistent_gains(monkeypatch, gain, improved, accepted):
    est = {"focal_px": 900.0, "fov_deg": 70.8, "method": "test", "default_error": 0.01,
           "errors_by_focal": [{"fov_deg": 70.8, "focal_px": 900.0, "median_error": 0.008,
                                "mean_error": 0.009}],
           "relative_gain": gain, "frames_improved": improved, "frames": [0, 1], "fits": 1}
    monkeypatch.setattr(focal, "estimate_focal", lambda *a, **k: est)
    K, entry = focal.estimate_focal_for_capture(None, None, W, H, device="cpu")
    json.dumps(entry)  # manifest-ready
    if accepted:
        assert entry["source"] == "estimated_focal" and K[0, 0] == pytest.approx(900.0, rel=1e-3)
    else:
        assert entry["source"] == "default_fov" and entry["fov_deg"] == DEFAULT_FOV_DEG
        np.testing.assert_allclose(K, default_intrinsics(W, H))
    assert entry["focal_estimate"]["accepted"] is accepted
    np.testing.assert_allclose(entry["K"], K)


def synthetic_body_keypoints(body, T=12, fov=66.0, depth=(1.5, 2.5), seed=0):
    """Keypoints2D of a posed Anny body projected with a known focal (noise-free)."""
    import roma

    rng = np.random.default_rng(seed)
    p = body.zero_params(T)
    bp = torch.tensor(rng.normal(0, 0.05, p.body_pose.shape), dtype=torch.float32)
    for j, name in enumerate(body.body_joint_names):
        if name.startswith("upperarm01"):       # arms swing, also towards the camera
            bp[:, j] += torch.tensor(rng.normal(0, 0.5, (T, 3)), dtype=torch.float32)
        if name.startswith("lowerarm01"):       # elbows bend
            bp[:, j, 0] += torch.tensor(rng.uniform(0, 1.0, T), dtype=torch.float32)
    p.body_pose = bp
    yaw = torch.tensor(np.stack([np.zeros(T), rng.uniform(-0.6, 0.6, T), np.zeros(T)], 1),
                       dtype=torch.float32)
    p.global_orient = roma.rotmat_to_rotvec(roma.rotvec_to_rotmat(yaw) @ roma.rotvec_to_rotmat(body.upright_orient))
    K = default_intrinsics(W, H, fov)
    z = rng.uniform(*depth, T)
    x = rng.uniform(-0.2, 0.2, T) * W / K[0, 0] * z
    p.transl = torch.tensor(np.stack([x, np.zeros(T), z], 1), dtype=torch.float32)
    with torch.no_grad():
        uv = project(body(p, return_vertices=False).pose_landmarks, torch.tensor(K, dtype=torch.float32))
    kp = Keypoints2D.empty(T)
    kp.pose[..., :2] = uv.numpy()
    kp.pose[..., 2] = body.pose_landmark_mask.numpy().astype(np.float32)
    kp.pose_valid[:] = True
    return kp, K


def test_estimate_focal_recovers_known_focal():
    from ram_avatar.body import load_body_model

    torch.set_num_threads(1)
    body = load_body_model("anny")
    kp, K = synthetic_body_keypoints(body)
    # a narrower search than the default (30-90 deg, 7-point grid) to keep the test short
    res = focal.estimate_focal(body, kp, W, H, frames=kp.num_frames, fov_range=(40.0, 80.0),
                               grid=5, golden_iters=3,
                               fit_config=FitConfig(iters_global=30, iters_body=80, iters_hands=0,
                                                    w_acc=0.0, w_vel=0.0),
                               show_progress=False)
    assert abs(res["focal_px"] / K[0, 0] - 1) < 0.10, res
    assert res["fov_deg"] == pytest.approx(focal.focal_to_fov(res["focal_px"], W, H))
    fovs = [r["fov_deg"] for r in res["errors_by_focal"]]
    assert fovs == sorted(fovs) and DEFAULT_FOV_DEG in fovs and res["fits"] == len(fovs)
    # with this much perspective the estimate is a clear, consistent improvement
    assert res["relative_gain"] > 0.1 and res["frames_improved"] >= 0.6
