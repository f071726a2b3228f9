"""Tests of ram_avatar.render.rasterizer: analytic single-triangle cases, torch vs moderngl on the
Anny body mesh, interpolation (UV face corners, per-vertex attributes, gradients) and errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from ram_avatar.errors import RamAvatarError
from ram_avatar.render import rasterizer as R
from ram_avatar.render.rasterizer import (Fragments, RasterBackendUnavailableError,
                                          RasterizerError, interpolate, rasterize)

GL_OK = R.moderngl_available()
needs_gl = pytest.mark.skipif(
    not GL_OK, reason=f"moderngl backend unavailable: EGL context creation failed ({R._GL._error})")
NV_OK = R.nvdiffrast_available()
needs_nv = pytest.mark.skipif(
    not NV_OK, reason=f"nvdiffrast backend unavailable: {R._NV.error} (needs CUDA and "
                      "pip install 'ram-avatar-studio[nvdiffrast]')")
BACKENDS = ["torch", pytest.param("moderngl", marks=needs_gl),
            pytest.param("nvdiffrast", marks=needs_nv)]


def _K(f, cx, cy):
    return torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])


def _unproject(K, u, v, z):
    """Camera point at depth z seen at pixel coordinate (u, v)."""
    return torch.tensor([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z],
                        dtype=torch.float64)


# ----------------------------------------------------------------------------------------------
# analytic single-triangle tests
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_pixel_centre_convention_and_orientation(backend):
    """A fronto-parallel rectangle over u < 10.4, v < 7.4 covers exactly columns 0..9, rows 0..6
    (pixel centres at x+0.5), at the top-left of the image (no y flip)."""
    H, W = 24, 32
    K = _K(30.0, 16.0, 12.0)
    z = 2.0
    corners = [(-50.0, -50.0), (10.4, -50.0), (10.4, 7.4), (-50.0, 7.4)]
    verts = torch.stack([_unproject(K, u, v, z) for u, v in corners]).float()[None]
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    fr = rasterize(verts, faces, K, (H, W), backend=backend)
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[:7, :10] = True
    assert torch.equal(fr.mask[0], expected)
    assert torch.allclose(fr.depth[0][expected], torch.tensor(z), atol=1e-5)
    assert (fr.depth[0][~expected] == 0).all() and (fr.bary[0][~expected] == 0).all()
    assert set(fr.face_id[0][expected].tolist()) == {0, 1}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flip", [False, True])
def test_single_triangle_perspective_barycentrics(backend, flip):
    """The ray through pixel (20, 12) hits a slanted triangle at known barycentric weights."""
    H, W = 32, 48
    K = _K(40.0, 23.0, 15.0)
    px, py = 20, 12
    w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    P = _unproject(K, px + 0.5, py + 0.5, 2.0)
    v1 = _unproject(K, 35.0, 6.0, 1.5)
    v2 = _unproject(K, 12.0, 26.0, 3.0)
    v0 = (P - w[1] * v1 - w[2] * v2) / w[0]
    verts = torch.stack([v0, v1, v2]).float()[None]
    faces = torch.tensor([[0, 2, 1]] if flip else [[0, 1, 2]])  # both windings are drawn
    w_exp = w[[0, 2, 1]] if flip else w
    fr = rasterize(verts, faces, K, (H, W), backend=backend)
    assert fr.face_id.shape == (1, H, W) and fr.face_id.dtype == torch.int64
    assert fr.bary.shape == (1, H, W, 3) and fr.bary.dtype == torch.float32
    assert fr.depth.shape == (1, H, W) and fr.depth.dtype == torch.float32
    assert fr.face_id[0, py, px] == 0
    assert torch.allclose(fr.bary[0, py, px].double(), w_exp, atol=2e-4)
    assert abs(float(fr.depth[0, py, px]) - 2.0) < 1e-4
    assert fr.face_id[0, 0, 0] == -1 and fr.face_id[0, H - 1, W - 1] == -1
    m = fr.mask[0]
    assert torch.allclose(fr.bary[0][m].sum(-1), torch.ones(int(m.sum())), atol=1e-5)
    zs = verts[0, :, 2]
    assert (fr.depth[0][m] >= zs.min() - 1e-5).all() and (fr.depth[0][m] <= zs.max() + 1e-5).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_near_plane_culling_and_depth_order(backend):
    """Triangles with a vertex at z <= NEAR are dropped; the nearer of two overlapping wins."""
    H, W = 16, 16
    K = _K(20.0, 8.0, 8.0)

    def tri(z):
        return torch.stack([_unproject(K, u, v, z) for u, v in [(-5, -5), (30, -5), (-5, 30)]])

    far, near = tri(3.0), tri(1.0)
    behind = near.clone()
    behind[0, 2] = -0.5
    verts = torch.cat([far, near, behind]).float()[None]
    fr = rasterize(verts, torch.tensor([[0, 1, 2], [3, 4, 5]]), K, (H, W), backend=backend)
    assert (fr.face_id[0, :10, :10] == 1).all()
    assert torch.allclose(fr.depth[0, :10, :10], torch.tensor(1.0), atol=1e-5)
    fr = rasterize(verts, torch.tensor([[6, 7, 8]]), K, (H, W), backend=backend)
    assert not fr.mask.any()
    fr = rasterize(verts, torch.tensor([[0, 1, 2], [6, 7, 8]]), K, (H, W), backend=backend)
    assert set(fr.face_id.unique().tolist()) == {-1, 0}


# ----------------------------------------------------------------------------------------------
# Anny body mesh
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def body():
    """Anny rest-pose body standing upright 3 m in front of an OpenCV camera."""
    anny = pytest.importorskip("anny")
    m = anny.Anny().to(torch.float32)
    with torch.no_grad():
        v = m(torch.eye(4).expand(1, m.bone_count, 4, 4))["vertices"]  # z-up, facing -y
    # world z-up -> camera -y; world front (-y) -> camera -z (towards the camera): x_c = x,
    # y_c = -z, z_c = y, then 3 m forward.
    rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    verts = v @ rot.T + torch.tensor([0.0, 0.0, 3.0])
    return dict(
        verts=verts.contiguous(),
        faces=m.get_triangular_faces().long(),
        uv=m.texture_coordinates.float(),
        face_uv=m.face_texture_coordinate_indices.long(),
    )


def _body_K(S):
    return _K(1.2 * S, S / 2, S / 2)


def test_body_torch_sanity(body):
    S = 128
    fr = rasterize(body["verts"], body["faces"], _body_K(S), (S, S), backend="torch")
    m = fr.mask[0]
    assert 0.02 < m.float().mean() < 0.5
    ys, xs = m.nonzero(as_tuple=True)
    # head at the top (small row), feet at the bottom: the body is upright and centred
    assert ys.min() < 0.3 * S and ys.max() > 0.7 * S and abs(xs.float().mean() - S / 2) < 0.05 * S
    z = body["verts"][0, :, 2]
    assert (fr.depth[0][m] > z.min() - 1e-4).all() and (fr.depth[0][m] < z.max() + 1e-4).all()
    # the visible surface is the front: nearer than the mean depth on the torso centre
    assert fr.depth[0, S // 2 - 5, S // 2] < z.mean()
    assert torch.allclose(fr.bary[0][m].sum(-1), torch.ones(int(m.sum())), atol=1e-5)
    assert (fr.bary[0][m] >= 0).all()


@needs_gl
@pytest.mark.parametrize("S", [256, 512])
def test_body_backends_agree(body, S):
    K = _body_K(S)
    ft = rasterize(body["verts"], body["faces"], K, (S, S), backend="torch")
    fg = rasterize(body["verts"], body["faces"], K, (S, S), backend="moderngl")
    union = ft.mask | fg.mask
    inter = ft.mask & fg.mask
    iou = inter.sum() / union.sum()
    same = (ft.face_id == fg.face_id) & inter
    agree_all = (ft.face_id == fg.face_id).float().mean()
    agree_covered = same.sum() / union.sum()
    logging.getLogger(__name__).info("S=%d face-id agreement: %.4f of pixels, %.4f of covered, "
                                     "IoU %.5f", S, agree_all, agree_covered, iou)
    assert iou > 0.99
    assert agree_all >= 0.99 and agree_covered >= 0.99
    assert (ft.bary[same] - fg.bary[same]).abs().median() < 1e-3
    dz = (ft.depth[same] - fg.depth[same]).abs()
    assert dz.median() < 1e-5 and dz.max() < 1e-3
    assert ((ft.depth[inter] - fg.depth[inter]).abs() < 5e-2).float().mean() > 0.99


def test_interpolate_uv_face_corners(body):
    S = 256
    fr = rasterize(body["verts"], body["faces"], _body_K(S), (S, S), backend="auto")
    corner_uv = body["uv"][body["face_uv"]]  # (F,3,2) UV has its own index buffer
    uv = interpolate(fr, corner_uv)
    assert uv.shape == (1, S, S, 2)
    m = fr.mask
    assert (uv[m] >= 0).all() and (uv[m] <= 1).all()
    assert (uv[~m] == 0).all()
    assert uv[m].std(0).min() > 0.05  # varies over the body
    # (B,F,3,C) gives the same result
    assert torch.allclose(interpolate(fr, corner_uv[None]), uv)


@needs_gl
def test_rasterize_attribute_matches_two_steps(body):
    """rasterize_attribute with moderngl (issue 13: GL interpolates the UVs itself, one
    read-back) gives the mask of rasterize and the UVs of interpolate, for a batch with a
    second, moved body; a new attribute after the first is drawn with its own values (the
    cached buffer follows). (Other backends run those two steps themselves.)"""
    S = 256
    backend = "moderngl"
    verts = torch.cat([body["verts"], body["verts"] * 1.1 + torch.tensor([0.1, 0.0, 0.2])])
    K = _body_K(S)
    corner_uv = body["uv"][body["face_uv"]]
    fr = rasterize(verts, body["faces"], K, (S, S), backend=backend)
    want = interpolate(fr, corner_uv, corner=True)
    uv, mask = R.rasterize_attribute(verts, body["faces"], K, (S, S), corner_uv, backend=backend)
    assert uv.shape == (2, S, S, 2) and mask.shape == (2, S, S) and mask.dtype == torch.bool
    assert torch.equal(mask, fr.mask) and (uv[~mask] == 0).all()
    d = (uv - want).abs().amax(-1)[mask]
    assert d.max() < 1e-2 and (d < 1e-3).float().mean() > 0.999
    # another attribute (3 channels) right after: not the cached UVs
    other = torch.rand(body["faces"].shape[0], 3, 3, generator=torch.Generator().manual_seed(0))
    got, _ = R.rasterize_attribute(verts, body["faces"], K, (S, S), other, backend=backend)
    want_o = interpolate(fr, other, corner=True)
    d = (got - want_o).abs().amax(-1)[mask]
    assert got.shape == (2, S, S, 3) and d.max() < 1e-2 and (d < 1e-3).float().mean() > 0.999
    # the same tensor changed in place: uploaded again (version counter), not the cached values
    other.mul_(0.5)
    half, _ = R.rasterize_attribute(verts, body["faces"], K, (S, S), other, backend=backend)
    assert torch.allclose(half, 0.5 * got, atol=1e-6)


def test_rasterize_attribute_input_errors(body):
    """A corner attribute that is not (F,3,C) with C <= 3 is refused with a clear error."""
    K, faces = _body_K(64), body["faces"]
    F = faces.shape[0]
    for bad in (torch.zeros(5, 3, 2), torch.zeros(F, 3, 4), torch.zeros(F, 2, 2)):
        with pytest.raises(RasterizerError, match="corner_attr"):
            R.rasterize_attribute(body["verts"], faces, K, (64, 64), bad, backend="torch")


def test_interpolate_per_vertex_matches_depth(body):
    """Interpolating camera-space positions reproduces the depth buffer and the pixel rays."""
    S = 128
    K = _body_K(S)
    verts = body["verts"]
    fr = rasterize(verts, body["faces"], K, (S, S), backend="torch")
    P = interpolate(fr, verts)
    m = fr.mask[0]
    assert torch.allclose(P[0, ..., 2][m], fr.depth[0][m], atol=1e-4)
    ys, xs = m.nonzero(as_tuple=True)
    u = K[0, 0] * P[0, ys, xs, 0] / P[0, ys, xs, 2] + K[0, 2]
    v = K[1, 1] * P[0, ys, xs, 1] / P[0, ys, xs, 2] + K[1, 2]
    assert (u - (xs + 0.5)).abs().max() < 1e-2 and (v - (ys + 0.5)).abs().max() < 1e-2


def test_interpolate_gradient(body):
    S = 64
    fr = rasterize(body["verts"], body["faces"], _body_K(S), (S, S), backend="torch")
    V = body["verts"].shape[1]
    attr = torch.rand(1, V, 4, requires_grad=True)
    out = interpolate(fr, attr)
    out.sum().backward()
    g = attr.grad
    # each covered pixel spreads weight 1 (barycentrics sum to 1) over its face's vertices
    assert torch.allclose(g.sum(), 4.0 * fr.mask.sum().float(), rtol=1e-4)
    visible = torch.zeros(V, dtype=torch.bool)
    visible[body["faces"][fr.face_id[fr.mask]].flatten()] = True
    assert (g[0][~visible] == 0).all() and (g[0][visible].abs().sum(-1) > 0).all()


def test_batch_matches_single(body):
    S = 96
    v = body["verts"]
    verts = torch.cat([v, v + torch.tensor([0.3, 0.0, 1.0])])
    K = torch.stack([_body_K(S), _K(1.5 * S, S / 2 + 5, S / 2)])
    for backend in ["torch"] + (["moderngl"] if GL_OK else []):
        fb = rasterize(verts, body["faces"], K, (S, S), backend=backend)
        for b in range(2):
            f1 = rasterize(verts[b:b + 1], body["faces"], K[b], (S, S), backend=backend)
            assert torch.equal(fb.face_id[b], f1.face_id[0])
            assert torch.allclose(fb.bary[b], f1.bary[0])
            assert torch.allclose(fb.depth[b], f1.depth[0])


# ----------------------------------------------------------------------------------------------
# backend selection and errors
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def no_gl(monkeypatch):
    """Pretend EGL is unavailable (fresh backend state whose context creation fails)."""
    state = R._GLState()

    def failing_init():
        state._pid, state._ctx, state._error = R.os.getpid(), None, "RuntimeError: no EGL (test)"

    monkeypatch.setattr(state, "_init", failing_init)
    monkeypatch.setattr(R, "_GL", state)
    return state


def _tiny():
    K = _K(10.0, 4.0, 4.0)
    verts = torch.stack([_unproject(K, u, v, 1.0) for u, v in [(0, 0), (8, 0), (0, 8)]])
    return verts.float()[None], torch.tensor([[0, 1, 2]]), K


def test_moderngl_unavailable_error(no_gl):
    verts, faces, K = _tiny()
    with pytest.raises(RasterBackendUnavailableError, match="backend='torch'") as exc:
        rasterize(verts, faces, K, (8, 8), backend="moderngl")
    assert isinstance(exc.value, RamAvatarError)


def test_auto_falls_back_to_torch_with_one_warning(no_gl, caplog):
    verts, faces, K = _tiny()
    with caplog.at_level(logging.WARNING, logger=R.__name__):
        a = rasterize(verts, faces, K, (8, 8), backend="auto")
        rasterize(verts, faces, K, (8, 8), backend="auto")
    assert len([r for r in caplog.records if "falling back" in r.getMessage()]) == 1
    t = rasterize(verts, faces, K, (8, 8), backend="torch")
    assert torch.equal(a.face_id, t.face_id)


@pytest.mark.parametrize("bad", [
    dict(verts=torch.zeros(3, 3)),
    dict(faces=torch.tensor([[0, 1, 5]])),
    dict(faces=torch.zeros(2, 3)),
    dict(K=torch.zeros(3, 3)),
    dict(K=torch.eye(4)),
    dict(image_size=(0, 8)),
    dict(backend="vulkan"),
])
def test_rasterize_input_errors(bad):
    verts, faces, K = _tiny()
    args = dict(verts=verts, faces=faces, K=K, image_size=(8, 8), backend="torch") | bad
    with pytest.raises(RasterizerError):
        rasterize(**args)


def test_interpolate_errors():
    verts, faces, K = _tiny()
    fr = rasterize(verts, faces, K, (8, 8), backend="torch")
    with pytest.raises(RasterizerError):
        interpolate(fr, torch.zeros(8, 8))
    with pytest.raises(RasterizerError):
        interpolate(Fragments(fr.face_id, fr.bary, fr.depth), torch.zeros(1, 5, 2))
    with pytest.raises(RasterizerError):
        interpolate(fr, torch.zeros(1, 3, 2, dtype=torch.int64))


def test_empty_and_offscreen():
    verts, faces, K = _tiny()
    fr = rasterize(verts + torch.tensor([100.0, 0.0, 0.0]), faces, K, (8, 8), backend="torch")
    assert not fr.mask.any() and (fr.depth == 0).all()
    out = interpolate(fr, torch.ones(1, 3, 2))
    assert out.shape == (1, 8, 8, 2) and (out == 0).all()
    fr = rasterize(verts, torch.zeros(0, 3, dtype=torch.int64), K, (8, 8), backend="auto")
    assert not fr.mask.any()
    assert np.isfinite(fr.bary.numpy()).all()


def test_torch_chunking_invariant(body, monkeypatch):
    """Splitting the candidate list into tiny chunks (even inside one face) changes nothing."""
    S = 64
    K = _body_K(S)
    ref = rasterize(body["verts"], body["faces"], K, (S, S), backend="torch")
    monkeypatch.setattr(R, "_CHUNK", 997)
    out = rasterize(body["verts"], body["faces"], K, (S, S), backend="torch")
    assert torch.equal(ref.face_id, out.face_id) and torch.equal(ref.bary, out.bary)
    big_K = _K(400.0, 32.0, 32.0)  # one triangle much larger than a chunk
    verts, faces, _ = _tiny()
    a = rasterize(verts * torch.tensor([20.0, 20.0, 1.0]), faces, big_K, (S, S), backend="torch")
    monkeypatch.setattr(R, "_CHUNK", 1 << 21)
    b = rasterize(verts * torch.tensor([20.0, 20.0, 1.0]), faces, big_K, (S, S), backend="torch")
    assert a.mask.float().mean() > 0.3 and torch.equal(a.face_id, b.face_id)


# ----------------------------------------------------------------------------------------------
# moderngl from several threads (one EGL context per thread)
# ----------------------------------------------------------------------------------------------


@needs_gl
def test_moderngl_worker_thread_matches_main_thread(body):
    """An EGL context is current in one thread only: every thread gets its own, so a worker
    thread (the live app renders its maps on one) rasterizes exactly as the main thread, also
    with several threads drawing at once, and after releasing its context."""
    import threading

    S = 256
    K = _body_K(S)
    verts = torch.cat([body["verts"], body["verts"] + torch.tensor([0.2, 0.0, 0.5])])
    ref = rasterize(verts, body["faces"], K, (S, S), backend="moderngl")
    assert ref.mask.float().mean() > 0.02
    results, errors = {}, []
    start = threading.Barrier(3)

    def work(name, release_and_redo=False):
        try:
            start.wait(timeout=60)
            for i in range(3):  # concurrent draws interleave with the other threads' ones
                results[(name, i)] = rasterize(verts, body["faces"], K, (S, S), backend="moderngl")
            if release_and_redo:
                assert R.release_thread_context() is True
                assert R.release_thread_context() is False
                results[(name, "again")] = rasterize(verts, body["faces"], K, (S, S), backend="auto")
        except Exception as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=("a", True)), threading.Thread(target=work, args=("b",)),
               threading.Thread(target=work, args=("c",))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(results) == 10
    for key, fr in results.items():
        assert torch.equal(fr.face_id, ref.face_id), key
        assert torch.equal(fr.bary, ref.bary) and torch.equal(fr.depth, ref.depth), key
    # the main thread's own context is still fine after the workers ended
    again = rasterize(verts, body["faces"], K, (S, S), backend="moderngl")
    assert torch.equal(again.face_id, ref.face_id)


# ----------------------------------------------------------------------------------------------
# nvdiffrast: clip-space conversion and output decoding on CPU (emulated kernel), parity on CUDA
# ----------------------------------------------------------------------------------------------


def test_clip_matrix_maps_pixels_and_depth():
    """x_ndc = 2u/W - 1, y_ndc = 2v/H - 1 (window y == image row, no flip), w = camera z,
    z_ndc -1 at near and +1 at far; identical to the moderngl backend's matrix."""
    H, W = 48, 80
    K = torch.tensor([[70.0, 1.5, 37.0], [0.0, 66.0, 21.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    P = R.opencv_to_clip_matrix(K, (H, W), torch.tensor(0.5), torch.tensor(9.0))
    assert P.shape == (1, 4, 4)
    assert np.allclose(P[0].numpy(), R._gl_projection(K.numpy(), H, W, 0.5, 9.0))
    g = torch.Generator().manual_seed(0)
    X = torch.rand(100, 3, generator=g, dtype=torch.float64) * torch.tensor([2.0, 2.0, 6.0]) \
        - torch.tensor([1.0, 1.0, -1.0])
    c = torch.cat([X, torch.ones(100, 1, dtype=torch.float64)], 1) @ P[0].T
    uvw = X @ K.T
    u, v = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]
    assert torch.allclose(c[:, 3], X[:, 2])
    assert torch.allclose((c[:, 0] / c[:, 3] + 1) * W / 2, u)
    assert torch.allclose((c[:, 1] / c[:, 3] + 1) * H / 2, v)
    zn = c[:, 2] / c[:, 3]
    order = X[:, 2].argsort()
    assert (zn[order].diff() > 0).all()
    ends = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 9.0, 1.0]], dtype=torch.float64) @ P[0].T
    assert torch.allclose(ends[:, 2] / ends[:, 3], torch.tensor([-1.0, 1.0], dtype=torch.float64))


