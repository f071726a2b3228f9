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
    # the same body dressed (skin arms, shirt torso): its left arm painted in the shirt's colour
    # keeps full coverage but loses its arm fidelity; the right arm keeps both
    train, bg = _dressed(parts, noise=3, seed=1)
    ref = rs.TrainingReference(train, parts >= 0, parts=parts)
    frames, _ = _dressed(parts, noise=3, seed=2)
    frames[parts == 2] = SHIRT
    st = rs.render_stats(frames, parts >= 0, bg, ref, parts=parts)
    assert st["coverage_left_arm"] > 0.9 and st["arm_fidelity_left"] < 0.05
    assert st["arm_fidelity_right"] > 0.9
    assert st["part_colour_distance"]["arms"] > 10 and st["part_colour_distance"]["legs"] < 1.5


# --- per-part appearance: part colour distance and arm fidelity -----------------------------

SKIN, SHIRT, TROUSERS, BG = (205, 150, 120), (40, 60, 160), (170, 150, 110), (20, 110, 30)


def _dressed(parts, arm=SKIN, noise=0.0, seed=0, bg=BG):
    """Frames painting each part of ``parts`` in its colour (head/hands skin, torso shirt, legs
    trousers, arms ``arm``) over a flat background, with optional Gaussian RGB noise (sigma in
    grey levels) on the person."""
    colours = {0: SKIN, 1: SHIRT, 2: arm, 3: arm, 4: SKIN, 5: SKIN, 6: TROUSERS}
    frames = np.empty(parts.shape + (3,), np.float64)
    frames[:] = bg
    for p, c in colours.items():
        frames[parts == p] = c
    if noise:
        frames += (parts >= 0)[..., None] * np.random.default_rng(seed).normal(0, noise, frames.shape)
    return np.clip(np.round(frames), 0, 255).astype(np.uint8), np.broadcast_to(
        np.array(bg, np.uint8), parts.shape[1:] + (3,)).copy()


def _lab1(rgb):
    return cv2.cvtColor(np.array([[rgb]], np.float32) / 255.0, cv2.COLOR_RGB2Lab)[0, 0]


def test_part_masks_erosion_and_names():
    parts = _stick_parts(T=1)
    m = rs.part_masks(parts, ("left_arm",), erode_px=1)
    assert m.sum() == 4 * 14                     # the 6x16 arm loses its 1-px border
    assert m[0, 17:21, 41:55].all()
    assert rs.part_masks(parts, ("left_arm",), erode_px=0).sum() == 6 * 16
    both = rs.part_masks(parts, rs.PART_GROUPS["arms"], erode_px=1)
    assert both.sum() == 2 * 4 * 14
    with pytest.raises(ValueError):
        rs.part_masks(parts, ("tail",))


def test_lab_histogram_prefers_its_colours():
    rng = np.random.default_rng(6)
    skin = _lab1(SKIN) + rng.normal(0, 2, (500, 3))
    shirt = _lab1(SHIRT) + rng.normal(0, 2, (500, 3))
    hs, ht = rs.LabHistogram(skin), rs.LabHistogram(shirt)
    q = np.stack([_lab1(SKIN), _lab1(SHIRT), [50.0, 90.0, -90.0]])  # skin, shirt, an unseen purple
    ls, lt = hs.log_prob(q), ht.log_prob(q)
    assert ls[0] > lt[0] and lt[1] > ls[1]
    assert ls[2] == lt[2] == pytest.approx(math.log(rs.LAB_HIST_FLOOR / np.prod(rs.LAB_HIST_BINS)))
    assert np.isfinite(hs.log_prob(np.array([[120.0, 300.0, -300.0]]))).all()  # clamped to edge bins
    with pytest.raises(ValueError):
        rs.LabHistogram(np.zeros((0, 3)))


