"""Framing of rendered avatar frames (render.framing): boxes per mode, smoothing, composition."""

from __future__ import annotations

import numpy as np
import pytest

from ram_avatar.render.framing import (FRAMINGS, BoxSmoother, FramingError, box_intrinsics,
                                       compose_frame, framing_box, mask_bbox, parse_offset,
                                       parse_out_size, project_landmarks)


def standing_landmarks(scale: float = 1.0, shift=(0.0, 0.0)) -> np.ndarray:
    """(33,2) pixels of an upright person ~220 px tall in a 256 frame (MediaPipe pose layout)."""
    lm = np.full((33, 2), np.nan)
    pts = {0: (128, 40),                                       # nose
           2: (123, 36), 5: (133, 36), 7: (118, 38), 8: (138, 38), 9: (125, 46), 10: (131, 46),
           11: (108, 66), 12: (148, 66),                       # shoulders
           13: (100, 100), 14: (156, 100), 15: (96, 132), 16: (160, 132),  # elbows, wrists
           23: (116, 138), 24: (140, 138),                     # hips
           25: (116, 186), 26: (140, 186), 27: (116, 230), 28: (140, 230),  # knees, ankles
           29: (114, 236), 30: (142, 236), 31: (120, 240), 32: (136, 240)}
    for i, p in pts.items():
        lm[i] = (np.array(p) - 128) * scale + 128 + np.array(shift)
    return lm


def contains(box, pts, tol=1e-6):
    x0, y0, w, h = box
    pts = pts[np.isfinite(pts).all(1)]
    return bool(np.all((pts[:, 0] >= x0 - tol) & (pts[:, 0] <= x0 + w + tol)
                       & (pts[:, 1] >= y0 - tol) & (pts[:, 1] <= y0 + h + tol)))


def test_boxes_contain_their_landmarks_with_exact_aspect():
    lm = standing_landmarks()
    bbox = (94.0, 20.0, 162.0, 244.0)  # silhouette box, head top at y=20
    boxes = {m: framing_box(m, lm, bbox, 256) for m in FRAMINGS}
    for m, (x0, y0, w, h) in boxes.items():
        assert w / h == pytest.approx(16 / 9, rel=1e-12)
    full, upper, head = boxes["full"], boxes["upper"], boxes["head"]
    assert contains(full, lm) and contains(full, np.array([[94, 20], [162, 244]]))
    # upper: head .. hips and both arms (wrists at y=132 are above the hips), not the knees
    assert contains(upper, lm[[0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24]])
    assert upper[1] + upper[3] > 138 and upper[1] + upper[3] < 186
    assert upper[1] < 40 - 0.6 * np.hypot(0, 26) + 1  # above the estimated head top
    # head: face and shoulders, not the elbows
    assert contains(head, lm[[0, 2, 5, 7, 8, 9, 10, 11, 12]])
    assert head[1] + head[3] < 100
    # the three are nested in height: full > upper > head
    assert full[3] > upper[3] > head[3]


def test_raised_arm_widens_upper_and_framing_scales_with_the_avatar():
    lm = standing_landmarks()
    lm_up = lm.copy()
    lm_up[15] = (60, 10)  # left wrist raised high and out
    lm_up[13] = (80, 40)
    box = framing_box("upper", lm_up, None, 256)
    assert contains(box, lm_up[[13, 15]])
    # twice the avatar size -> twice the box, same centre
    a = framing_box("upper", standing_landmarks(), None, 256)
    b = framing_box("upper", standing_landmarks(scale=2.0), None, 256)
    assert b[3] == pytest.approx(2 * a[3], rel=1e-9)
    assert b[0] + b[2] / 2 == pytest.approx(a[0] + a[2] / 2, abs=1e-9)