def test_clip_space_corners_and_culling():
    K = _K(30.0, 16.0, 12.0)
    verts = torch.stack([_unproject(K, u, v, z) for u, v, z in
                         [(2, 3, 2.0), (20, 4, 3.0), (5, 18, 4.0), (9, 9, -1.0)]]).float()[None]
    faces = torch.tensor([[0, 1, 2], [0, 1, 3]])
    pos, tri, cz = R.clip_space(verts, faces, K.double()[None], (24, 32))
    assert pos.shape == (1, 6, 4) and pos.dtype == torch.float32 and pos.is_contiguous()
    assert tri.dtype == torch.int32 and tri.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert torch.allclose(cz[0], torch.tensor([[2.0, 3.0, 4.0], [2.0, 3.0, -1.0]]))
    ndc = pos[0, :3, :2] / pos[0, :3, 3:]
    px = (ndc + 1) * torch.tensor([32.0, 24.0]) / 2
    assert torch.allclose(px, torch.tensor([[2.0, 3.0], [20.0, 4.0], [5.0, 18.0]]), atol=1e-4)
    zn = pos[0, :3, 2] / pos[0, :3, 3]
    assert (zn > -1).all() and (zn < 1).all() and zn[0] < zn[1] < zn[2]
    # the face with a corner behind the camera: all corners outside the frustum, zero area
    assert torch.equal(pos[0, 3:], torch.tensor([R._CULLED_CLIP] * 3))


