"""Tests of ram_avatar.render.maps: hand-skeleton and face-contour conditioning maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ram_avatar.render.maps import (FINGER_CHAINS, MapInputError, draw_face_map, draw_hand_map,
                                    face_connection_groups)

H, W = 96, 128


def _radial_hand(wrist, scale=8.0):
    """(21,2) hand, finger c pointing at -90 + 40*(c-2) degrees, joints every `scale` px."""
    pts = np.zeros((21, 2))
    pts[0] = wrist
    for c, chain in enumerate(FINGER_CHAINS):
        a = np.deg2rad(-90.0 + 40.0 * (c - 2))
        d = np.array([np.cos(a), np.sin(a)])
        for k, j in enumerate(chain[1:], start=1):
            pts[j] = np.asarray(wrist) + (k * scale + 4.0) * d
    return pts


def _seg_dist(px, py, a, b):
    """Distance of points (px, py) to segment a-b."""
    p = np.stack([px, py], -1)
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)


def _finger_dist(pts, c):
    """(H,W) distance from pixel centres to the polyline of finger c."""
    ys, xs = np.mgrid[0:H, 0:W] + 0.5
    chain = FINGER_CHAINS[c]
    bones = zip(chain[:-1], chain[1:], strict=True)
    return np.min([_seg_dist(xs, ys, pts[i], pts[j]) for i, j in bones], 0)


def test_hand_map_channels_and_pixels():
    left = _radial_hand((40.0, 70.0))
    right = _radial_hand((95.0, 70.0), scale=6.0)
    hands = np.stack([left, right])[None]  # (1,2,21,2)
    thickness = 2
    m = draw_hand_map(hands, np.array([[True, True]]), (H, W), thickness=thickness)
    assert m.shape == (1, 5, H, W) and m.dtype == torch.float32
    assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0
    m = m[0].numpy()
    for c in range(5):
        d = np.minimum(_finger_dist(left, c), _finger_dist(right, c))
        on = d <= 0.5
        assert on.sum() > 10 and (m[c][on] > 0.5).all(), f"finger {c} not drawn on its bones"
        # cv2 draws about thickness + 1 px wide plus an anti-aliased fringe
        assert (m[c][d > thickness + 1.5] == 0).all(), f"finger {c} drawn elsewhere"
    # tip of the index finger lights the index channel only (fingers are >= 40 deg apart)
    tx, ty = left[8]
    assert m[1, int(ty), int(tx)] > 0.5 and m[[0, 2, 3, 4], int(ty), int(tx)].max() == 0


def test_hand_map_validity_and_input_types():
    hands = np.stack([_radial_hand((40.0, 70.0)), _radial_hand((95.0, 70.0))])[None]
    hands = np.concatenate([hands, hands])  # B=2
    valid = np.array([[True, False], [False, False]])
    m_np = draw_hand_map(hands, valid, (H, W))
    m_t = draw_hand_map(torch.from_numpy(hands).float(), torch.from_numpy(valid), (H, W))
    assert torch.is_tensor(m_np) and torch.allclose(m_np, m_t, atol=1 / 255)
    assert m_np[1].max() == 0  # no valid hand in frame 1
    only_left = draw_hand_map(hands[:1, :1].repeat(2, 1), np.array([[True, False]]), (H, W))
    assert torch.equal(m_np[0], only_left[0])  # the invalid right hand drew nothing
    assert m_np[0, :, :, W // 2 + 16:].max() == 0  # right hand's side of the image empty
    # non-finite joints are skipped, not drawn to the image corner
    bad = hands[:1].copy()
    bad[0, 0, 8] = np.nan
    m = draw_hand_map(bad, np.array([[True, False]]), (H, W))
    assert m[0, 1].sum() < m_np[0, 1].sum() and m[0, 0].sum() == m_np[0, 0].sum()


@pytest.mark.parametrize("bad", [
    dict(hands_2d=np.zeros((1, 21, 2))),
    dict(valid=np.ones((1, 3), bool)),
    dict(size=(0, 10)),
    dict(thickness=0),
])
def test_hand_map_errors(bad):
    args = dict(hands_2d=np.zeros((1, 2, 21, 2)), valid=np.ones((1, 2), bool), size=(H, W)) | bad
    with pytest.raises(MapInputError):
        draw_hand_map(**args)


def _face_landmarks(seed=0):
    """(478,2) landmarks spread over a face-sized box [40,88] x [20,80]."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(40, 88, 478), rng.uniform(20, 80, 478)], -1)


def test_face_map_channels_inside_bbox():
    lm = _face_landmarks()
    m = draw_face_map(lm[None], np.array([True]), (H, W))
    assert m.shape == (1, 3, H, W) and m.dtype == torch.float32
    m = m[0].numpy()
    x0, y0 = lm.min(0)
    x1, y1 = lm.max(0)
    ys, xs = np.mgrid[0:H, 0:W] + 0.5
    outside = (xs < x0 - 2) | (xs > x1 + 2) | (ys < y0 - 2) | (ys > y1 + 2)
    for c in range(3):
        assert (m[c] > 0.5).sum() > 50, f"face channel {c} empty"
        assert m[c][outside].max() == 0, f"face channel {c} draws outside the landmark bbox"


def test_face_map_grouping_and_validity():
    groups = face_connection_groups()
    assert len(groups) == 3 and all(g.ndim == 2 and g.shape[1] == 2 and len(g) for g in groups)
    assert groups[1].max() >= 468  # irises belong to the eye channel
    lm = _face_landmarks()
    # keep only the eye/iris landmarks: only channel 1 may light up
    eye_idx = np.unique(groups[1])
    only_eyes = np.full_like(lm, np.nan)
    only_eyes[eye_idx] = lm[eye_idx]
    m = draw_face_map(torch.from_numpy(np.stack([only_eyes, lm])), torch.tensor([True, False]),
                      (H, W))
    assert m[0, 1].sum() > 0 and m[0, 0].max() == 0
    used_elsewhere = np.intersect1d(eye_idx, np.unique(np.concatenate([groups[0], groups[2]])))
    if used_elsewhere.size == 0:
        assert m[0, 2].max() == 0
    assert m[1].max() == 0  # invalid frame
    with pytest.raises(MapInputError):
        draw_face_map(np.zeros((1, 100, 2)), None, (H, W))
