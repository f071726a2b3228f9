"""Barycentrics that are differentiable in the vertex positions (for pose refinement).

:func:`ram_avatar.render.rasterizer.rasterize` returns constant fragments: which face covers
each pixel is a discrete decision. Given those face ids, the barycentrics of each pixel centre
in its face are a smooth function of the projected vertices, so recomputing them in torch gives
gradients of every interpolated map (UV map, canonical positions, ...) with respect to the
vertices, and through the body model to its pose and shape. This is the interior-gradient part
of differentiable rasterisation (as in PyTorch3D's rasteriser and nvdiffrast's ``interpolate``:
visibility changes at silhouettes carry no gradient), which is what photometric pose refinement
through a neural texture needs (InstantAvatar and GaussianAvatar refine SMPL poses by
back-propagating the image loss into the pose parameters; here the loss reaches the pose through
the texture lookup at the interpolated UVs).

Pixel convention of the rasterizer: pixel (x, y) is sampled at (x + 0.5, y + 0.5); barycentrics
are perspective-correct (screen-space weights divided by camera z, renormalised).
"""

from __future__ import annotations

import torch

from ram_avatar.render.rasterizer import Fragments


def _cross(ax, ay, bx, by):
    return ax * by - ay * bx


def differentiable_bary(face_id: torch.Tensor, verts: torch.Tensor, faces: torch.Tensor,
                        K: torch.Tensor) -> torch.Tensor:
    """Perspective-correct barycentrics of every covered pixel centre, differentiable in ``verts``.

    Args:
        face_id: (B,H,W) int64 face covering each pixel (-1 on background), from
            :func:`~ram_avatar.render.rasterizer.rasterize` on the same (or nearly the same)
            vertices.
        verts: (B,V,3) camera-space vertices in metres (OpenCV camera), may require grad.
        faces: (F,3) int64 vertex indices.
        K: (3,3) or (B,3,3) intrinsics in pixels.

    Returns:
        (B,H,W,3) barycentrics (zero on background) that sum to 1 on covered pixels and equal
        the rasterizer's own barycentrics when ``verts`` are the rasterised vertices (up to
        float rounding). Pixels whose centre lies slightly outside their face after the vertices
        moved get barycentrics outside [0,1] (linear extrapolation, as in PyTorch3D without
        clipping), which keeps the gradient smooth.
    """
    B, H, W = face_id.shape
    faces = faces.to(face_id.device).long()
    if K.dim() == 2:
        K = K.expand(B, 3, 3)
    K = K.to(verts)
    mask = face_id >= 0
    bidx, ys, xs = mask.nonzero(as_tuple=True)
    fid = face_id[mask]
    tri = verts[bidx[:, None], faces[fid]]                      # (N,3,3) camera coords
    z = tri[..., 2].clamp_min(1e-6)
    Kb = K[bidx]                                                 # (N,3,3)
    u = (Kb[:, None, 0, 0] * tri[..., 0] + Kb[:, None, 0, 1] * tri[..., 1]) / z + Kb[:, None, 0, 2]
    v = Kb[:, None, 1, 1] * tri[..., 1] / z + Kb[:, None, 1, 2]
    px = xs.to(verts.dtype) + 0.5
    py = ys.to(verts.dtype) + 0.5
    du, dv = u - px[:, None], v - py[:, None]                   # vertex - pixel, (N,3)
    # screen-space weight of vertex k: signed area of the sub-triangle opposite to it
    w0 = _cross(du[:, 1], dv[:, 1], du[:, 2], dv[:, 2])
    w1 = _cross(du[:, 2], dv[:, 2], du[:, 0], dv[:, 0])
    w2 = _cross(du[:, 0], dv[:, 0], du[:, 1], dv[:, 1])
    area = w0 + w1 + w2
    area = torch.where(area.abs() < 1e-12, torch.full_like(area, 1e-12), area)
    lam = torch.stack([w0, w1, w2], dim=-1) / area[:, None]
    persp = lam / z
    denom = persp.sum(-1, keepdim=True)
    denom = torch.where(denom.abs() < 1e-12, torch.full_like(denom, 1e-12), denom)
    bary = persp / denom
    out = verts.new_zeros(B, H, W, 3)
    return out.index_put((bidx, ys, xs), bary)


def differentiable_fragments(fragments: Fragments, verts: torch.Tensor, faces: torch.Tensor,
                             K: torch.Tensor) -> Fragments:
    """``fragments`` with their barycentrics replaced by :func:`differentiable_bary` of
    ``verts`` (face ids and depth unchanged), for :func:`~ram_avatar.render.rasterizer.interpolate`."""
    bary = differentiable_bary(fragments.face_id, verts, faces, K)
    return Fragments(fragments.face_id, bary, fragments.depth, faces)