def _nvdr_float(ids: torch.Tensor) -> torch.Tensor:
    """nvdiffrast's triidx_to_float of (triangle index + 1)."""
    x = ids + 1
    small = x.to(torch.float32)
    large = (x + 0x4A800000).to(torch.int32).view(torch.float32)
    return torch.where(x <= 0x01000000, small, large)


def test_decode_triangle_id():
    ids = torch.tensor([-1, 0, 1, 12345, 2**24 - 1, 2**24, 2**24 + 7, 40_000_000])
    assert torch.equal(R.decode_triangle_id(_nvdr_float(ids)), ids)


def _emulated_dr_rasterize(ctx, pos, tri, resolution, ranges=None, grad_db=True):
    """Brute-force CPU twin of ``nvdiffrast.torch.rasterize`` (instanced mode) following its
    documented output and its CUDA kernel's formulas: pixel (px, py) is sampled at
    ``x_ndc = 2(px+0.5)/W - 1``, ``y_ndc = 2(py+0.5)/H - 1`` (row 0 at y = -1), homogeneous edge
    functions give perspective-correct (u, v) = weights of corners 0 and 1, the smallest z/w
    in [-1, 1] wins, channel 3 is the float-encoded triangle index + 1."""
    H, W = resolution
    p = pos.double()[:, tri.long()]  # (B,T,3,4)
    B, T = p.shape[:2]
    fy = ((torch.arange(H, dtype=torch.float64) + 0.5) * 2 / H - 1).view(H, 1)
    fx = ((torch.arange(W, dtype=torch.float64) + 0.5) * 2 / W - 1).view(1, W)
    out = torch.zeros(B, H, W, 4, dtype=torch.float64)
    best = torch.full((B, H, W), float("inf"), dtype=torch.float64)
    for t in range(T):
        c = [p[:, t, k].view(B, 4, 1, 1) for k in range(3)]
        ex = [ck[:, 0] - fx * ck[:, 3] for ck in c]
        ey = [ck[:, 1] - fy * ck[:, 3] for ck in c]
        a0 = ex[1] * ey[2] - ey[1] * ex[2]
        a1 = ex[2] * ey[0] - ey[2] * ex[0]
        a2 = ex[0] * ey[1] - ey[0] * ex[1]
        s = a0 + a1 + a2
        ok = s.abs() > 1e-300
        s = torch.where(ok, s, torch.ones_like(s))
        b0, b1, b2 = a0 / s, a1 / s, a2 / s
        zw = (c[0][:, 2] * a0 + c[1][:, 2] * a1 + c[2][:, 2] * a2) / \
             (c[0][:, 3] * a0 + c[1][:, 3] * a1 + c[2][:, 3] * a2)
        w_pos = (c[0][:, 3] > 0) & (c[1][:, 3] > 0) & (c[2][:, 3] > 0)
        win = ok & w_pos & (b0 >= 0) & (b1 >= 0) & (b2 >= 0) & (zw >= -1) & (zw <= 1) & (zw < best)
        best = torch.where(win, zw, best)
        val = torch.stack([b0, b1, zw, torch.full_like(zw, float(t))], -1)
        out = torch.where(win.unsqueeze(-1), val, out)
    ids = torch.where(torch.isfinite(best), out[..., 3].long(), torch.full_like(best, -1).long())
    out = out.float()
    out[..., 3] = _nvdr_float(ids)
    return out, torch.zeros_like(out)


