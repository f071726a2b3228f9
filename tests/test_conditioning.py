"""Conditioning extras (ram_avatar.render.conditioning): outward vertex normals, expanded and
canonical maps, hand boxes."""

from __future__ import annotations

import torch


def test_vertex_normals_point_outward():
    from ram_avatar.render.conditioning import vertex_normals

    # octahedron with inward-wound faces: normals still come out pointing away from the centre
    verts = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
    faces = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4],
                          [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    for f in (faces, faces.flip(1)):
        n = vertex_normals(verts[None] + 3.0, f)
        assert torch.allclose(n[0], verts, atol=1e-5)


def test_vertex_normals_match_the_face_loop(anny_body):
    """The sparse vertex-face sum (issue 13) gives the normals of summing the area-weighted
    face normals corner by corner, for a batch of two different meshes."""
    from ram_avatar.render.conditioning import vertex_normals

    params = anny_body.zero_params(2)
    params.body_pose[1, :, 0] = 0.3
    verts = anny_body(params, return_vertices=True).vertices
    f = anny_body.faces.long()
    fn = torch.cross(verts[:, f[:, 1]] - verts[:, f[:, 0]], verts[:, f[:, 2]] - verts[:, f[:, 0]],
                     dim=-1)
    want = torch.zeros_like(verts)
    for k in range(3):
        want.index_add_(1, f[:, k], fn)
    want = want / want.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    got = vertex_normals(verts, f)
    assert got.shape == verts.shape
    assert float((got - want).abs().max()) < 1e-5


def test_conditioning_expanded_and_canonical_maps(anny_body):
    import numpy as np

    from ram_avatar.render.conditioning import ConditioningRenderer

    cond = ConditioningRenderer(anny_body, backend="auto")
    params = anny_body.zero_params(2)
    params.body_pose[1, :, 0] = 0.2  # a second, bent pose
    S = 64
    K = np.array([[140.0, 0, S / 2], [0, 140.0, S / 2], [0, 0, 1]])
    m = cond.render(params, None, K, S, expand_offset=0.03, canonical=True)
    base = cond.render(params, None, K, S)
    assert set(base) <= set(m) and "uv_expanded" not in base
    for key in ("uv", "body_mask", "hand", "face"):
        assert torch.equal(m[key], base[key]), key  # existing maps unchanged
    mask, mask_e = m["body_mask"], m["body_mask_expanded"]
    assert m["uv_expanded"].shape == (2, 2, S, S) and m["canon"].shape == (2, 3, S, S)
    assert mask_e.sum() > mask.sum() * 1.05                # the expanded mesh covers more
    assert (mask * (1 - mask_e)).sum() <= 0.01 * mask.sum()  # ... and (almost) all of the body
    assert m["canon"].abs().max() <= 1.0
    assert torch.equal(m["canon"].abs().sum(1, keepdim=True) > 0, mask > 0)
    assert m["canon_expanded"].shape == (2, 3, S, S)
    # the expanded mesh is drawn in the same rasterizer call as the body: the same maps as
    # drawing it alone
    from ram_avatar.render.conditioning import vertex_normals
    from ram_avatar.render.rasterizer import rasterize_attribute

    with torch.no_grad():
        v = anny_body(params).vertices
    v_e = v + 0.03 * vertex_normals(v, anny_body.faces)
    Kt = torch.as_tensor(K, dtype=torch.float32)
    uv_e, cov_e = rasterize_attribute(v_e, anny_body.faces, Kt, (S, S), cond.uv_corners,
                                      backend=cond.backend)
    assert torch.equal(m["uv_expanded"], uv_e.permute(0, 3, 1, 2))
    assert torch.equal(mask_e[:, 0] > 0, cov_e)
    boxes = m["hand_boxes"]
    assert boxes.shape == (2, 2, 4) and (boxes[..., 2:] >= boxes[..., :2]).all()
