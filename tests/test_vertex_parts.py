"""Body parts from skinning weights (BodyModel.vertex_parts / joint_parts) on Anny and SMPL-X."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ram_avatar.body import load_body_model
from ram_avatar.body.base import PART_NAMES, joint_parts

P = {n: i for i, n in enumerate(PART_NAMES)}


def _smplx_tree():
    from smplx.joint_names import JOINT_NAMES
    from synthetic_smplx import PARENTS

    return list(JOINT_NAMES[:55]), np.array(PARENTS)


def test_joint_parts_smplx_names():
    names, parents = _smplx_tree()
    part = dict(zip(names, (PART_NAMES[i] for i in joint_parts(names, parents))))
    expected = {
        "pelvis": "torso", "spine1": "torso", "spine3": "torso", "left_collar": "torso",
        "right_collar": "torso", "neck": "head", "head": "head", "jaw": "head",
        "left_eye_smplhf": "head", "left_shoulder": "left_arm", "left_elbow": "left_arm",
        "right_shoulder": "right_arm", "right_elbow": "right_arm", "left_wrist": "left_hand",
        "left_index3": "left_hand", "left_thumb1": "left_hand", "right_wrist": "right_hand",
        "right_pinky2": "right_hand", "left_hip": "legs", "right_knee": "legs",
        "left_ankle": "legs", "right_foot": "legs",
    }
    assert {k: part[k] for k in expected} == expected
    # the label does not depend on the joints' order (children listed before parents)
    order = np.random.default_rng(0).permutation(len(names))
    inv = np.argsort(order)
    shuffled = joint_parts([names[i] for i in order],
                           [-1 if parents[i] < 0 else inv[parents[i]] for i in order])
    assert np.array_equal(shuffled, joint_parts(names, parents)[order])


def test_joint_parts_errors():
    with pytest.raises(ValueError):
        joint_parts(["a", "b"], [-1])              # length mismatch
    with pytest.raises(ValueError):
        joint_parts(["a", "b"], [-1, 5])           # out of range
    with pytest.raises(ValueError):
        joint_parts(["a", "b", "c"], [-1, 2, 1])   # cycle b <-> c


def test_vertex_parts_synthetic_smplx(smplx_dir):
    body = load_body_model("smplx", model_path=smplx_dir)
    vp = body.vertex_parts()
    assert vp.shape == (body.num_vertices,) and vp.dtype == np.int64
    # the synthetic file binds each vertex rigidly to one joint (owner = sorted arange(V) % 55)
    owner = np.sort(np.arange(body.num_vertices) % 55)
    names, parents = _smplx_tree()
    assert np.array_equal(vp, joint_parts(names, parents)[owner])
    counts = np.bincount(vp, minlength=len(PART_NAMES))
    assert (counts > 0).all()
    assert counts[P["left_arm"]] == counts[P["right_arm"]]        # shoulder, elbow: 2 joints
    assert counts[P["left_hand"]] == counts[P["right_hand"]]      # wrist + 15 finger joints
    assert counts[P["left_hand"]] > 7 * counts[P["left_arm"]]
    fp = body.face_parts()
    assert fp.shape == (body.faces.shape[0],)
    # synthetic faces connect vertices of one joint: a face's part is its vertices' part
    assert np.array_equal(fp, vp[body.faces[:, 0].numpy()])


def test_vertex_parts_anny(anny_body):
    vp = anny_body.vertex_parts()
    V = anny_body.num_vertices
    assert vp.shape == (V,) and vp.min() >= 0 and vp.max() < len(PART_NAMES)
    counts = np.bincount(vp, minlength=len(PART_NAMES))
    assert (counts > 200).all(), dict(zip(PART_NAMES, counts))
    for a, b in (("left_arm", "right_arm"), ("left_hand", "right_hand")):
        assert abs(int(counts[P[a]]) - int(counts[P[b]])) <= 0.05 * counts[P[a]], (a, counts)
    # geometry of the upright rest pose (OpenCV frame: y down, subject's left at +x)
    with torch.no_grad():
        out = anny_body(anny_body.zero_params(1))
    v = out.vertices[0].numpy()
    lm = out.pose_landmarks[0].numpy()
    mean = {n: v[vp == P[n]].mean(0) for n in PART_NAMES}
    assert mean["head"][1] < mean["torso"][1] < mean["legs"][1]
    assert mean["left_arm"][0] > mean["torso"][0] > mean["right_arm"][0]
    # the left arm is around the left elbow landmark (13), the right arm the right one (14)
    for side, elbow, wrist in (("left", 13, 15), ("right", 14, 16)):
        arm, hand = v[vp == P[f"{side}_arm"]], v[vp == P[f"{side}_hand"]]
        other = 14 if elbow == 13 else 13
        assert np.linalg.norm(arm.mean(0) - lm[elbow]) < np.linalg.norm(arm.mean(0) - lm[other])
        # the hand lies beyond the wrist: farther from the shoulder than every arm vertex's median
        shoulder = lm[11 if side == "left" else 12]
        d_hand = np.linalg.norm(hand - shoulder, axis=1)
        d_arm = np.linalg.norm(arm - shoulder, axis=1)
        assert np.median(d_hand) > np.percentile(d_arm, 95)
        assert np.linalg.norm(hand.mean(0) - lm[wrist]) < 0.15