@pytest.fixture
def emulated_nvdiffrast(monkeypatch):
    """The nvdiffrast backend's own code path with the CUDA kernel replaced by the CPU twin."""
    import types

    state = R._NvdrState()
    state._checked, state._pid = True, R.os.getpid()
    state._dr = types.SimpleNamespace(RasterizeCudaContext=lambda device=None: object(),
                                      rasterize=_emulated_dr_rasterize)
    monkeypatch.setattr(state, "device_for", lambda verts: verts.device)
    monkeypatch.setattr(R, "_NV", state)
    return state


def test_nvdiffrast_path_orientation_emulated(emulated_nvdiffrast):
    """Same rectangle as test_pixel_centre_convention_and_orientation: columns 0..9, rows 0..6,
    no vertical flip through clip space and nvdiffrast's bottom-up rows."""
    H, W = 24, 32
    K = _K(30.0, 16.0, 12.0)
    corners = [(-50.0, -50.0), (10.4, -50.0), (10.4, 7.4), (-50.0, 7.4)]
    verts = torch.stack([_unproject(K, u, v, 2.0) for u, v in corners]).float()[None]
    fr = rasterize(verts, torch.tensor([[0, 1, 2], [0, 2, 3]]), K, (H, W), backend="nvdiffrast")
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[:7, :10] = True
    assert torch.equal(fr.mask[0], expected)
    assert torch.allclose(fr.depth[0][expected], torch.tensor(2.0), atol=1e-5)
    assert (fr.bary[0][~expected] == 0).all() and (fr.depth[0][~expected] == 0).all()


