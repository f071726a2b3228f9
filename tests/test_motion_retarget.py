"""Retargeting mocap to Anny (ram_avatar.motion.retarget / amass): joint groups, rest-pose
alignment, joint-direction and twist errors on real Bandai-Namco clips, AMASS layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ram_avatar.body.anny_backend import ANNY_BODY_BONES
from ram_avatar.motion.amass import SMPL_JOINTS, read_amass, retarget_amass
from ram_avatar.motion.bvh import MocapFormatError, read_bvh
from ram_avatar.motion.retarget import (ANNY_GROUPS, GROUP_NAMES, body_pose_to_groups, calibrate,
                                        groups_to_body_pose, plot_retarget_strip, replace_groups,
                                        retarget_bvh, retarget_report)
from test_motion_bvh import extract_bandai

#: stated bounds (degrees) for the direction-matched segments and the hinge/left-axis twist
DIRECTION_MEAN_BOUND = 0.5
DIRECTION_MAX_BOUND = 2.0
TWIST_P95_BOUND = 3.0


pytestmark = pytest.mark.usefixtures("one_thread")


def test_groups_cover_body_pose_and_roundtrip():
    assert sorted(b for g in ANNY_GROUPS for b in g.bones) == sorted(ANNY_BODY_BONES)
    gen = torch.Generator().manual_seed(0)
    bp = torch.randn(16, 35, 3, generator=gen, dtype=torch.float64) * 0.4
    G = body_pose_to_groups(bp)
    assert G.shape == (16, len(ANNY_GROUPS), 3, 3)
    # write back (anatomical-bone weights) and compose again: same group rotations
    G2 = body_pose_to_groups(groups_to_body_pose(G))
    assert torch.allclose(G, G2, atol=1e-9)
    # replace_groups: identity keeps the pose; a new target is reached exactly
    assert torch.allclose(replace_groups(bp, G), bp, atol=1e-9)
    target = body_pose_to_groups(torch.randn(16, 35, 3, generator=gen, dtype=torch.float64) * 0.4)
    assert torch.allclose(body_pose_to_groups(replace_groups(bp, target)), target, atol=1e-8)


@pytest.fixture(scope="module")
def bandai(tmp_path_factory):
    d = tmp_path_factory.mktemp("mocap")
    names = ["dataset-1_kick_normal_001", "dataset-1_walk_normal_001", "dataset-1_bow_normal_001",
             "dataset-1_dance-short_normal_001", "dataset-1_bye_normal_001", "dataset-1_run_normal_001"]
    files = extract_bandai(names, d)
    motions = [read_bvh(f) for f in files]
    return dict(zip(["kick", "walk", "bow", "dance", "bye", "run"], motions))


def test_bandai_retarget_direction_and_twist(bandai, anny_body, tmp_path):
    cal = calibrate(list(bandai.values()))
    for name in ("kick", "walk", "dance"):
        m = bandai[name]
        if name == "dance":
            m = m.subsample(4)
        res = retarget_bvh(m, calibration=cal)
        T = m.num_frames
        assert res.body_pose.shape == (T, 35, 3) and res.global_orient.shape == (T, 3)
        assert res.transl.shape == (T, 3) and np.isfinite(res.body_pose).all()
        np.testing.assert_allclose(res.transl[0], [0, 0, 3.0], atol=1e-6)
        rep = retarget_report(res, anny_body)
        assert rep["direction_mean"] < DIRECTION_MEAN_BOUND, (name, rep["direction"])
        assert rep["direction_max"] < DIRECTION_MAX_BOUND, (name, rep["direction"])
        assert rep["twist_p95"] < TWIST_P95_BOUND, (name, rep["twist"])
        # flat-foot / neutral-neck offsets are constant by design (about 25 and 13 degrees)
        for v in rep["design_offset_deg"].values():
            assert v < 35
    png = plot_retarget_strip(retarget_bvh(bandai["kick"], calibration=cal), tmp_path / "strip.png",
                              frames=[0, 70, 140], body=anny_body)
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bandai_facing_and_standing(bandai, anny_body):
    """First frame faces the camera (-z in OpenCV axes) and stands upright (head above feet)."""
    from ram_avatar.motion.retarget import anny_joint_positions, anny_reference
    res = retarget_bvh(bandai["bow"])
    H = anny_joint_positions(res, anny_body)
    lab = anny_reference().labels
    head, foot = H[0, lab.index("head")], H[0, lab.index("foot.L")]
    assert head[1] < foot[1] - 1.0            # y down: head higher than feet by > 1 m
    left = H[0, lab.index("upperleg01.L")] - H[0, lab.index("upperleg01.R")]
    up = head - foot
    facing = np.cross(left, up)               # Anny: left x up = forward
    assert facing[2] / np.linalg.norm(facing) < -0.9


def test_unknown_skeleton(tmp_path):
    from test_motion_bvh import SYNTH
    f = tmp_path / "s.bvh"
    f.write_text(SYNTH)
    with pytest.raises(MocapFormatError, match="unknown BVH skeleton"):
        retarget_bvh(f)


def _amass_file(path, poses_body, trans=None, width=156, fps=120.0):
    T = poses_body.shape[0]
    poses = np.zeros((T, width))
    poses[:, :66] = poses_body.reshape(T, 66)
    np.savez(path, poses=poses, trans=np.zeros((T, 3)) if trans is None else trans,
             mocap_framerate=fps, betas=np.zeros(16), gender="neutral")
    return path


def test_amass_tpose_and_flexion(tmp_path, anny_body):
    from ram_avatar.motion.retarget import anny_joint_positions, anny_reference
    T = 4
    body = np.zeros((T, 22, 3))
    body[1, SMPL_JOINTS.index("left_knee")] = [np.pi / 2, 0, 0]       # SMPL knee flexion (+x)
    body[2, SMPL_JOINTS.index("left_elbow")] = [0, -np.pi / 2, 0]     # left forearm forward
    body[3] = np.random.default_rng(0).normal(scale=0.3, size=(22, 3))
    for width in (156, 165):
        f = _amass_file(tmp_path / f"a{width}.npz", body, width=width)
        d = read_amass(f)
        assert d["poses"].shape == (T, 22, 3) and d["fps"] == 120.0
        assert d["layout"] == {156: "smplh", 165: "smplx"}[width]
    res = retarget_amass(tmp_path / "a156.npz", up_axis="y")
    rep = retarget_report(res, anny_body)
    assert rep["direction_mean"] < DIRECTION_MEAN_BOUND and rep["direction_max"] < DIRECTION_MAX_BOUND
    H = anny_joint_positions(res, anny_body)
    lab = anny_reference().labels
    # frame 0 (SMPL T-pose): Anny's upper arms horizontal
    arm = H[0, lab.index("lowerarm01.L")] - H[0, lab.index("upperarm01.L")]
    assert abs(arm[1]) / np.linalg.norm(arm) < 0.1
    # frame 1: the left knee bends by 90 degrees
    thigh = H[1, lab.index("lowerleg01.L")] - H[1, lab.index("upperleg01.L")]
    shin = H[1, lab.index("foot.L")] - H[1, lab.index("lowerleg01.L")]
    ang = np.degrees(np.arccos(thigh @ shin / np.linalg.norm(thigh) / np.linalg.norm(shin)))
    S = res.joint_positions[1]
    st = S[SMPL_JOINTS.index("left_knee")] - S[SMPL_JOINTS.index("left_hip")]
    ss = S[SMPL_JOINTS.index("left_ankle")] - S[SMPL_JOINTS.index("left_knee")]
    src = np.degrees(np.arccos(st @ ss / np.linalg.norm(st) / np.linalg.norm(ss)))
    assert src == pytest.approx(90, abs=10)   # the approximate SMPL rest leg is not quite straight
    assert ang == pytest.approx(src, abs=1)
    # the bend is in Anny's knee group (a rotation of about 90 degrees)
    g = body_pose_to_groups(torch.from_numpy(res.body_pose).double())
    tr = g[1, GROUP_NAMES.index("knee.L")].diagonal().sum().item()
    assert np.degrees(np.arccos((tr - 1) / 2)) == pytest.approx(90, abs=10)


def test_amass_bad_files(tmp_path):
    np.savez(tmp_path / "w.npz", poses=np.zeros((3, 50)), trans=np.zeros((3, 3)))
    with pytest.raises(MocapFormatError, match="expected"):
        read_amass(tmp_path / "w.npz")
    np.savez(tmp_path / "t.npz", poses=np.zeros((3, 156)), trans=np.zeros((2, 3)))
    with pytest.raises(MocapFormatError, match="trans"):
        read_amass(tmp_path / "t.npz")
    np.savez(tmp_path / "k.npz", foo=np.zeros(3))
    with pytest.raises(MocapFormatError, match="poses"):
        read_amass(tmp_path / "k.npz")
