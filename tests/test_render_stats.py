"""Weights-free render statistics (ram_avatar.eval.render_stats) on inputs with known answers."""

import math

import cv2
import numpy as np
import pytest
import torch

from ram_avatar.eval import render_stats as rs

S = 64


def _square(x0, y0, side, T=1):
    m = np.zeros((T, S, S), bool)
    m[:, y0:y0 + side, x0:x0 + side] = True
    return m


def _avatar(mask, colour=(200, 60, 40), bg=(20, 120, 20)):
    """Frames that show ``colour`` on the mask over a flat background."""
    T = len(mask)
    frames = np.empty((T, S, S, 3), np.uint8)
    frames[:] = np.array(bg, np.uint8)
    frames[mask] = np.array(colour, np.uint8)
    return frames, np.broadcast_to(np.array(bg, np.uint8), (S, S, 3)).copy()


def test_identical_frames_are_temporally_stable():
    mask = _square(10, 10, 30, T=5)
    frames, _ = _avatar(mask)
    frames = frames + np.random.default_rng(0).integers(0, 50, (1, S, S, 3), dtype=np.uint8)  # same texture
    t = rs.temporal_stats(frames, mask)
    assert t["temporal_diff"] == 0.0 and t["temporal_jitter"] == 0.0 and t["silhouette_change"] == 0.0


def test_temporal_known_values():
    mask = np.ones((3, S, S), bool)
    frames = np.zeros((3, S, S, 3), np.uint8)
    frames[1] = 51  # 0.2 of the range
    t = rs.temporal_stats(frames, mask)
    assert t["temporal_diff"] == pytest.approx(0.2, abs=1e-6)   # |0.2-0| and |0-0.2|
    assert t["temporal_jitter"] == pytest.approx(0.2, abs=1e-6)  # |0.2 - (0+0)/2|
    # constant-velocity brightness ramp: first difference 0.1, second difference 0
    ramp = np.stack([np.full((S, S, 3), v, np.uint8) for v in (0, 51, 102, 153)])
    t = rs.temporal_stats(ramp, np.ones((4, S, S), bool))
    assert t["temporal_diff"] == pytest.approx(0.2, abs=1e-6)
    assert t["temporal_jitter"] == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(rs.temporal_stats(frames[:1], mask[:1])["temporal_diff"])


def test_shifted_silhouette_iou():
    sil = _square(10, 10, 20)
    person = _square(20, 10, 20)  # shifted right by half its width
    frames, bg = _avatar(person)
    got = rs.rendered_person_mask(frames, bg)
    assert np.array_equal(got, person)
    a = rs.silhouette_agreement(got, sil)
    assert a["silhouette_iou"] == pytest.approx(200 / 600)  # overlap 10x20, union 30x20
    assert a["silhouette_coverage"] == pytest.approx(0.5)
    assert a["person_spill"] == pytest.approx(0.5)
    assert rs.silhouette_agreement(sil, sil)["silhouette_iou"] == 1.0


def test_person_mask_threshold_and_opening():
    frames = np.full((1, S, S, 3), 100, np.uint8)
    bg = frames[0].copy()
    frames[0, 5, 5] = 255          # a lone pixel: removed by the opening
    frames[0, 20:30, 20:30, 1] = 100 + 20  # below the threshold (0.1 * 255 = 25.5)
    frames[0, 40:50, 40:50, 2] = 100 + 30  # above it
    m = rs.rendered_person_mask(frames, bg)[0]
    assert not m[5, 5] and not m[20:30, 20:30].any() and m[40:50, 40:50].all()
    assert m.sum() == 100


def test_colour_shift_distance():
    rng = np.random.default_rng(0)
    mask = np.ones((4, S, S), bool)
    base = rng.integers(60, 180, (4, S, S, 3), dtype=np.uint8)
    ref = rs.TrainingReference(base, mask)
    same = rs.colour_distance(rs.lab_pixels(base, mask), ref.lab)
    assert same["colour_w1_mean"] < 0.5  # only subsampling noise
    small = rs.colour_distance(rs.lab_pixels(base + 10, mask), ref.lab)
    large = rs.colour_distance(rs.lab_pixels(base + 40, mask), ref.lab)
    assert same["colour_w1_L"] < small["colour_w1_L"] < large["colour_w1_L"]
    assert small["colour_w1_mean"] < large["colour_w1_mean"]