def test_zoom_offset_and_fallbacks():
    lm = standing_landmarks()
    x0, y0, w, h = framing_box("upper", lm, None, 256)
    zx0, zy0, zw, zh = framing_box("upper", lm, None, 256, zoom=2.0)
    assert (zw, zh) == pytest.approx((w / 2, h / 2))
    assert (zx0 + zw / 2, zy0 + zh / 2) == pytest.approx((x0 + w / 2, y0 + h / 2))
    ox0, oy0, ow, oh = framing_box("upper", lm, None, 256, offset=(0.1, -0.2))
    assert (ox0 - x0, oy0 - y0) == pytest.approx((0.1 * w, -0.2 * h))
    # no landmarks: the silhouette box; nothing: the whole square widened to 16:9
    fb = framing_box("head", None, (100, 50, 150, 250), 256)
    assert contains(fb, np.array([[100, 50], [150, 250]]))
    x0, y0, w, h = framing_box("full", None, None, 256)
    assert (h, w, y0) == pytest.approx((256, 256 * 16 / 9, 0))
    with pytest.raises(FramingError):
        framing_box("waist", lm, None, 256)
    with pytest.raises(FramingError):
        framing_box("full", lm, None, 256, zoom=0)


def test_parsers():
    assert parse_out_size("1920x1080") == (1920, 1080)
    assert parse_offset("0.1,-0.25") == (0.1, -0.25)
    for bad in ("1280", "1281x720", "0x720", "axb"):
        with pytest.raises(FramingError):
            parse_out_size(bad)
    with pytest.raises(FramingError):
        parse_offset("0.1")


def test_smoother_removes_jitter_and_follows_moves():
    rng = np.random.default_rng(0)
    base = np.array([50.0, 20.0, 160.0, 90.0])
    noisy = [tuple(base + rng.normal(0, 2.0, 4) * [1, 1, 0, 0]) for _ in range(200)]
    sm = BoxSmoother(fps=30)
    out = np.array([sm(b) for b in noisy])
    raw = np.array(noisy)
    jitter_raw = np.abs(np.diff(raw[50:, :2], axis=0)).mean()
    jitter_out = np.abs(np.diff(out[50:, :2], axis=0)).mean()
    assert jitter_out < 0.1 * jitter_raw, (jitter_out, jitter_raw)
    assert np.abs(out[50:, :2] - base[:2]).max() < 4.0  # stays on the true box
    # a real move of 60 px is followed within one second
    moved = base + [60, 0, 0, 0]
    for _ in range(30):
        last = sm(tuple(moved + rng.normal(0, 2.0, 4) * [1, 1, 0, 0]))
    assert abs(last[0] - moved[0]) < 3.0
    assert last[2] / last[3] == pytest.approx(160 / 90, rel=1e-6)
    # no person: the last box is held
    assert sm(None) == last


def test_compose_rgb_matches_crop_and_rgba_outside_is_transparent():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:64, 0:64]
    img = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).astype(np.uint8)
    # box exactly inside: an integer crop upscaled 4x equals a bilinear resize of the crop
    out = compose_frame(img, (16, 8, 32, 18), out_size=(128, 72))
    assert out.shape == (72, 128, 3)
    import cv2

    ref = cv2.resize(img[8:26, 16:48], (128, 72), interpolation=cv2.INTER_LINEAR)
    assert np.abs(out[4:-4, 4:-4].astype(int) - ref[4:-4, 4:-4]).max() <= 1
    # RGBA with a box wider than the frame: outside alpha 0, inside the image's alpha
    rgba = np.concatenate([img, np.full((64, 64, 1), 200, np.uint8)], -1)
    box = (-32, 0, 128, 72)  # 16:9, the frame occupies x in [32, 96) of a 128 wide output
    o = compose_frame(rgba, box, out_size=(128, 72), fill=(0, 255, 0))
    assert o.shape == (72, 128, 4)
    assert (o[:, :31, 3] == 0).all() and (o[:, 97:, 3] == 0).all() and (o[64 + 1:, :, 3] == 0).all()
    assert (o[1:63, 33:95, 3] == 200).all()
    # RGB fill colour outside, edge replication with fill=None
    o3 = compose_frame(img, box, out_size=(128, 72), fill=(0, 255, 0))
    assert (o3[:, :31] == (0, 255, 0)).all()
    o4 = compose_frame(img, box, out_size=(128, 72), fill=None)
    assert (o4[10, :31] == img[10, 0]).all()
    # downscale through INTER_AREA: the mean is kept
    noise = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    small = compose_frame(noise, (0, 0, 256, 256), out_size=(64, 64))
    assert abs(float(small.mean()) - float(noise.mean())) < 1.0
    assert small.std() < noise.std() / 2  # averaged, not point-sampled