def test_arm_in_torso_colour_is_far_and_unfaithful():
    """The issue's failure: arms rendered in the shirt's colour. Coverage cannot see it (the
    pixels differ from the background); the part colour distance and arm fidelity do."""
    parts = _stick_parts(T=4)
    train, _ = _dressed(parts, noise=4, seed=1)
    ref = rs.TrainingReference(train, parts >= 0, parts=parts)
    assert ref.arm_model is not None and ref.part_pixels()["arms"] == 4 * 2 * 4 * 14
    assert ref.arm_fidelity["arm_fidelity"] > 0.97   # the captured person, in-sample
    good, bg = _dressed(parts, noise=4, seed=2)              # arms in their own colour
    vanished, _ = _dressed(parts, arm=SHIRT, noise=4, seed=3)  # arms in the shirt's colour
    st_good = rs.render_stats(good, parts >= 0, bg, ref, parts=parts)
    st_bad = rs.render_stats(vanished, parts >= 0, bg, ref, parts=parts)
    assert st_good["arm_coverage"] == st_bad["arm_coverage"] == pytest.approx(1.0)  # blind to it
    gap = float(np.abs(_lab1(SKIN) - _lab1(SHIRT)).mean())   # ~45 Lab units for these colours
    assert st_bad["part_colour_distance"]["arms"] == pytest.approx(gap, rel=0.1)
    assert st_good["part_colour_distance"]["arms"] < 1.5
    for g in ("head", "torso", "legs"):
        assert st_bad["part_colour_distance"][g] < 1.5, g
    assert st_good["arm_fidelity"] > 0.97 and st_bad["arm_fidelity"] < 0.03
    assert st_bad["arm_fidelity_left"] < 0.03 and st_bad["arm_fidelity_right"] < 0.03
    assert st_good["fidelity_frames"] == {"left_arm": 4, "right_arm": 4}
    keys = list(st_good)
    assert keys.index("arm_fidelity") == keys.index("arm_coverage") + 1  # shown side by side
    # exact value without noise: a constant colour shift, per channel W1 = |Lab difference|
    flat_ref = rs.TrainingReference(*(lambda f: (f, parts >= 0))(_dressed(parts)[0]), parts=parts)
    flat = rs.part_appearance_stats(_dressed(parts, arm=SHIRT)[0], parts, flat_ref)
    assert flat["part_colour_distance"]["arms"] == pytest.approx(gap, abs=0.05)
    assert flat["part_colour_distance"]["torso"] == pytest.approx(0.0, abs=1e-6)


def test_arm_fidelity_background_line_speckle_and_sleeves():
    parts = _stick_parts(T=3)
    train, _ = _dressed(parts, noise=4, seed=1)
    ref = rs.TrainingReference(train, parts >= 0, parts=parts)
    frames, bg = _dressed(parts, noise=4, seed=2)
    # the left arm renders as background; the right arm shrinks to a 1-px line of skin
    frames[parts == 2] = bg[0, 0]
    frames[parts == 3] = bg[0, 0]
    frames[:, 18, 8:24] = SKIN
    st = rs.render_stats(frames, parts >= 0, bg, ref, parts=parts)
    assert st["arm_fidelity_left"] == 0.0 and st["arm_fidelity_right"] == 0.0
    assert st["part_colour_distance"]["arms"] > 20
    # multicoloured speckle on the arms: colours neither model has seen do not count
    rng = np.random.default_rng(7)
    speckled, _ = _dressed(parts, noise=4, seed=2)
    arm = np.isin(parts, (2, 3))
    speckled[arm] = rng.integers(0, 256, (int(arm.sum()), 3), dtype=np.uint8)
    assert rs.render_stats(speckled, parts >= 0, bg, ref, parts=parts)["arm_fidelity"] < 0.25
    # two-tone arms (shirt-coloured sleeve + skin forearm): the sleeve counts for the torso,
    # so the captured person itself scores the skin fraction; an all-shirt arm still scores 0
    two = parts.copy()
    sleeve = np.zeros_like(parts, bool)
    sleeve[:, :, 40:48] = sleeve[:, :, 16:24] = True   # the half of each arm next to the torso
    train2, _ = _dressed(parts, noise=4, seed=1)
    train2[sleeve & np.isin(two, (2, 3))] = SHIRT
    ref2 = rs.TrainingReference(train2, parts >= 0, parts=parts)
    real = rs.part_appearance_stats(train2, parts, ref2)
    assert real["arm_fidelity"] == pytest.approx(7 / 14, abs=0.05)  # eroded arm: 7 of 14 columns skin
    assert ref2.arm_fidelity["arm_fidelity"] == pytest.approx(real["arm_fidelity"])
    shirt_arms = rs.part_appearance_stats(_dressed(parts, arm=SHIRT, noise=4, seed=3)[0], parts, ref2)
    assert shirt_arms["arm_fidelity"] < 0.03


def test_training_reference_person_mask_drops_fit_errors():
    """Arm labels of a badly fitted mesh that reach over the real background: the capture's
    person mask keeps the background out of the arm colours."""
    parts = _stick_parts(T=2)
    train, _ = _dressed(parts, noise=2, seed=1)
    fat = parts.copy()
    fat[:, 22:28, 40:56] = 2                    # label 6 px below the real left arm: background
    person = parts >= 0
    with_mask = rs.TrainingReference(train, person, parts=fat, person=person)
    without = rs.TrainingReference(train, person, parts=fat)
    skin_lab = _lab1(SKIN)
    assert np.abs(with_mask.part_lab["arms"] - skin_lab).max() < 8
    assert np.abs(without.part_lab["arms"] - skin_lab).max() > 30  # background crept in
    # no torso pixels at all: no colour models, no arm fidelity, distances still per group
    no_torso = np.where(parts == 1, -1, parts).astype(np.int8)
    ref = rs.TrainingReference(train, person, parts=no_torso)
    assert ref.arm_model is None and ref.arm_fidelity is None
    st = rs.render_stats(train, person, np.zeros((S, S, 3), np.uint8), ref, parts=no_torso)
    assert "arm_fidelity" not in st and st["part_colour_distance"]["torso"] is None
    assert st["part_colour_distance"]["arms"] < 1.5
