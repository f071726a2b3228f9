"""Tests of ram_avatar.capture.keypoints (MediaPipe Holistic with its segmentation, on CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ram_avatar.capture.keypoints import (NUM_FACE, NUM_HAND, NUM_POSE, POSE_LEFT_HIP,
                                          POSE_LEFT_SHOULDER, POSE_LEFT_WRIST, POSE_RIGHT_HIP,
                                          POSE_RIGHT_SHOULDER, POSE_RIGHT_WRIST, Keypoints2D,
                                          check_person_found, detect_keypoints, detected_height,
                                          filter_hands_by_pose_wrist, longest_run)
from ram_avatar.capture.video import VideoWriter, iter_frames, read_frames
from ram_avatar.errors import NoPersonError, SequenceFormatError
from ram_avatar.io.masks import PersonMasks

TAIJI = Path(__file__).resolve().parents[1] / "examples" / "taiji.mp4"
N_FRAMES = 20
H, W = 720, 1280


@pytest.fixture(scope="module")
def taiji():
    """Raw Holistic output (no hand filtering) and masks on the first 20 frames of taiji.mp4."""
    frames = read_frames(TAIJI, 0, N_FRAMES)
    kp, masks = detect_keypoints(iter(frames), total=None, hand_max_torso_fraction=None)
    assert isinstance(masks, PersonMasks) and masks.chunk > 0  # written frame by frame (io.masks)
    with masks:  # removes the temporary file
        return frames, kp, np.asarray(masks)


def _torso(kp: Keypoints2D) -> np.ndarray:
    p = kp.pose[..., :2]
    return np.linalg.norm((p[:, POSE_LEFT_SHOULDER] + p[:, POSE_RIGHT_SHOULDER]) / 2
                          - (p[:, POSE_LEFT_HIP] + p[:, POSE_RIGHT_HIP]) / 2, axis=-1)


def test_shapes_and_dtypes(taiji):
    _, kp, masks = taiji
    assert kp.num_frames == len(kp) == N_FRAMES
    assert kp.pose.shape == (N_FRAMES, NUM_POSE, 3)
    assert kp.left_hand.shape == kp.right_hand.shape == (N_FRAMES, NUM_HAND, 3)
    assert kp.face.shape == (N_FRAMES, NUM_FACE, 3) and NUM_FACE == 478
    for name in ("pose", "left_hand", "right_hand", "face"):
        arr = getattr(kp, name)
        assert arr.dtype == np.float32 and np.isfinite(arr).all()
        valid = getattr(kp, name + "_valid")
        assert valid.dtype == bool and valid.shape == (N_FRAMES,)
        assert not arr[~valid].any(), f"{name} must be zero where invalid"
    assert masks.shape == (N_FRAMES, H, W) and masks.dtype == np.uint8


def test_pose_valid_and_in_pixels(taiji):
    _, kp, _ = taiji
    assert kp.pose_valid.all()
    check_person_found(kp)  # does not raise
    body = kp.pose[:, [POSE_LEFT_SHOULDER, POSE_RIGHT_SHOULDER, POSE_LEFT_HIP, POSE_RIGHT_HIP]]
    assert (body[..., 0] > 0).all() and (body[..., 0] < W).all()
    assert (body[..., 1] > 0).all() and (body[..., 1] < H).all()
    assert (kp.pose[..., 2] >= 0).all() and (kp.pose[..., 2] <= 1).all()  # visibility
    assert (_torso(kp) > 50).all()  # pixels, not normalised coordinates


def test_hands_are_the_subjects_own(taiji):
    """Holistic's left hand is the subject's left: its wrist sits on pose landmark 15."""
    _, kp, _ = taiji
    torso = _torso(kp)
    for side, own, other in (("left_hand", POSE_LEFT_WRIST, POSE_RIGHT_WRIST),
                             ("right_hand", POSE_RIGHT_WRIST, POSE_LEFT_WRIST)):
        valid = getattr(kp, side + "_valid") & kp.pose_valid
        assert valid.sum() >= 5, f"too few {side} detections to check"
        wrist = getattr(kp, side)[:, 0, :2]
        d_own = np.linalg.norm(wrist - kp.pose[:, own, :2], axis=-1)[valid]
        d_other = np.linalg.norm(wrist - kp.pose[:, other, :2], axis=-1)[valid]
        assert (d_own < 0.25 * torso[valid]).all(), f"{side} wrist far from pose wrist {own}"
        assert (d_own < d_other).all()
        assert (getattr(kp, side)[valid, :, 2] == 1.0).all()  # conf of a detected hand


def test_face_inside_frame(taiji):
    _, kp, _ = taiji
    assert kp.face_valid.sum() >= N_FRAMES // 2
    face = kp.face[kp.face_valid]
    assert (face[..., 0] >= 0).all() and (face[..., 0] < W).all()
    assert (face[..., 1] >= 0).all() and (face[..., 1] < H).all()
    # Face is near the pose nose (landmark 0), and z is in pixels (spread of tens of px).
    nose = kp.pose[kp.face_valid, 0, :2]
    assert (np.linalg.norm(face[..., :2].mean(1) - nose, axis=-1) < 60).all()
    assert 5 < np.ptp(face[..., 2], axis=1).mean() < 300


def test_masks_cover_body_and_not_corners(taiji):
    _, kp, masks = taiji
    for t in range(N_FRAMES):
        for j in (POSE_LEFT_SHOULDER, POSE_RIGHT_SHOULDER, POSE_LEFT_HIP, POSE_RIGHT_HIP):
            x, y = kp.pose[t, j, :2].astype(int)
            assert masks[t, y, x] > 127, f"frame {t}: landmark {j} at ({x},{y}) not in mask"
    c = 64
    corners = np.concatenate([masks[:, :c, :c], masks[:, :c, -c:], masks[:, -c:, :c],
                              masks[:, -c:, -c:]], axis=1)
    assert (corners > 127).mean() < 0.05
    assert (masks > 127).mean() < 0.5  # the person fills less than half the frame


def test_filter_keeps_good_hands(taiji):
    _, kp, _ = taiji
    filtered = filter_hands_by_pose_wrist(kp, 0.5)
    np.testing.assert_array_equal(filtered.left_hand_valid, kp.left_hand_valid)
    np.testing.assert_array_equal(filtered.right_hand_valid, kp.right_hand_valid)


def test_npz_round_trip(taiji, tmp_path):
    _, kp, _ = taiji
    d = kp.to_npz_dict()
    assert set(d) == {"kp_pose", "kp_left_hand", "kp_right_hand", "kp_face", "kp_pose_valid",
                      "kp_left_hand_valid", "kp_right_hand_valid", "kp_face_valid", "kp_pose_world"}
    np.savez(tmp_path / "kp.npz", **kp.to_npz_dict(prefix="x/"), other=np.arange(3))
    with np.load(tmp_path / "kp.npz") as data:
        back = Keypoints2D.from_npz_dict(data, prefix="x/")
    for name in d:
        np.testing.assert_array_equal(getattr(back, name[3:]), d[name])
    with pytest.raises(SequenceFormatError, match="kp_face_valid"):
        Keypoints2D.from_npz_dict({k: v for k, v in d.items() if k != "kp_face_valid"})
    bad = dict(d, kp_face=d["kp_face"][:, :468])
    with pytest.raises(SequenceFormatError, match="478"):
        Keypoints2D.from_npz_dict(bad)
    # a file written before the 3D pose was kept: loads, without a 3D pose
    old = Keypoints2D.from_npz_dict({k: v for k, v in d.items() if k != "kp_pose_world"})
    assert kp.has_world.all() and not old.has_world.any() and not old.pose_world.any()
    with pytest.raises(SequenceFormatError, match="pose_world"):
        Keypoints2D.from_npz_dict(dict(d, kp_pose_world=d["kp_pose_world"][:, :17]))


def test_pose_world_in_metres_on_camera_axes(taiji):
    """Holistic's 3D pose is kept in metres, origin at the hips' midpoint, on the camera's axes
    (x right, y down, z away from the camera): the subject faces the camera, so the nose is
    nearer than the ears, the left shoulder (11) lies to the image's right of the right one,
    and the shoulders lie above the hips."""
    _, kp, _ = taiji
    w = kp.pose_world
    assert w.shape == (N_FRAMES, NUM_POSE, 3) and kp.has_world.all()
    assert np.abs(0.5 * (w[:, 23] + w[:, 24])).max() < 0.02                      # metres
    shoulders = np.linalg.norm(w[:, 11] - w[:, 12], axis=-1)
    assert ((shoulders > 0.25) & (shoulders < 0.5)).all()
    assert (w[:, 0, 2] < 0.5 * (w[:, 7, 2] + w[:, 8, 2]) - 0.05).all()          # nose nearer
    assert (w[:, 11, 0] > w[:, 12, 0]).all()
    assert (w[:, [11, 12], 1].mean(1) < w[:, [23, 24], 1].mean(1) - 0.3).all()


# --------------------------------------------------------------- pure numpy (no MediaPipe)

def _synthetic(num: int = 3) -> Keypoints2D:
    kp = Keypoints2D.empty(num)
    kp.pose[:, POSE_LEFT_SHOULDER, :2] = (600, 200)
    kp.pose[:, POSE_RIGHT_SHOULDER, :2] = (500, 200)
    kp.pose[:, POSE_LEFT_HIP, :2] = (590, 400)
    kp.pose[:, POSE_RIGHT_HIP, :2] = (510, 400)   # torso height 200 px
    kp.pose[:, POSE_LEFT_WRIST, :2] = (650, 380)
    kp.pose[:, POSE_RIGHT_WRIST, :2] = (450, 380)
    kp.pose_valid[:] = True
    kp.left_hand_valid[:] = kp.right_hand_valid[:] = True
    kp.left_hand[:, :, :2] = (655, 390)           # 11 px from the left wrist: kept
    kp.left_hand[:, :, 2] = kp.right_hand[:, :, 2] = 1.0
    kp.right_hand[:, :, :2] = (650, 380)          # on the LEFT wrist, 200 px away: dropped
    return kp


def test_filter_drops_far_hand():
    kp = _synthetic()
    kp.pose_valid[2] = False                      # no pose: nothing to check, hand kept
    kp.pose[2] = 0
    out = filter_hands_by_pose_wrist(kp, 0.5)
    assert out.left_hand_valid.all()
    assert out.right_hand_valid.tolist() == [False, False, True]
    assert not out.right_hand[:2].any()
    assert kp.right_hand_valid.all()              # input untouched
    assert filter_hands_by_pose_wrist(kp, 1.5).right_hand_valid.all()


def test_validation_rejects_nan_and_bad_shapes():
    d = _synthetic().__dict__.copy()
    with pytest.raises(ValueError, match="NaN"):
        Keypoints2D(**dict(d, pose=np.full((3, 33, 3), np.nan)))
    with pytest.raises(ValueError, match=r"\(T, 21, 3\)"):
        Keypoints2D(**dict(d, left_hand=np.zeros((3, 20, 3))))
    with pytest.raises(ValueError, match="disagree"):
        Keypoints2D(**dict(d, face=np.zeros((4, 478, 3))))
    with pytest.raises(ValueError, match="pose_world"):
        Keypoints2D(**dict(d, pose_world=np.zeros((3, 33, 2))))
    sub = _synthetic(5).subset(slice(1, 3))
    assert sub.num_frames == 2 and sub.pose_valid.all()


def test_check_person_found_threshold():
    kp = _synthetic(10)
    kp.pose_valid[:6] = False
    with pytest.raises(NoPersonError, match="no person found in 6 of 10 frames"):
        check_person_found(kp)
    check_person_found(kp, min_fraction=0.4)


def test_person_out_of_view_message_names_the_stretch_to_capture():
    """A person who is in view only part of the time: the message gives the longest stretch of
    frames with a person as capture's --start/--end, in the video's frame numbers."""
    kp = _synthetic(20)
    kp.pose_valid[:] = False
    kp.pose_valid[[2, 3]] = True            # a short stretch
    kp.pose_valid[11:17] = True             # the longest: frames 11..16
    with pytest.raises(NoPersonError) as info:
        check_person_found(kp, first_frame=100)
    msg = str(info.value)
    assert "no person found in 12 of 20 frames" in msg
    assert "frames 111 to 116" in msg and "--start 111 --end 117" in msg
    assert longest_run(kp.pose_valid) == (11, 17)
    assert longest_run(np.zeros(5, bool)) == (0, 0)
    assert longest_run(np.ones(4, bool)) == (0, 4)


def test_detected_height_is_the_landmark_extent():
    kp = _synthetic(4)
    kp.pose[:, :, 2] = 0.0
    for j in (POSE_LEFT_SHOULDER, POSE_RIGHT_SHOULDER, POSE_LEFT_HIP, POSE_RIGHT_HIP):
        kp.pose[:, j, 2] = 1.0              # shoulders at y 200, hips at y 400
    assert detected_height(kp, 800) == pytest.approx(0.25)
    kp.pose_valid[:] = False
    assert detected_height(kp, 800) == 0.0


# -------------------------------------------------------------------- personless video

def test_personless_video_raises(tmp_path):
    path = tmp_path / "noise.mp4"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:320].astype(np.float32)
    with VideoWriter(path, 30, (320, 240)) as writer:
        for t in range(20):
            gradient = np.stack([(xx + 8 * t) % 256, (yy + 5 * t) % 256,
                                 np.full_like(xx, 128.0)], -1)
            blocks = np.kron(rng.integers(0, 60, (15, 20, 3)), np.ones((16, 16, 1)))
            writer.write(np.clip(gradient + blocks, 0, 255).astype(np.uint8))
    kp, masks = detect_keypoints(iter_frames(path), total=20, progress_desc="no person")
    assert kp.num_frames == 20 and masks.shape == (20, 240, 320)
    with pytest.raises(NoPersonError) as info:
        check_person_found(kp, min_fraction=0.5)
    message = str(info.value)
    assert "of 20 frames" in message and "whole body is visible" in message


def _leg_coverage(masks: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Per frame, the fraction of points along hip-knee-ankle (both legs) inside the mask."""
    out = []
    for t in range(len(masks)):
        pts = np.array([pose[t, a, :2] * (1 - f) + pose[t, b, :2] * f
                        for a, b in ((23, 25), (25, 27), (24, 26), (26, 28))
                        for f in np.linspace(0.1, 0.9, 9)]).astype(int)
        inside = (pts[:, 0] >= 0) & (pts[:, 0] < W) & (pts[:, 1] >= 0) & (pts[:, 1] < H)
        pts = pts[inside]
        out.append((masks[t][pts[:, 1], pts[:, 0]] > 127).mean())
    return np.array(out)