def test_projection_and_box_intrinsics():
    K = np.array([[200.0, 0, 128], [0, 200.0, 128], [0, 0, 1]])
    P = np.array([[[0.0, 0.0, 2.0], [0.5, -0.25, 2.0], [0, 0, -1.0]]])
    uv = project_landmarks(P, K, valid=np.array([True, True, True]))
    assert uv[0, :2] == pytest.approx(np.array([[128, 128], [178, 103]]))
    assert np.isnan(uv[0, 2]).all()
    # a camera that sees exactly the box maps the box corners to the image corners
    box = (64.0, 100.0, 128.0, 72.0)
    Kb = box_intrinsics(K, box, (1280, 720))
    X = np.array([[(64 - 128) / 200 * 2, (100 - 128) / 200 * 2, 2.0],
                  [(192 - 128) / 200 * 2, (172 - 128) / 200 * 2, 2.0]])
    assert project_landmarks(X, Kb) == pytest.approx(np.array([[0, 0], [1280, 720]]))
    assert mask_bbox(np.zeros((4, 4), bool)) is None
    m = np.zeros((10, 10), bool)
    m[2:5, 3:7] = True
    assert mask_bbox(m) == (3, 2, 7, 5)


def test_leaning_towards_the_camera_keeps_the_framing_scale(monkeypatch):
    """Bending forward (basketball dribbling) brings the nose down to the shoulder line in the
    image; the box must not shrink onto the chest."""
    import ram_avatar.render.framing as fr

    lm = standing_landmarks()
    upright = framing_box("upper", lm, None, 256)
    assert fr.NECK_PER_SHOULDER_WIDTH * 40 < 26     # upright (shoulders 40 px apart): unit unchanged
    lean = lm.copy()
    lean[[0, 2, 5, 7, 8, 9, 10], 1] += 20          # the face 20 px lower: nose 6 px above the shoulders
    box = framing_box("upper", lean, None, 256)
    # the head really is 20 px lower, so the box may lose about that much height, not more
    assert box[3] >= upright[3] - 25
    assert contains(box, lean[[0, 11, 12, 23, 24]])
    monkeypatch.setattr(fr, "NECK_PER_SHOULDER_WIDTH", 0.0)  # the bare nose-to-shoulder unit
    bare = framing_box("upper", lean, None, 256)
    assert bare[3] < 0.9 * box[3] and bare[2] < 0.9 * box[2]


def test_smoother_runs_on_timestamps():
    """A live stream at 2 fps follows a move within about a second of real time when the
    smoother gets timestamps; counting frames at the nominal 30 fps lags behind (it takes the
    second for 1/15 s). Timestamps 1/fps apart give exactly the frame-counting result."""
    base = np.array([50.0, 20.0, 160.0, 90.0])
    moved = tuple(base + [60, 0, 0, 0])
    timed, counted = BoxSmoother(fps=30), BoxSmoother(fps=30)
    timed(tuple(base), 0.0)
    counted(tuple(base))
    for k in range(1, 3):  # one second at 2 fps
        a = timed(moved, k * 0.5)
        b = counted(moved)
    # timed: 5.3 px left of the 60 px move (the deadband is 1.8 px); counted: 17.9 px
    assert abs(a[0] - moved[0]) < 8.0, a
    assert abs(b[0] - moved[0]) > 2 * abs(a[0] - moved[0]), (a, b)
    x, y = BoxSmoother(fps=30), BoxSmoother(fps=30)
    for k in range(10):
        box = tuple(base + [6.0 * k, 0, 0, 0])
        assert x(box, k / 30) == pytest.approx(y(box), abs=1e-9)