def test_wasserstein_known_shift():
    x = np.random.default_rng(1).normal(size=5000)
    assert rs.wasserstein_1d(x, x + 3.0) == pytest.approx(3.0, abs=1e-9)
    assert rs.wasserstein_1d(x, x) == 0.0
    assert math.isnan(rs.wasserstein_1d(x, np.zeros(0)))
    # a Lab lightness shift of exactly 10 L* points
    lab = np.stack([np.linspace(20, 80, 1000), np.zeros(1000), np.zeros(1000)], 1)
    d = rs.colour_distance(lab + np.array([10.0, 0, 0]), lab)
    assert d["colour_w1_L"] == pytest.approx(10.0) and d["colour_w1_a"] == 0.0


def test_sharpness_blur_lowers_laplacian_variance():
    rng = np.random.default_rng(2)
    sharp = rng.integers(0, 256, (2, S, S, 3), dtype=np.uint8)
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 2.0) for f in sharp])
    mask = _square(8, 8, 48, T=2)
    assert rs.laplacian_variance(blurred, mask) < 0.2 * rs.laplacian_variance(sharp, mask)
    flat = np.full((2, S, S, 3), 90, np.uint8)
    assert rs.laplacian_variance(flat, mask) == 0.0
    assert math.isnan(rs.laplacian_variance(flat, np.zeros((2, S, S), bool)))


def test_render_stats_all_keys():
    sil = np.stack([_square(10 + t, 10, 30)[0] for t in range(4)])
    frames, bg = _avatar(sil)
    texture = np.random.default_rng(3).integers(0, 40, (S, S, 3), dtype=np.uint8)
    frames[sil] += np.broadcast_to(texture, frames.shape)[sil]  # textured person, flat background
    ref = rs.TrainingReference(frames, sil)
    st = rs.render_stats(frames, sil[:, None], bg, ref)  # (T,1,S,S) map layout accepted
    assert st["frames"] == 4
    assert st["silhouette_iou"] == pytest.approx(1.0)
    assert st["colour_w1_mean"] == pytest.approx(0.0, abs=1e-3)
    assert st["sharpness_ratio"] == pytest.approx(1.0)
    assert st["silhouette_change"] > 0
    st = rs.render_stats(frames, sil, bg)  # no reference: no colour / ratio keys
    assert "colour_w1_mean" not in st and "sharpness_ratio" not in st
    with pytest.raises(ValueError):
        rs.render_stats(frames, sil[:2], bg)
    assert rs.summarize({"avatar": {"frames": 4, "x": 1.0}, "avatar_mda": {"frames": 4, "x": 1.5}}) == {"x": 0.5}


def test_contact_sheet_shape(tmp_path):
    src = np.zeros((90, 160, 3), np.uint8)   # 16:9 driving frame
    av = np.full((S, S, 3), 128, np.uint8)
    rows = [[src, av, av] for _ in range(8)]
    sheet = rs.contact_sheet(rows, ["source", "avatar", "avatar + MDA"],
                             [f"frame {i}" for i in range(8)], height=100, header=28, gap=4)
    w_src = round(160 * 100 / 90)
    assert sheet.shape == (28 + 8 * 100 + 9 * 4, w_src + 2 * 100 + 4 * 4, 3)
    assert sheet.dtype == np.uint8
    assert (sheet[28:40, :4] == 32).all()  # gap colour
    p = tmp_path / "sheet.png"
    rs.write_png(p, sheet)
    back = cv2.imread(str(p))
    assert back.shape == sheet.shape and np.array_equal(back[..., ::-1], sheet)
    with pytest.raises(ValueError):
        rs.contact_sheet([[src, av], [src]], ["a", "b"])