def test_nvdiffrast_path_matches_torch_emulated(emulated_nvdiffrast):
    """A soup of overlapping triangles at different depths, both windings, one crossing behind
    the camera, two cameras (one with skew): face ids, barycentric order and depth agree with
    the torch reference."""
    g = torch.Generator().manual_seed(3)
    H, W, T = 40, 56, 30
    K = torch.stack([_K(45.0, 25.0, 21.0),
                     torch.tensor([[50.0, 2.0, 30.0], [0.0, 47.0, 18.0], [0.0, 0.0, 1.0]])])
    uvz = []
    for _ in range(T):
        c = torch.rand(2, generator=g) * torch.tensor([W, H])
        z = 1.0 + 4.0 * float(torch.rand(1, generator=g))
        for _k in range(3):
            d = (torch.rand(2, generator=g) - 0.5) * 30
            dz = float(torch.rand(1, generator=g) - 0.5)
            uvz.append((float(c[0] + d[0]), float(c[1] + d[1]), z + dz))
    verts = torch.stack([_unproject(K[0], u, v, z) for u, v, z in uvz]).float()
    verts[5, 2] = -0.3  # face 1 crosses the camera plane: culled
    verts = torch.stack([verts, verts * torch.tensor([1.0, 1.0, 1.1])])
    faces = torch.arange(3 * T).view(T, 3)
    faces[::2] = faces[::2].flip(1)  # both windings
    ft = rasterize(verts, faces, K, (H, W), backend="torch")
    fn = rasterize(verts, faces, K, (H, W), backend="nvdiffrast")
    assert ft.mask.float().mean() > 0.3 and not (ft.face_id == 1).any()
    same = (ft.face_id == fn.face_id) & ft.mask
    assert (ft.face_id == fn.face_id).float().mean() > 0.995
    assert torch.allclose(ft.bary[same], fn.bary[same], atol=1e-4)
    assert torch.allclose(ft.depth[same], fn.depth[same], atol=1e-4)
    assert torch.allclose(fn.bary[fn.mask].sum(-1), torch.ones(int(fn.mask.sum())), atol=1e-5)