def test_person_masks_cover_the_legs(taiji):
    """The person mask is Holistic's segmentation: it covers the khaki trousers that the Selfie
    model missed (that model covered 0.57 of these leg points on average over these 20
    frames, 0.62 over all 412 frames of taiji, where Holistic's mask covers 1.00)."""
    _, kp, masks = taiji
    cov = _leg_coverage(masks, kp.pose)
    assert cov.min() >= 0.95, cov
    # and no background: the top corners of the room are not the person
    assert (masks[:, :100, :100] < 128).all() and (masks[:, :100, -100:] < 128).all()


def test_masks_of_everyone_are_kept_for_the_sampled_frames():
    frames = read_frames(TAIJI, 0, 6)
    everyone: dict = {}
    kp, masks = detect_keypoints(iter(frames), total=None, everyone=everyone, everyone_every=3)
    assert sorted(everyone) == [0, 3]
    for t, m in everyone.items():
        assert m.shape == (H, W) and m.dtype == np.uint8
        # the same person: the two segmentations agree on most of the upper body
        both = (m > 127) & (masks[t] > 127)
        assert both.sum() > 0.5 * (masks[t] > 127).sum()


def test_masks_are_the_same_whatever_frame_count_is_announced(taiji):
    """``total`` only sizes the progress bar: the masks are written to their file frame by frame
    (io.masks), so a count that is too small or too large changes nothing."""
    frames, _, masks = taiji
    for total in (N_FRAMES, N_FRAMES - 7, N_FRAMES + 5):
        _, m = detect_keypoints(iter(frames), total=total, hand_max_torso_fraction=None)
        assert m.shape == (N_FRAMES, H, W) and m.dtype == np.uint8, total
        assert np.array_equal(m, masks), total