def test_sample_indices():
    assert rs.sample_indices(80, 8).tolist() == [5, 15, 25, 35, 45, 55, 65, 75]
    assert rs.sample_indices(3, 8).tolist() == [0, 1, 2]
    assert len(rs.sample_indices(0)) == 0


# --- chroma speckle ------------------------------------------------------------------------

def _skin(T=3, size=S):
    """Smooth skin-like colour gradients (uint8), a different one per frame."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    return np.stack([np.clip(np.stack([190 + 30 * xx + 5 * t, 140 + 25 * yy, 110 + 15 * xx * yy], -1),
                             0, 255).astype(np.uint8) for t in range(T)])


def test_speckle_colour_noise_vs_smooth_and_luminance():
    rng = np.random.default_rng(4)
    smooth = _skin()
    mask = np.ones(smooth.shape[:3], bool)
    colour = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    lum = np.clip(smooth + rng.normal(0, 12, smooth.shape[:3] + (1,)), 0, 255).astype(np.uint8)
    s_smooth, s_col, s_lum = (rs.chroma_speckle(x, mask) for x in (smooth, colour, lum))
    assert s_smooth < 1.0                      # a*b* units: only uint8 quantisation remains
    assert s_col > 5.0 and s_col > 10 * s_smooth
    assert s_lum < 0.2 * s_col                 # grey texture of the same amplitude barely counts
    # a straight edge between two flat colours (dress | skin) is kept by the median: ~0
    edge = np.zeros((1, S, S, 3), np.uint8)
    edge[:, :, :S // 2] = (40, 60, 160)
    edge[:, :, S // 2:] = (210, 160, 130)
    assert rs.chroma_speckle(edge, np.ones((1, S, S), bool)) < 0.5
    # outside the (eroded) mask nothing counts; empty masks give NaN
    noisy_out = smooth.copy()
    sq = _square(16, 16, 32, T=3)
    noisy_out[~sq] = colour[~sq]
    assert rs.chroma_speckle(noisy_out, sq) == pytest.approx(rs.chroma_speckle(smooth, sq), abs=1e-6)
    assert math.isnan(rs.chroma_speckle(smooth, np.zeros_like(mask)))
    with pytest.raises(ValueError):
        rs.chroma_speckle(smooth, mask, median=7)


def test_speckle_ratio_in_render_stats():
    rng = np.random.default_rng(5)
    bg = np.zeros((S, S, 3), np.uint8)
    sil = _square(8, 8, 48, T=3)
    train = np.where(sil[..., None], _skin(), bg).astype(np.uint8)
    grain = sil[..., None] * rng.normal(0, 3, train.shape[:3] + (1,))  # mild grey texture
    train = np.clip(train + grain, 0, 255).astype(np.uint8)
    ref = rs.TrainingReference(train, sil)
    same = rs.render_stats(train, sil, bg, ref)
    assert same["speckle_ratio"] == pytest.approx(1.0)
    speckled = np.clip(train.astype(np.float64) + sil[..., None] * rng.normal(0, 15, train.shape),
                       0, 255).astype(np.uint8)
    st = rs.render_stats(speckled, sil, bg, ref)
    assert st["speckle_ratio"] > 3.0
    assert rs.BETTER["speckle_ratio"].startswith("lower")


# --- per-part coverage ---------------------------------------------------------------------

def _stick_parts(T=2):
    """Label maps of a crude figure: head, torso, two arms, two hands, legs (all >= 20 px)."""
    lab = np.full((T, S, S), -1, np.int8)
    lab[:, 4:14, 26:38] = 0            # head
    lab[:, 14:38, 24:40] = 1           # torso
    lab[:, 16:22, 40:56] = 2           # left arm (subject's left = image right)
    lab[:, 16:22, 8:24] = 3            # right arm
    lab[:, 15:23, 56:62] = 4           # left hand
    lab[:, 15:23, 2:8] = 5             # right hand
    lab[:, 38:62, 24:40] = 6           # legs
    return lab


def test_part_coverage_blank_one_arm():
    parts = _stick_parts()
    frames, bg = _avatar(parts >= 0)
    frames[parts == 2] = bg[0, 0]      # the left arm renders as background
    st = rs.render_stats(frames, parts >= 0, bg, parts=parts)
    assert st["coverage_left_arm"] == pytest.approx(0.0, abs=0.02)
    for name in ("head", "torso", "right_arm", "left_hand", "right_hand", "legs"):
        assert st[f"coverage_{name}"] == pytest.approx(1.0, abs=0.02), name
    assert st["arm_coverage"] == pytest.approx(0.5, abs=0.02)
    assert st["part_pixels"]["left_arm"] == 6 * 16 and st["part_frames"]["left_arm"] == 2


def test_part_coverage_skips_small_parts_and_thin_arms():
    parts = _stick_parts(T=3)
    parts[0][parts[0] == 4] = 1         # frame 0: left hand not visible
    parts[1][15:23, 56:59][parts[1][15:23, 56:59] == 4] = -1  # frame 1: 8x3 = 24 px left
    parts[2][parts[2] == 4] = -1
    parts[2][15:18, 56:62] = 4          # frame 2: 3x6 = 18 px < MIN_PART_PIXELS: skipped
    person = parts >= 0
    person[:, 16:22, 40:56] = False
    person[:, 18, 40:56] = True         # the arm rendered as a 1-px line: 1/6 of its pixels
    cov = rs.part_coverage(person, parts)
    assert cov["part_frames"]["left_hand"] == 1 and cov["part_pixels"]["left_hand"] == 24
    assert cov["coverage_left_arm"] == pytest.approx(1 / 6)
    assert np.isnan(cov["per_frame"]["left_hand"][[0, 2]]).all()
    none = rs.part_coverage(person, np.full_like(parts, -1))
    assert math.isnan(none["coverage_head"]) and math.isnan(none["arm_coverage"])
    with pytest.raises(ValueError):
        rs.part_coverage(person[:1], parts)


def test_part_label_maps_match_body_mask_and_blank_arm(anny_body):
    """Part labels of a rasterised Anny body: same silhouette as the ``body_mask`` map; blanking
    the rendered left arm drops its coverage to 0 and leaves the other parts covered."""
    from ram_avatar.render.conditioning import ConditioningRenderer

    size = 160
    p = anny_body.zero_params(2)
    p.body_pose[1, anny_body.body_joint_names.index("upperarm01.R"), 2] = 0.6  # second pose differs
    with torch.no_grad():
        v = anny_body(p).vertices.numpy()
    z = float(v[..., 2].mean())
    lo, hi = v[..., :2].min((0, 1)), v[..., :2].max((0, 1))
    f = 0.9 * size * z / float((hi - lo).max())
    K = np.array([[f, 0, size / 2 - f * (lo[0] + hi[0]) / 2 / z],
                  [0, f, size / 2 - f * (lo[1] + hi[1]) / 2 / z], [0, 0, 1]], np.float32)
    parts = rs.part_label_maps(anny_body, p, K, size, backend="torch", chunk=1)
    assert parts.shape == (2, size, size) and parts.dtype == np.int8
    mask = ConditioningRenderer(anny_body, backend="torch").render(p, None, K, size)["body_mask"]
    assert np.array_equal(parts >= 0, mask[:, 0].numpy() > 0)
    counts = [(parts == i).sum() for i in range(7)]
    assert min(counts) >= 40, counts
    frames = np.repeat(np.where(parts >= 0, 200, 30).astype(np.uint8)[..., None], 3, -1)
    bg = np.full((size, size, 3), 30, np.uint8)
    frames[parts == 2] = 30
    st = rs.render_stats(frames, parts >= 0, bg, parts=parts)
    assert st["coverage_left_arm"] < 0.05
    for name in ("head", "torso", "right_arm", "legs"):
        assert st[f"coverage_{name}"] > 0.9, (name, st)
