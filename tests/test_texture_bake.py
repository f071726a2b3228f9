"""Texture from the video (issue 10, item 1): back-projection of frames into the UV atlas on a
synthetic textured mesh, the seam-respecting fill, the texture files, and the renderer's fixed
RGB texture input (shapes, values, ONNX parity)."""

from __future__ import annotations

import json
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ram_avatar.models import AvatarRenderer, RendererConfig
from ram_avatar.models.neural_texture import uv_to_grid
from ram_avatar.render import texture_bake as tb
from ram_avatar.render.rasterizer import interpolate, rasterize

# --------------------------------------------------------------------------------------------
# synthetic textured mesh: a cube (6 UV islands, each face split into 4 coloured quadrants)
# plus a plate hovering in front of the cube's front face (the occluder, its own island)

HALF = 0.3            # cube half side, metres
PLATE_Z = -0.35       # plate plane (front face at z = -0.3, facing the camera at R = I)
PLATE_HALF = 0.15
CELL_MARGIN = 0.02    # UV margin inside each atlas cell
GRID = 6              # quads per cube-face side
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                    [245, 130, 48], [145, 30, 180], [70, 240, 240], [90, 60, 20],
                    [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255],
                    [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195],
                    [128, 128, 0], [255, 215, 180], [0, 0, 128], [128, 128, 128],
                    [40, 40, 40], [200, 200, 200], [100, 60, 160], [20, 200, 120]], np.uint8)
PLATE_COLOUR = np.array([255, 0, 255], np.uint8)
BACKGROUND = np.array([0, 255, 0], np.uint8)
# cube faces: (normal axis, sign); index = atlas cell
CUBE_FACES = [(2, -1), (2, 1), (0, -1), (0, 1), (1, -1), (1, 1)]
FRONT, BACK = 0, 1


def _cell(i: int) -> tuple[float, float, float, float]:
    """Atlas cell i of a 4 x 2 grid: (u0, v0, u1, v1) with margin."""
    c, r = i % 4, i // 4
    return (c / 4 + CELL_MARGIN, r / 2 + CELL_MARGIN, (c + 1) / 4 - CELL_MARGIN,
            (r + 1) / 2 - CELL_MARGIN)


def textured_mesh():
    """verts (V,3) object frame, faces (F,3) outward winding, uv corners (F,3,2)."""
    verts, faces, uvs = [], [], []
    for cell, (axis, sign) in enumerate(CUBE_FACES):
        a, b = [k for k in range(3) if k != axis]
        u0, v0, u1, v1 = _cell(cell)
        base = len(verts)
        for j in range(GRID + 1):
            for i in range(GRID + 1):
                p = np.zeros(3)
                p[axis] = sign * HALF
                p[a] = -HALF + 2 * HALF * i / GRID
                p[b] = -HALF + 2 * HALF * j / GRID
                verts.append(p)
                uvs.append((u0 + (u1 - u0) * i / GRID, v0 + (v1 - v0) * j / GRID))
        for j in range(GRID):
            for i in range(GRID):
                q = base + j * (GRID + 1) + i
                for tri in ((q, q + 1, q + GRID + 2), (q, q + GRID + 2, q + GRID + 1)):
                    n = np.cross(verts[tri[1]] - verts[tri[0]], verts[tri[2]] - verts[tri[0]])
                    faces.append(tri if n[axis] * sign > 0 else (tri[0], tri[2], tri[1]))
    # the plate, facing -z (towards the camera), in atlas cell 6
    u0, v0, u1, v1 = _cell(6)
    base = len(verts)
    for y in (-PLATE_HALF, PLATE_HALF):
        for x in (-PLATE_HALF, PLATE_HALF):
            verts.append(np.array([x, y, PLATE_Z]))
            uvs.append((u0 if x < 0 else u1, v0 if y < 0 else v1))
    for tri in ((base, base + 1, base + 3), (base, base + 3, base + 2)):
        n = np.cross(verts[tri[1]] - verts[tri[0]], verts[tri[2]] - verts[tri[0]])
        faces.append(tri if n[2] < 0 else (tri[0], tri[2], tri[1]))
    verts = torch.tensor(np.array(verts), dtype=torch.float32)
    faces = torch.tensor(faces, dtype=torch.int64)
    uv = torch.tensor(uvs, dtype=torch.float32)
    return verts, faces, uv[faces]