def test_auto_prefers_nvdiffrast(emulated_nvdiffrast):
    verts, faces, K = _tiny()
    assert R.auto_backend() == "nvdiffrast"
    status = R.backend_status()
    assert status["auto"] == "nvdiffrast" and status["available"][0] == "nvdiffrast"
    a = rasterize(verts, faces, K, (8, 8), backend="auto")
    t = rasterize(verts, faces, K, (8, 8), backend="torch")
    assert torch.equal(a.face_id, t.face_id)


def test_nvdiffrast_unavailable_error(monkeypatch):
    state = R._NvdrState()
    state._checked, state._pid = True, R.os.getpid()
    state.error = "ModuleNotFoundError: No module named 'nvdiffrast'"
    monkeypatch.setattr(R, "_NV", state)
    verts, faces, K = _tiny()
    with pytest.raises(RasterBackendUnavailableError, match=r"\[nvdiffrast\]"):
        rasterize(verts, faces, K, (8, 8), backend="nvdiffrast")
    assert R.auto_backend() in ("moderngl", "torch")
    status = R.backend_status()
    assert status["nvdiffrast"] == {"ok": False, "reason": state.error}
    assert "nvdiffrast" not in status["available"] and "torch" in status["available"]


@needs_nv
@pytest.mark.parametrize("S", [256, 512])
def test_body_nvdiffrast_agrees_with_torch(body, S):
    """Parity of the CUDA rasterizer with the torch reference on the Anny body (>= 99 % of the
    pixels with the same face id, as for moderngl). CudaRaster snaps vertices to 1/16 px, so
    more near-edge pixels may go to the neighbouring face than with OpenGL; those pixels still
    interpolate nearly the same surface point, which is checked on the camera-space position."""
    K = _body_K(S)
    verts = body["verts"].to("cuda")
    ft = rasterize(verts, body["faces"], K, (S, S), backend="torch")
    fn = rasterize(verts, body["faces"], K, (S, S), backend="nvdiffrast")
    assert fn.face_id.device.type == "cuda"
    union, inter = ft.mask | fn.mask, ft.mask & fn.mask
    iou = inter.sum() / union.sum()
    same = (ft.face_id == fn.face_id) & inter
    agree_all = (ft.face_id == fn.face_id).float().mean()
    agree_covered = same.sum() / union.sum()
    logging.getLogger(__name__).info("nvdiffrast S=%d face-id agreement: %.4f of pixels, %.4f "
                                     "of covered, IoU %.5f", S, agree_all, agree_covered, iou)
    assert iou > 0.99 and agree_all >= 0.99 and agree_covered >= 0.97
    assert (ft.bary[same] - fn.bary[same]).abs().median() < 1e-3
    dz = (ft.depth[same] - fn.depth[same]).abs()
    assert dz.median() < 1e-5 and dz.max() < 1e-3
    pt, pn = interpolate(ft, verts), interpolate(fn, verts)
    assert ((pt - pn).norm(dim=-1)[inter] < 5e-3).float().mean() > 0.99  # metres