def in_cell(u: np.ndarray, v: np.ndarray, i: int) -> np.ndarray:
    u0, v0, u1, v1 = _cell(i)
    return (u > u0) & (u < u1) & (v > v0) & (v < v1)


def truth_colour(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Known texture: per cube cell 4 quadrant colours, the plate cell magenta.
    Returns (colour (...,3) uint8, distance in uv to the nearest colour boundary)."""
    col = np.zeros(u.shape + (3,), np.uint8)
    border = np.full(u.shape, -1.0)
    for cell in range(7):
        u0, v0, u1, v1 = _cell(cell)
        inside = (u >= u0) & (u < u1) & (v >= v0) & (v < v1)
        um, vm = (u0 + u1) / 2, (v0 + v1) / 2
        if cell == 6:
            col[inside] = PLATE_COLOUR
            d = np.minimum.reduce([u - u0, u1 - u, v - v0, v1 - v])
        else:
            q = (u >= um).astype(int) + 2 * (v >= vm).astype(int)
            col[inside] = PALETTE[(4 * cell + q)[inside]]
            d = np.minimum.reduce([u - u0, u1 - u, v - v0, v1 - v, np.abs(u - um), np.abs(v - vm)])
        border[inside] = d[inside]
    return col, border


def truth_texture(size: int = 512) -> torch.Tensor:
    c = (np.arange(size) + 0.5) / size
    u, v = np.meshgrid(c, 1 - c)
    col, _ = truth_colour(u, v)
    return torch.from_numpy(col).permute(2, 0, 1)[None].float() / 255


def rot(yaw_deg: float, pitch_deg: float) -> torch.Tensor:
    a, b = math.radians(yaw_deg), math.radians(pitch_deg)
    ry = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = torch.tensor([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return (rx @ ry).float()


IMG = 192
K = np.array([[260.0, 0, IMG / 2], [0, 260.0, IMG / 2], [0, 0, 1]])
VIEWS = [(y, p) for y in (-55, -30, 0, 30, 55) for p in (-35, 0, 35)]


def render_views(verts, faces, uv_corners, views=VIEWS, dist_m: float = 2.2):
    """Frames of the textured mesh: colour = known texture at the interpolated uv, green
    background; masks = mesh coverage. Returns list of (posed verts, image, mask)."""
    tex = truth_texture()
    out = []
    for yaw, pitch in views:
        posed = verts @ rot(yaw, pitch).T + torch.tensor([0.0, 0.0, dist_m])
        frags = rasterize(posed[None], faces, torch.as_tensor(K), (IMG, IMG), backend="torch")
        uv = interpolate(frags, uv_corners, corner=True)             # (1,H,W,2)
        col = F.grid_sample(tex, uv_to_grid(uv.permute(0, 3, 1, 2)), mode="bilinear",
                            align_corners=False)[0].permute(1, 2, 0)
        cover = frags.face_id[0] >= 0
        img = np.where(cover[..., None].numpy(), (col * 255).round().numpy(), BACKGROUND)
        out.append((posed, img.astype(np.uint8), cover.numpy().astype(np.uint8) * 255))
    return out


@pytest.fixture(scope="module")
def scene():
    verts, faces, uv_corners = textured_mesh()
    return verts, faces, uv_corners, render_views(verts, faces, uv_corners)


def texel_uv(size: int):
    c = (np.arange(size) + 0.5) / size
    return np.meshgrid(c, 1 - c)


SIZE = 128


@pytest.fixture(scope="module")
def baked(scene):
    verts, faces, uv_corners, views = scene
    return tb.backproject(views, faces, uv_corners, K, SIZE, backend="torch", fill=False)


def test_backprojection_recovers_known_colours(baked):
    u, v = texel_uv(SIZE)
    truth, border = truth_colour(u, v)
    interior = border > 2.5 / SIZE                  # away from colour and island borders
    seen = baked.seen & interior
    assert seen.sum() > 0.5 * interior.sum()
    err = np.abs(baked.rgb[seen].astype(float) - truth[seen].astype(float)).mean()
    assert err < 3.0, err
    # every seen cube texel is far from the background green and the plate's magenta
    cube = seen & ~in_cell(u, v, 6)
    for bad in (BACKGROUND, PLATE_COLOUR):
        d = np.abs(baked.rgb[cube].astype(int) - bad.astype(int)).max(1)
        assert (d > 60).all()
    assert 0 < baked.coverage_fraction < 1
    assert baked.stats["frames"] == len(VIEWS)


def test_back_face_and_occluded_texels_are_not_seen(baked):
    u, v = texel_uv(SIZE)
    u0, v0, u1, v1 = _cell(BACK)
    back = (u > u0) & (u < u1) & (v > v0) & (v < v1)
    assert baked.island[back].mean() > 0.9
    assert baked.count[back].max() == 0 and baked.coverage[back].max() == 0
    # the centre of the front face hides behind the plate in every view
    u0, v0, u1, v1 = _cell(FRONT)
    um, vm, r = (u0 + u1) / 2, (v0 + v1) / 2, 0.06 * (u1 - u0)
    hidden = (np.abs(u - um) < r) & (np.abs(v - vm) < r)
    assert hidden.sum() >= 4
    assert baked.count[hidden].max() == 0
    # ... while the rest of the front face is seen
    ring = np.maximum(np.abs(u - um), np.abs(v - vm))
    front = in_cell(u, v, FRONT) & (ring > 0.42 * (u1 - u0)) & (ring < 0.46 * (u1 - u0))
    assert front.sum() > 50 and baked.seen[front].mean() > 0.95


def test_without_depth_test_occluded_texels_would_be_polluted(scene):
    """Control: with an infinite depth tolerance the plate's magenta leaks onto the front face,
    so the assertions above can fail."""
    verts, faces, uv_corners, views = scene
    leaky = tb.backproject(views, faces, uv_corners, K, SIZE, backend="torch", fill=False,
                           depth_tol=1e9)
    u, v = texel_uv(SIZE)
    u0, v0, u1, v1 = _cell(FRONT)
    um, vm, r = (u0 + u1) / 2, (v0 + v1) / 2, 0.06 * (u1 - u0)
    hidden = (np.abs(u - um) < r) & (np.abs(v - vm) < r)
    assert leaky.count[hidden].min() > 0
    magenta = np.abs(leaky.rgb[hidden].astype(int) - PLATE_COLOUR).max(1) < 30
    assert magenta.mean() > 0.9


def test_person_mask_keeps_background_out(scene):
    """A mesh 6 % too large (a loose fit): its silhouette texels land on the green
    background. With the person masks no green texel is baked; without, some are."""
    verts, faces, uv_corners, views = scene
    big = [(p - torch.tensor([0.0, 0.0, 2.2])) * 1.06 + torch.tensor([0.0, 0.0, 2.2])
           for p, _, _ in views]
    masked = tb.backproject([(b, im, m) for b, (_, im, m) in zip(big, views)], faces, uv_corners,
                            K, SIZE, backend="torch", fill=False, mask_erode=0)
    unmasked = tb.backproject([(b, im, None) for b, (_, im, _) in zip(big, views)], faces,
                              uv_corners, K, SIZE, backend="torch", fill=False)

    def green(bt):
        d = np.abs(bt.rgb.astype(int) - BACKGROUND.astype(int)).max(-1)
        return int((bt.seen & (d < 40)).sum())

    assert green(masked) == 0
    assert green(unmasked) > 20


def test_frame_whose_mask_misses_the_mesh_adds_nothing(scene):
    """A frame whose person mask covers none of the visible texels (an upper-body video whose
    fit strays below the frame edge) is skipped: it adds no sample and does not stop the bake
    (it crashed in cv2.remap with an empty point list)."""
    verts, faces, uv_corners, views = scene
    posed, image, mask = views[0]
    sampler = tb.TexelSampler(tb.rasterize_uv(uv_corners, SIZE, backend="torch"), faces,
                              backend="torch")
    pos, rgb, w = sampler.sample(posed, K, image, np.zeros_like(mask))
    assert pos.shape == (0,) and rgb.shape == (0, 3) and w.shape == (0,)
    assert tb._remap_points(image, np.zeros(0), np.zeros(0)).shape == (0, 3)
    with_empty = tb.backproject([(posed, image, np.zeros_like(mask))] + views, faces, uv_corners,
                                K, SIZE, backend="torch", fill=False)
    alone = tb.backproject(views, faces, uv_corners, K, SIZE, backend="torch", fill=False)
    assert np.array_equal(with_empty.rgb, alone.rgb)
    assert np.array_equal(with_empty.seen, alone.seen)


def test_robust_average_rejects_outliers(monkeypatch):
    pos = np.array([0, 0, 0, 0, 1, 1, 2])
    rgb = np.array([[100, 100, 100], [104, 100, 100], [102, 100, 100], [250, 0, 250],
                    [10, 20, 30], [12, 22, 32], [7, 7, 7]], np.uint8)
    w = np.array([1.0, 1.0, 2.0, 3.0, 1.0, 3.0, 0.5])
    mean, wsum, count = tb.robust_texel_average(pos, rgb, w, 4, reject=0.1)
    # texel 0: the heavy outlier (weight 3 of 7) is rejected, the rest is a weighted mean
    np.testing.assert_allclose(mean[0], [(100 + 104 + 2 * 102) / 4, 100, 100], atol=1e-4)
    assert count.tolist() == [3, 2, 1, 0] and wsum[0] == pytest.approx(4.0)
    np.testing.assert_allclose(mean[1], [11.5, 21.5, 31.5], atol=1e-4)
    np.testing.assert_allclose(mean[3], 0)
    monkeypatch.setattr(tb, "_CHUNK", 2)  # the chunked steps give the same result
    for got, ref in zip(tb.robust_texel_average(pos, rgb, w, 4, reject=0.1), (mean, wsum, count)):
        np.testing.assert_array_equal(got, ref)


def test_fill_respects_islands_and_pads_borders():
    S = 64
    island = np.zeros((S, S), bool)
    island[8:40, 4:30] = True          # A: left half seen red
    island[8:40, 33:60] = True         # B: seen blue on its far side only (3 texel seam gap)
    island[48:60, 10:20] = True        # C: never seen
    seen = np.zeros((S, S), bool)
    seen[8:40, 4:16] = True
    seen[8:40, 48:60] = True
    rgb = np.zeros((S, S, 3), np.uint8)
    rgb[8:40, 4:16] = (200, 0, 0)
    rgb[8:40, 48:60] = (0, 0, 200)
    rgb[~seen] = np.random.default_rng(0).integers(0, 256, ((~seen).sum(), 3))  # garbage
    out = tb.fill_unseen(rgb, seen, island, radius=3, pad=2)
    # Telea is not exact on a constant (its gradient term): a few levels of overshoot
    assert np.abs(out[8:40, 4:30].astype(int) - (200, 0, 0)).max() <= 8   # A: red only
    assert (out[8:40, 4:30, 1:] == 0).all()
    assert np.abs(out[8:40, 33:60].astype(int) - (0, 0, 200)).max() <= 8  # B: blue only,
    assert (out[8:40, 33:60, :2] == 0).all()                               # no red across the seam
    seen_mean = np.array([100, 0, 100])                     # equal areas of red and blue
    assert (out[48:60, 10:20] == seen_mean).all()          # C neutral: mean seen colour
    assert (out[8:40, 2:4] == out[8:40, 4:5]).all()        # padded outward 2 texels
    assert (out[8:40, 30:33] != 0).any(-1).all()            # the seam gap is padded too
    assert (out[0:5] == 0).all() and (out[8:40, 0:2] == 0).all()  # beyond the pad: black


def test_filled_bake_leaves_no_texel_unset(scene):
    verts, faces, uv_corners, views = scene
    bt = tb.backproject(views[:3], faces, uv_corners, K, 64, backend="torch")
    u, v = texel_uv(64)
    u0, v0, u1, v1 = _cell(BACK)
    back = bt.island & (u > u0) & (u < u1) & (v > v0) & (v < v1)
    assert back.any() and not bt.seen[back].any()
    mean_seen = np.rint(bt.rgb[bt.seen].mean(0))  # back face island is never seen: neutral
    assert np.abs(bt.rgb[back] - mean_seen).max() <= 1
    assert (bt.rgb[bt.island & ~bt.seen] != 0).any(-1).all()


def test_uv_raster_matches_texel_centres():
    uv = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    r = tb.rasterize_uv(uv, 8, backend="torch")
    # texel (x, y) centre (u, v) = ((x+.5)/8, 1-(y+.5)/8) lies in the triangle when u + v <= 1
    x, y = np.meshgrid(np.arange(8), np.arange(8))
    inside = (x + 0.5) / 8 + 1 - (y + 0.5) / 8 <= 1
    assert (r.island == inside).all()
    b = r.tex_bary.numpy()
    xs, ys = r.texels % 8, r.texels // 8
    np.testing.assert_allclose(b[:, 1], (xs + 0.5) / 8, atol=1e-5)       # weight of corner u=1
    np.testing.assert_allclose(b[:, 2], 1 - (ys + 0.5) / 8, atol=1e-5)   # weight of corner v=1


def test_default_frames_follow_the_training_split():
    from ram_avatar.io.split import tail_split

    valid = np.ones(53, bool)
    valid[[3, 10, 50]] = False
    seq = SimpleNamespace(num_frames=53, valid=valid)
    frames = tb.default_training_frames(seq)
    np.testing.assert_array_equal(frames, tail_split(valid).train)
    assert frames.tolist() == [t for t in range(48) if t not in (3, 10)]   # 5 of 53 held out
    sub = tb.evenly_spaced(np.arange(100), 7)
    assert len(sub) == 7 and sub[0] == 0 and sub[-1] == 99


def test_write_load_and_ensure(tmp_path, monkeypatch):
    S = 32
    rgb = np.zeros((S, S, 3), np.uint8)
    rgb[:, :, 0] = np.arange(S)[None] * 8
    rgb[:S // 2, :, 2] = 255
    bt = tb.BakedTexture(rgb=rgb, coverage=np.full((S, S), 0.5, np.float32),
                         count=np.ones((S, S), np.int32), island=np.ones((S, S), bool),
                         stats={"source_frames": [0, 1, 2]})
    (tmp_path / "sequence").mkdir()
    path = tb.write_texture(tmp_path, bt)
    assert path == tmp_path / "sequence" / "texture.png"
    cov = tb.load_texture(tmp_path)  # subject dir or sequence dir
    assert cov.shape == (1, 3, S, S)
    torch.testing.assert_close(cov[0].permute(1, 2, 0), torch.from_numpy(rgb).float() / 255)
    import cv2

    cv = cv2.imread(str(tmp_path / "sequence" / "texture_coverage.png"), cv2.IMREAD_UNCHANGED)
    assert cv.shape == (S, S) and int(cv[0, 0]) == 128
    small = tb.load_texture(tmp_path / "sequence", 8)
    assert small.shape == (1, 3, 8, 8)
    assert small[0, 2, 0, 0] == pytest.approx(1.0) and small[0, 2, -1, 0] == pytest.approx(0.0)
    # ensure: same frames -> read from disk; other frames -> baked again
    seq = SimpleNamespace(root=tmp_path / "sequence", num_frames=3, valid=np.ones(3, bool))
    calls = []

    def fake_bake(seq_, frames, **kw):
        calls.append(list(frames))
        return tb.BakedTexture(rgb=255 - rgb, coverage=bt.coverage, count=bt.count,
                               island=bt.island, stats={"source_frames": list(map(int, frames))})

    monkeypatch.setattr(tb, "bake_texture", fake_bake)
    torch.testing.assert_close(tb.ensure_texture(seq, [2, 1, 0]), cov)
    assert calls == []
    got = tb.ensure_texture(seq, [0, 1], size=S)
    assert calls == [[0, 1]]
    torch.testing.assert_close(got, 1 - cov)
    info = json.loads((tmp_path / "sequence" / "texture.json").read_text())
    assert info["source_frames"] == [0, 1]
    # missing / corrupt
    (tmp_path / "sequence" / "texture.png").write_bytes(b"not a png")
    with pytest.raises(tb.TextureError, match="corrupt"):
        tb.load_texture(tmp_path)
    with pytest.raises(tb.TextureError, match="no baked texture"):
        tb.load_texture(tmp_path / "nothing")


# --------------------------------------------------------------------------------------------
# renderer: fixed RGB texture input


def _config(variant: str, **kw) -> RendererConfig:
    base = dict(resolution=64, texture_channels=6, texture_size=32, texture_levels=2,
                base_channels=4, max_channels=16, style_dim=16, latent_dim=8, num_frames=4,
                variant=variant, attention_channels=8, branch_channels=4, branch_hidden=4,
                branch_depth=2, texture_rgb=True)
    base.update(kw)
    return RendererConfig(**base)


def _maps(batch: int, size: int = 64, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for prefix, suffix in (("", ""), ("", "_expanded"), ("prev_", "")):
        m = (torch.rand(batch, 1, size, size, generator=g) > 0.3).float()
        out[f"{prefix}uv{suffix}"] = torch.rand(batch, 2, size, size, generator=g) * m
        out[f"{prefix}body_mask{suffix}"] = m
    out["hand"] = (torch.rand(batch, 5, size, size, generator=g) > 0.95).float()
    out["face"] = (torch.rand(batch, 3, size, size, generator=g) > 0.95).float()
    return out


@pytest.mark.parametrize("variant", ["v1", "full"])
def test_renderer_feeds_the_rgb_texture_to_the_generator(variant):
    torch.manual_seed(0)
    cfg = _config(variant)
    off = _config(variant, texture_rgb=False)
    assert cfg.in_channels == off.in_channels + 3
    model = AvatarRenderer(cfg).eval()
    assert "texture.rgb_texture" in model.state_dict()
    assert torch.all(model.texture.rgb_texture == 0.5)
    g = torch.Generator().manual_seed(1)
    model.set_rgb_texture(torch.rand(1, 3, 128, 128, generator=g))       # resized to 32
    tex = model.texture.rgb_texture
    assert tex.shape == (1, 3, 32, 32) and 0 <= float(tex.min()) and float(tex.max()) <= 1
    seen = []
    model.generator.register_forward_pre_hook(lambda m, a: seen.append(a[0]) and None)
    maps = _maps(2)
    with torch.no_grad():
        out = model.forward_batch(maps)
    x = seen[0]
    assert x.shape == (2, cfg.in_channels, 64, 64) and out["rgb"].shape == (2, 3, 64, 64)
    C = cfg.texture_channels
    want = F.grid_sample(tex.expand(2, -1, -1, -1), uv_to_grid(maps["uv"]), mode="bilinear",
                         padding_mode="border", align_corners=False) * maps["body_mask"]
    torch.testing.assert_close(x[:, C:C + 3], want, atol=1e-5, rtol=0)
    # the RGB texture changes the rendering; the learned parameters exclude it
    with torch.no_grad():
        model.set_rgb_texture(torch.zeros(3, 8, 8))
        out2 = model.forward_batch(maps)
    assert float((out["rgb"] - out2["rgb"]).abs().max()) > 1e-4
    # fixed by default: no gradient, in no optimiser group; its own group when given a rate
    from ram_avatar.training.config import OptimConfig
    from ram_avatar.training.model import renderer_param_groups

    rgb = model.rgb_texture_parameter()
    assert rgb is model.texture.rgb_texture and not rgb.requires_grad
    groups = renderer_param_groups(model, OptimConfig())
    assert all(p is not rgb for g in groups for p in g["params"])
    groups = renderer_param_groups(model, OptimConfig(lr=1e-3, rgb_texture_lr_mult=5.0))
    assert rgb.requires_grad and [g["name"] for g in groups][-1] == "rgb_texture"
    assert groups[-1]["params"] == [rgb] and groups[-1]["lr"] == pytest.approx(5e-3)
    assert sum(p is rgb for g in groups for p in g["params"]) == 1


def test_rgb_texture_needs_the_switch_and_the_uv_texture():
    model = AvatarRenderer(_config("v1", texture_rgb=False))
    with pytest.raises(ValueError, match="texture_rgb"):
        model.set_rgb_texture(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="texture_rgb"):
        AvatarRenderer(_config("full", body_features="triplane", triplane_channels=2,
                               triplane_size=16))
    # old checkpoints (no rgb buffer) still load into a texture_rgb=False model
    sd = model.state_dict()
    assert not any("rgb_texture" in k for k in sd)
    AvatarRenderer(_config("v1", texture_rgb=False)).load_state_dict(sd)


@pytest.mark.parametrize("variant", ["v1", "full"])
def test_rgb_skip_starts_from_the_baked_colours(variant):
    """With texture_rgb_skip an untrained renderer already paints the baked texture: its
    foreground on the body is the texture's colour up to the generator's initial residual."""
    torch.manual_seed(0)
    model = AvatarRenderer(_config(variant, texture_rgb_skip=True, texture_init_std=0.0)).eval()
    colour = torch.tensor([0.85, 0.25, 0.1])
    model.set_rgb_texture(colour.view(1, 3, 1, 1).expand(1, 3, 16, 16))
    maps = _maps(2)
    with torch.no_grad():
        fg = model.forward_batch(maps)["fg"]
        plain = AvatarRenderer(_config(variant, texture_init_std=0.0)).eval()
        plain.set_rgb_texture(colour.view(1, 3, 1, 1).expand(1, 3, 16, 16))
        fg_plain = plain.forward_batch(maps)["fg"]
    on = maps["body_mask"].bool().expand_as(fg)
    err = (fg - colour.view(1, 3, 1, 1)).abs()[on].mean()
    err_plain = (fg_plain - colour.view(1, 3, 1, 1)).abs()[on].mean()
    assert err < 0.06 and err < 0.3 * err_plain, (err, err_plain)
    with pytest.raises(ValueError, match="texture_rgb_skip"):
        AvatarRenderer(_config(variant, texture_rgb=False, texture_rgb_skip=True))


@pytest.mark.parametrize("variant,skip", [("v1", False), ("full", False), ("full", True)])
def test_rgb_texture_onnx_export_parity(tmp_path, variant, skip):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from exporters.onnx_export import export_onnx

    torch.manual_seed(0)
    model = AvatarRenderer(_config(variant, texture_rgb_skip=skip)).eval()
    model.set_rgb_texture(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)))
    names = model.input_names()

    from ram_avatar.models.export import RendererExport

    wrapper = RendererExport(model, freeze=False).eval()  # the trained texture module as is
    maps = _maps(2, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(wrapper, {k: maps[k] for k in names}, tmp_path / "m.onnx",
                    output_names=["rgb", "alpha"], dynamic_batch=True, atol=1e-4)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        m = _maps(batch, seed=batch + 5)
        with torch.no_grad():
            ref = wrapper(*[m[k] for k in names])
        got = sess.run(None, {k: m[k].numpy() for k in names})
        for r, o in zip(ref, got):
            assert float((r - torch.from_numpy(o)).abs().max()) < 1e-4