def test_nvdiffrast_state_is_checked_again_after_fork(emulated_nvdiffrast):
    """A forked child inherits no usable CUDA state: the backend is checked again there (and
    falls back when CUDA cannot start in the child) instead of reusing the parent's module."""
    state = emulated_nvdiffrast
    assert state.available()
    state._pid = -1  # what a forked child sees: the state belongs to another process
    assert state.available() == NV_OK
    if not NV_OK:
        assert state.error and R.auto_backend() in ("moderngl", "torch")


@pytest.mark.skipif(not R.moderngl_available(), reason="moderngl / EGL unavailable")
def test_moderngl_keeps_framebuffers_of_the_last_sizes_only():
    """A caller whose image size changes every call (the texture bake draws each frame's depth
    in the box of its projection) does not pile up one framebuffer per size (40 MB each at
    4K); the sizes in use stay cached and the draws stay right."""
    V, F, K = _tiny()
    ref = R.rasterize(V, F, K, (8, 8), backend="moderngl")
    gl = R._GL._init()
    for n in range(1, 11):
        R.rasterize(V, F, K, (8 + n, 8 + 2 * n), backend="moderngl")
        assert len(gl.fbos) <= gl.MAX_FBOS
    assert (18, 28) in gl.fbos and (8, 8) not in gl.fbos
    again = R.rasterize(V, F, K, (8, 8), backend="moderngl")
    assert torch.equal(again.face_id, ref.face_id) and torch.allclose(again.depth, ref.depth)
    assert ref.face_id.max() >= 0
