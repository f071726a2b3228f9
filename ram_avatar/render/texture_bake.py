"""Texture from the video: the subject's appearance baked into the body model's UV atlas.

Issue 10, item 1. The renderer starts from a fixed RGB texture instead of pure noise
(:attr:`ram_avatar.models.renderer.RendererConfig.texture_rgb`); this module builds it from the
training frames of a capture and writes it beside the sequence so a person can look at it::

    sequence/texture.png            (S, S) RGB, texel row 0 = v = 1 (same layout as the
                                    neural texture: uv (u, v) -> column u*S, row (1-v)*S)
    sequence/texture_coverage.png   (S, S) grey, 255 = fully seen (weight sum >= 1), 0 = never
    sequence/texture.json           how it was baked (frames, size, coverage, seconds)

Method (back-projection, texel -> image, as in texture-map baking from calibrated photographs,
e.g. Lempitsky & Ivanov 2007 / Waechter et al. 2014 "Let there be color!", without seam
levelling):

1. The mesh is rasterised once in UV space (positions = per-face-corner UVs, the body model's
   ``uv_coords[uv_faces]``, with :func:`ram_avatar.render.rasterizer.rasterize`): every texel
   centre inside a UV island gets its face id and barycentrics (:class:`UVRaster`).
2. For every used frame the body is posed (FittedSequence parameters, camera coordinates) and
   each texel's 3D point and interpolated vertex normal are computed. The texel is projected
   with ``K`` (undistorted pinhole, as capture fitted it; lens distortion ``dist`` is applied
   to find the pixel in the original frame). It is *visible* when the rasteriser's depth at
   that pixel (the same posed mesh seen by the camera) agrees with the texel's depth within
   ``depth_tol`` x depth, and it is *person* when the person mask (eroded ``mask_erode`` px,
   bilinear value >= 0.5) covers it, so background is never sampled. The colour is read with
   bilinear interpolation and weighted by ``w = max(0, n . -view)^normal_power`` (how squarely
   the surface faces the camera); samples with ``n . -view < min_cos`` are dropped.
3. Robust per-texel average over frames: a first pass takes, per texel, the sample at the
   weighted median of luminance as reference colour; samples whose colour differs from it by
   more than ``reject`` (max over R, G, B, in [0, 1] units) are rejected (occluders the depth
   test missed, misaligned silhouettes, specular flashes); the texel colour is the weighted mean
   of the remaining samples (:func:`robust_texel_average`).
4. Texels never seen are filled from their neighbours with OpenCV's Telea inpainting, run per
   UV island (connected component of the island mask) with only that island's seen texels as
   known pixels, so colours never cross a seam into another island; islands never seen get the
   mean seen colour (neutral). Islands are then dilated ``pad`` texels outward (nearest island
   texel's colour) so bilinear lookups at island borders do not pick up the black background
   (:func:`fill_unseen`). Never random values.

The core (:func:`backproject`) works on plain arrays (vertices, faces, UV corners, K, images,
masks) and is tested on a synthetic textured mesh; :func:`bake_texture` wraps it for a
:class:`~ram_avatar.io.sequence.FittedSequence`.

Only training frames may be used (held-out frames must not leak into the renderer's input):
callers pass the training split; the default (:func:`default_training_frames`) is the valid
frames outside the last 10 %, the ``tail`` split of :mod:`ram_avatar.io.split` (a run that
holds out other frames bakes again from its own, ``ensure_texture``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
import torch

from ram_avatar.errors import RamAvatarError
from ram_avatar.io.sequence import sequence_root
from ram_avatar.io.split import tail_split
from ram_avatar.render.conditioning import vertex_normals
from ram_avatar.render.rasterizer import NEAR, rasterize
from ram_avatar.utils import atomic_path, atomic_write_text, progress

log = logging.getLogger(__name__)

TEXTURE = "texture.png"
TEXTURE_COVERAGE = "texture_coverage.png"
TEXTURE_INFO = "texture.json"
#: Rec. 601 luma weights of the median pass
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
#: samples processed at once in the elementwise steps of robust_texel_average
_CHUNK = 1 << 22


class TextureError(RamAvatarError):
    """A baked texture is missing or unreadable, or a bake got no usable frame."""


# --------------------------------------------------------------------------------------------
# UV-space rasterisation


@dataclass
class UVRaster:
    """The mesh rasterised in UV space at ``size x size`` texels.

    Attributes:
        size: S, texels per side.
        face_id: (S,S) int64 face covering each texel centre, -1 outside the UV islands.
        texels: (N,) int64 row-major flat indices of the N island texels.
        tex_face: (N,) int64 face id of each island texel.
        tex_bary: (N,3) float32 barycentrics of each island texel's centre in its face.
    """

    size: int
    face_id: np.ndarray
    texels: np.ndarray
    tex_face: torch.Tensor
    tex_bary: torch.Tensor

    @property
    def island(self) -> np.ndarray:
        """(S,S) bool: texels inside a UV island."""
        return self.face_id >= 0

    @property
    def num_texels(self) -> int:
        return int(self.texels.shape[0])


def rasterize_uv(uv_corners: torch.Tensor, size: int, backend: str = "auto") -> UVRaster:
    """Rasterise a mesh's UV layout: per texel centre, the face and barycentrics it lies in.

    Texel (column x, row y) has its centre at ``u = (x + 0.5) / S``, ``v = 1 - (y + 0.5) / S``
    (OBJ convention, v up; the layout of :class:`ram_avatar.models.neural_texture.NeuralTexture`
    and of ``grid_sample(align_corners=False)``).

    Args:
        uv_corners: (F,3,2) UV of each face corner in [0,1] (``uv_coords[uv_faces]``).
        size: S, texels per side.
        backend: rasterizer backend (``auto``, ``torch``, ``moderngl``).
    Returns:
        :class:`UVRaster`.
    Raises:
        TextureError: ``uv_corners`` of the wrong shape or a non-positive size.
    """
    uv = torch.as_tensor(uv_corners, dtype=torch.float32).cpu()
    if uv.dim() != 3 or uv.shape[1:] != (3, 2):
        raise TextureError(f"uv_corners must be (F,3,2), got {tuple(uv.shape)}")
    if int(size) < 1:
        raise TextureError(f"texture size must be positive, got {size}")
    S, nf = int(size), uv.shape[0]
    flat = uv.reshape(-1, 2)
    # one vertex per face corner; positions = texel coordinates at z = 1, K = identity
    verts = torch.stack([flat[:, 0] * S, (1.0 - flat[:, 1]) * S, torch.ones(len(flat))], dim=1)
    faces = torch.arange(3 * nf, dtype=torch.int64).view(nf, 3)
    frags = rasterize(verts[None], faces, torch.eye(3), (S, S), backend=backend)
    face_id = frags.face_id[0].cpu()
    texels = torch.nonzero(face_id.reshape(-1) >= 0).squeeze(1)
    return UVRaster(size=S, face_id=face_id.numpy(), texels=texels.numpy(),
                    tex_face=face_id.reshape(-1)[texels].clone(),
                    tex_bary=frags.bary[0].cpu().reshape(-1, 3)[texels].clone())


# --------------------------------------------------------------------------------------------
# per-frame sampling


class TexelSampler:
    """Back-project one frame onto the island texels of a :class:`UVRaster` (module doc, step 2).

    Texel positions and normals are ``B @ [verts | vertex normals]`` with a sparse ``(N,V)``
    matrix ``B`` holding each texel's three barycentric weights (built once).

    Args:
        raster: the mesh's UV raster.
        faces: (F,3) int64 vertex indices of the mesh (same face order as the UV corners).
        backend: rasterizer backend for the per-frame depth map.
        normal_power: p of the weight ``max(0, n . -view)^p``.
        depth_tol: visibility tolerance, relative to the rasterised depth.
        min_cos: samples with ``n . -view`` below this are dropped (grazing views).
        mask_erode: pixels the person mask is eroded by before sampling (0 = none).
    """

    def __init__(self, raster: UVRaster, faces: torch.Tensor, backend: str = "auto",
                 normal_power: float = 2.0, depth_tol: float = 0.01, min_cos: float = 0.05,
                 mask_erode: int = 2) -> None:
        from scipy.sparse import csr_matrix

        self.raster = raster
        self.faces = torch.as_tensor(faces, dtype=torch.int64).cpu()
        n = raster.num_texels
        corner_vid = self.faces[raster.tex_face].numpy()                  # (N,3)
        n_verts = int(self.faces.max()) + 1 if self.faces.numel() else 0
        self.bary_matrix = csr_matrix(
            (raster.tex_bary.numpy().astype(np.float32).ravel(), corner_vid.ravel(),
             np.arange(0, 3 * n + 1, 3)), shape=(n, n_verts))
        self.backend = backend
        self.normal_power = float(normal_power)
        self.depth_tol = float(depth_tol)
        self.min_cos = float(min_cos)
        self.mask_erode = int(mask_erode)

    @torch.no_grad()
    def sample(self, verts: torch.Tensor, K: np.ndarray, image: np.ndarray,
               mask: np.ndarray | None = None, dist: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Colour samples of the texels visible in one frame.

        Args:
            verts: (V,3) posed vertices, OpenCV camera coordinates, metres.
            K: (3,3) pinhole intrinsics (pixels) of the undistorted camera.
            image: (H,W,3) uint8 RGB frame (original, possibly distorted pixels).
            mask: (H,W) uint8 person mask 0..255 (or bool), None = everything is person.
            dist: OpenCV distortion coefficients of ``image`` (None or zeros = pinhole).
        Returns:
            ``pos (n,) int32`` island-texel indices (into ``raster.texels``), ``rgb (n,3)
            uint8``, ``weight (n,) float32`` in (0, 1].
        """
        empty = (np.zeros(0, np.int32), np.zeros((0, 3), np.uint8), np.zeros(0, np.float32))
        vt = torch.as_tensor(verts, dtype=torch.float32).cpu().reshape(-1, 3)
        H, W = image.shape[:2]
        K = np.asarray(K, dtype=np.float64)
        normals = vertex_normals(vt[None], self.faces)[0]
        X, Y, Z, nx, ny, nz = np.ascontiguousarray(
            (self.bary_matrix @ torch.cat([vt, normals], 1).numpy()).T)       # 6 x (N,)
        cos = -(nx * X + ny * Y + nz * Z) / np.maximum(
            np.sqrt((nx * nx + ny * ny + nz * nz) * (X * X + Y * Y + Z * Z)), 1e-12)
        cand = np.flatnonzero((cos > self.min_cos) & (Z > NEAR))
        if cand.size == 0:
            return empty
        P = np.stack([X[cand], Y[cand], Z[cand]], 1)
        cos = cos[cand]
        u = (K[0, 0] * P[:, 0] + K[0, 1] * P[:, 1]) / P[:, 2] + K[0, 2]
        v = K[1, 1] * P[:, 1] / P[:, 2] + K[1, 2]
        # depth map of the posed mesh, rasterised in the bounding box of its projection only
        V = vt.numpy()
        V = V[V[:, 2] > NEAR]
        vu = (K[0, 0] * V[:, 0] + K[0, 1] * V[:, 1]) / V[:, 2] + K[0, 2]
        vv = K[1, 1] * V[:, 1] / V[:, 2] + K[1, 2]
        x0, x1 = (int(np.clip(a, 0, W)) for a in (np.floor(vu.min()), np.ceil(vu.max()) + 1))
        y0, y1 = (int(np.clip(a, 0, H)) for a in (np.floor(vv.min()), np.ceil(vv.max()) + 1))
        if x1 <= x0 or y1 <= y0:
            return empty
        Kc = K.copy()
        Kc[0, 2] -= x0
        Kc[1, 2] -= y0
        depth = rasterize(vt[None], self.faces, torch.as_tensor(Kc), (y1 - y0, x1 - x0),
                          backend=self.backend).depth[0].cpu().numpy()
        px, py = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
        inb = np.flatnonzero((px >= x0) & (px < x1) & (py >= y0) & (py < y1))
        d = depth[py[inb] - y0, px[inb] - x0]
        ok = (d > 0) & (np.abs(P[inb, 2] - d) <= self.depth_tol * d)
        sel = inb[ok]
        if sel.size == 0:
            return empty
        cand, cos, P, u, v = cand[sel], cos[sel], P[sel], u[sel], v[sel]
        if dist is not None and np.any(dist):
            pts, _ = cv2.projectPoints(P.astype(np.float64), np.zeros(3), np.zeros(3), K,
                                       np.asarray(dist, np.float64))
            u, v = pts.reshape(-1, 2).T
        inside = np.flatnonzero((u >= 0) & (u < W) & (v >= 0) & (v < H))
        cand, cos, u, v = cand[inside], cos[inside], u[inside], v[inside]
        if cand.size == 0:
            return empty
        # bilinear colour (and mask) at the projected points; pixel x covers [x, x+1), so the
        # continuous coordinate u is OpenCV's (centre-based) u - 0.5
        keep = np.ones(len(cand), bool)
        if mask is not None:
            m = np.asarray(mask)
            m = (m > 0).astype(np.uint8) * 255 if m.dtype == bool else m.astype(np.uint8)
            if self.mask_erode > 0:
                k = 2 * self.mask_erode + 1
                m = cv2.erode(m, np.ones((k, k), np.uint8))
            keep = _remap_points(m, u - 0.5, v - 0.5)[:, 0] >= 128
            cand, cos, u, v = cand[keep], cos[keep], u[keep], v[keep]
            if cand.size == 0:  # every visible texel falls outside the person mask
                return empty
        rgb = _remap_points(np.ascontiguousarray(image), u - 0.5, v - 0.5)
        w = np.power(cos, self.normal_power).astype(np.float32)
        return cand.astype(np.int32), np.ascontiguousarray(rgb[:, :3]), w


def _remap_points(img: np.ndarray, x: np.ndarray, y: np.ndarray, block: int = 4096) -> np.ndarray:
    """Bilinear samples ``(n,C)`` of ``img (H,W,C)`` uint8 at OpenCV pixel coordinates
    (``x``, ``y``) (integer = pixel centre), replicating the border: one ``cv2.remap`` call with
    the points laid out in rows of ``block``."""
    n = len(x)
    if n == 0:  # cv2.remap rejects an empty map
        return np.zeros((0, img.shape[2] if img.ndim == 3 else 1), img.dtype)
    rows = -(-n // block)
    mx = np.zeros(rows * block, np.float32)
    my = np.zeros(rows * block, np.float32)
    mx[:n], my[:n] = x, y
    out = cv2.remap(img, mx.reshape(rows, block), my.reshape(rows, block), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(rows * block, -1)[:n]


# --------------------------------------------------------------------------------------------
# robust average and fill


def robust_texel_average(pos: np.ndarray, rgb: np.ndarray, weight: np.ndarray, n: int,
                         reject: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robust weighted average of colour samples per texel (module doc, step 3).

    Reference colour per texel: the sample at the weighted median of luminance; samples whose
    colour differs from it by more than ``reject`` (max over channels, [0,1] units) are
    rejected; result: the weighted mean of the rest (the reference itself always survives).

    Args:
        pos: (M,) int texel index of each sample, in [0, n).
        rgb: (M,3) uint8 sample colours.
        weight: (M,) float positive sample weights.
        n: number of texels.
        reject: rejection threshold in [0,1] colour units.
    Returns:
        ``mean (n,3) float32`` in 0..255 (0 where unseen), ``weight_sum (n,) float32`` of the
        inliers, ``count (n,) int32`` of the inliers.
    """
    pos = np.asarray(pos, dtype=np.intp)
    rgb = np.asarray(rgb, dtype=np.uint8)
    weight = np.asarray(weight, dtype=np.float32)
    mean = np.zeros((n, 3), np.float32)
    if pos.size == 0:
        return mean, np.zeros(n, np.float32), np.zeros(n, np.int32)
    M = len(pos)
    # sort by (texel, luma): one key, int32 while it fits (S <= ~2900); chunks bound memory
    key = np.empty(M, np.int32 if n * 256 < 2 ** 31 else np.int64)
    for a in range(0, M, _CHUNK):
        b = min(M, a + _CHUNK)
        key[a:b] = pos[a:b] * 256 + np.rint(rgb[a:b].astype(np.float32) @ _LUMA).astype(key.dtype)
    order = np.argsort(key)
    del key
    counts = np.bincount(pos, minlength=n)
    ends = np.cumsum(counts)
    seen = np.nonzero(counts)[0]
    starts = ends[seen] - counts[seen]
    cw = np.cumsum(weight[order], dtype=np.float64)
    before = np.where(starts > 0, cw[np.maximum(starts - 1, 0)], 0.0)
    wtot = cw[ends[seen] - 1] - before
    mid = np.searchsorted(cw, before + 0.5 * wtot, side="left")
    del cw
    mid = np.clip(mid, starts, ends[seen] - 1)
    ref = np.zeros((n, 3), np.int16)
    ref[seen] = rgb[order[mid]]
    del order
    inlier = np.empty(M, bool)
    for a in range(0, M, _CHUNK):
        b = min(M, a + _CHUNK)
        dev = np.abs(rgb[a:b].astype(np.int16) - ref[pos[a:b]]).max(axis=1)
        inlier[a:b] = dev <= reject * 255.0
    w_in = np.where(inlier, weight, np.float32(0))
    wsum = np.bincount(pos, weights=w_in, minlength=n)
    for c in range(3):
        acc = np.bincount(pos, weights=w_in * rgb[:, c], minlength=n)
        mean[:, c] = np.where(wsum > 0, acc / np.maximum(wsum, 1e-30), ref[:, c])
    count = np.bincount(pos[inlier], minlength=n)
    return mean, wsum.astype(np.float32), count.astype(np.int32)


def fill_unseen(rgb: np.ndarray, seen: np.ndarray, island: np.ndarray, radius: int | None = None,
                pad: int | None = None, neutral: np.ndarray | None = None) -> np.ndarray:
    """Fill the unseen texels of a UV atlas from their own island's seen texels.

    Per island (8-connected component of ``island``), ``cv2.inpaint`` (Telea) runs on the
    island's bounding box with only that island's seen texels known, and its result is kept on
    the island's unseen texels: colours never cross into another island. Islands with no seen
    texel get ``neutral``. Finally every texel outside the islands within ``pad`` texels of one
    takes the colour of the nearest island texel (protects bilinear lookups at borders); the
    rest stays 0.

    Args:
        rgb: (S,S,3) uint8 atlas; values at unseen texels are ignored.
        seen: (S,S) bool texels with a colour.
        island: (S,S) bool texels inside the UV islands.
        radius: Telea neighbourhood radius in texels (default ``max(3, S // 256)``).
        pad: outward dilation in texels (default ``max(2, S // 128)``).
        neutral: (3,) colour of never-seen islands (default: mean seen colour; grey 128 when
            nothing was seen).
    Returns:
        (S,S,3) uint8 filled atlas.
    """
    S = rgb.shape[0]
    radius = max(3, S // 256) if radius is None else int(radius)
    pad = max(2, S // 128) if pad is None else int(pad)
    seen = np.asarray(seen, bool) & np.asarray(island, bool)
    island = np.asarray(island, bool)
    if neutral is None:
        neutral = (np.rint(rgb[seen].reshape(-1, 3).mean(0)) if seen.any()
                   else np.full(3, 128.0))
    neutral = np.asarray(neutral, np.float64).round().clip(0, 255).astype(np.uint8)
    out = np.where(seen[..., None], rgb, 0).astype(np.uint8)
    n_lab, labels, boxes, _ = cv2.connectedComponentsWithStats(island.astype(np.uint8),
                                                               connectivity=8)
    for i in range(1, n_lab):
        x, y, w, h = (int(a) for a in boxes[i, :4])
        box = (slice(y, y + h), slice(x, x + w))
        lab = labels[box] == i
        known = lab & seen[box]
        todo = lab & ~seen[box]
        if not todo.any():
            continue
        crop = out[box]
        if not known.any():
            crop[todo] = neutral
            continue
        src = np.where(known[..., None], crop, 0).astype(np.uint8)
        filled = cv2.inpaint(src, (~known).astype(np.uint8), radius, cv2.INPAINT_TELEA)
        crop[todo] = filled[todo]
    if pad > 0 and island.any() and not island.all():
        from scipy.ndimage import distance_transform_edt

        d, (iy, ix) = distance_transform_edt(~island, return_indices=True)
        ring = (~island) & (d <= pad)
        out[ring] = out[iy[ring], ix[ring]]
    return out


# --------------------------------------------------------------------------------------------
# the core and the FittedSequence wrapper


@dataclass
class BakedTexture:
    """A texture baked from video frames.

    Attributes:
        rgb: (S,S,3) uint8 RGB atlas (texel row 0 = v 1), unseen texels filled.
        coverage: (S,S) float32 in [0,1]: inlier weight sum, clipped at 1 (1 = seen squarely
            at least once); 0 on unseen texels and outside the islands.
        count: (S,S) int32 inlier samples per texel.
        island: (S,S) bool texels inside the UV islands.
        stats: plain values (frames, texels, coverage fraction, seconds, ...).
    """

    rgb: np.ndarray
    coverage: np.ndarray
    count: np.ndarray
    island: np.ndarray
    stats: dict = field(default_factory=dict)

    @property
    def seen(self) -> np.ndarray:
        """(S,S) bool texels with at least one inlier sample."""
        return self.count > 0

    @property
    def coverage_fraction(self) -> float:
        """Fraction of the island texels seen at least once."""
        return float(self.seen[self.island].mean()) if self.island.any() else 0.0


def backproject(views: Iterable[tuple], faces: torch.Tensor, uv_corners: torch.Tensor,
                K: np.ndarray, size: int, dist: np.ndarray | None = None, backend: str = "auto",
                normal_power: float = 2.0, depth_tol: float = 0.01, min_cos: float = 0.05,
                mask_erode: int = 2, reject: float = 0.1, fill: bool = True,
                raster: UVRaster | None = None, total: int | None = None) -> BakedTexture:
    """Bake a texture from posed meshes and the images that saw them (module doc, steps 1-4).

    Args:
        views: iterable of ``(verts (V,3) camera metres, image (H,W,3) uint8 RGB, mask (H,W)
            uint8 0..255 / bool / None)``, one per frame.
        faces: (F,3) int64 vertex indices.
        uv_corners: (F,3,2) UV of each face corner in [0,1] (v up).
        K: (3,3) intrinsics (pixels) shared by the views.
        size: S, texels per side of the atlas.
        dist: OpenCV distortion coefficients of the images (None = pinhole).
        backend: rasterizer backend.
        normal_power, depth_tol, min_cos, mask_erode: see :class:`TexelSampler`.
        reject: outlier threshold of :func:`robust_texel_average` ([0,1] colour units).
        fill: fill unseen texels (:func:`fill_unseen`); False leaves them 0.
        raster: a precomputed :func:`rasterize_uv` of ``uv_corners`` at ``size``.
        total: number of views (progress bar only).
    Returns:
        :class:`BakedTexture` (``stats``: frames, samples, rejected fraction, texels, seconds).
    Raises:
        TextureError: no view gave a single sample (nothing visible inside the masks).
    """
    t0 = time.time()
    raster = raster or rasterize_uv(uv_corners, size, backend=backend)
    sampler = TexelSampler(raster, faces, backend, normal_power, depth_tol, min_cos, mask_erode)
    parts_pos, parts_rgb, parts_w = [], [], []
    n_views = 0
    t_sample = 0.0
    with progress() as bar:
        task = bar.add_task("texture bake", total=total, info="")
        for view in views:
            verts, image, mask = view
            ts = time.time()
            pos, rgb, w = sampler.sample(verts, K, image, mask, dist)
            t_sample += time.time() - ts
            parts_pos.append(pos)
            parts_rgb.append(rgb)
            parts_w.append(w)
            n_views += 1
            bar.advance(task)
    n_samples = int(sum(len(p) for p in parts_pos))
    if n_samples == 0:
        raise TextureError(f"texture bake: none of the {n_views} frames saw the body inside the "
                           "person mask; check the capture's overlay video and masks")
    pos = np.concatenate(parts_pos)
    rgb = np.concatenate(parts_rgb)
    w = np.concatenate(parts_w)
    del parts_pos, parts_rgb, parts_w
    N, S = raster.num_texels, raster.size
    t1 = time.time()
    mean, wsum, count = robust_texel_average(pos, rgb, w, N, reject)
    t_average = time.time() - t1
    n_inliers = int(count.sum())
    del pos, rgb, w
    flat_rgb = np.zeros((S * S, 3), np.uint8)
    flat_rgb[raster.texels] = np.rint(mean).clip(0, 255).astype(np.uint8)
    cov = np.zeros(S * S, np.float32)
    cov[raster.texels] = np.minimum(wsum, 1.0)
    cnt = np.zeros(S * S, np.int32)
    cnt[raster.texels] = count
    cnt = cnt.reshape(S, S)
    island = raster.island
    atlas = flat_rgb.reshape(S, S, 3)
    t2 = time.time()
    if fill:
        atlas = fill_unseen(atlas, cnt > 0, island)
    t_fill = time.time() - t2
    seen_n = int((cnt > 0).sum())
    stats = {"size": S, "frames": n_views, "samples": n_samples,
             "rejected_fraction": round(1.0 - n_inliers / n_samples, 4),
             "island_texels": N, "seen_texels": seen_n,
             "coverage_fraction": round(seen_n / max(N, 1), 4),
             "mean_weight_seen": round(float(wsum[count > 0].mean()) if seen_n else 0.0, 4),
             "options": {"normal_power": normal_power, "depth_tol": depth_tol,
                         "min_cos": min_cos, "mask_erode": mask_erode, "reject": reject},
             "seconds": round(time.time() - t0, 2),
             "seconds_parts": {"sampling": round(t_sample, 2), "average": round(t_average, 2),
                               "fill": round(t_fill, 2)}}
    return BakedTexture(rgb=atlas, coverage=cov.reshape(S, S), count=cnt, island=island,
                        stats=stats)


def default_training_frames(seq, val_fraction: float = 0.1) -> np.ndarray:
    """Training frames of ``seq`` by the default split, before any run has decided one: the
    ``tail`` split's (:func:`ram_avatar.io.split.tail_split`: valid frames outside the last
    ``val_fraction``). Returns (n,) int64 frame indices."""
    return tail_split(seq.valid, val_fraction).train.astype(np.int64)


def evenly_spaced(frames: np.ndarray, max_frames: int) -> np.ndarray:
    """At most ``max_frames`` of ``frames`` (sorted, unique), evenly spaced over the list."""
    frames = np.unique(np.asarray(frames, dtype=np.int64))
    if max_frames <= 0 or len(frames) <= max_frames:
        return frames
    return frames[np.unique(np.rint(np.linspace(0, len(frames) - 1, max_frames)).astype(np.int64))]


def bake_texture(seq, frames=None, size: int = 1024, backend: str = "auto",
                 max_frames: int = 120, body=None, **options) -> BakedTexture:
    """Bake the subject's appearance from a captured sequence into the body's UV atlas.

    Args:
        seq: a saved :class:`~ram_avatar.io.sequence.FittedSequence` (reads its source video,
            person masks, fitted parameters and camera K / dist).
        frames: candidate frame indices (pass the training split); None: the default training
            frames (:func:`default_training_frames`). Invalid frames are dropped.
        size: S, texels per side.
        backend: rasterizer backend.
        max_frames: at most this many frames, evenly spaced over ``frames``, are used.
        body: the subject's body model (loaded from the manifest when None).
        **options: ``normal_power``, ``depth_tol``, ``min_cos``, ``mask_erode``, ``reject``
            (:func:`backproject`).
    Returns:
        :class:`BakedTexture`; ``stats`` adds ``source_frames`` (the candidates) and
        ``frames_used``.
    Raises:
        TextureError: no usable frame (empty or out-of-range indices, nothing visible).
        SequenceFormatError: masks missing or of the wrong shape.
    """
    from ram_avatar.body import load_body_model
    from ram_avatar.io.video import iter_frames

    t0 = time.time()
    if seq.root is None:
        raise TextureError("texture bake needs a saved sequence (its source video and masks)")
    T = seq.num_frames
    cand = default_training_frames(seq) if frames is None else np.asarray(frames, np.int64).ravel()
    if cand.size and (cand.min() < 0 or cand.max() >= T):
        raise TextureError(f"texture bake: frame indices must lie in [0, {T}), got "
                           f"[{cand.min()}, {cand.max()}]")
    cand = cand[np.asarray(seq.valid, bool)[cand]] if cand.size else cand
    used = evenly_spaced(cand, max_frames)
    if used.size == 0:
        raise TextureError("texture bake: no valid training frame to bake from; re-run capture "
                           "or pass frames")
    if body is None:
        bm = seq.manifest["body_model"]
        body = load_body_model(bm["name"], model_path=bm.get("model_path"))
    with seq.load_masks() as masks_all:  # only the frames used are read
        masks = masks_all[used]
    with torch.no_grad():
        verts = torch.cat([body(seq.params.index(torch.as_tensor(used[c:c + 16])).to(body.device))
                           .vertices.cpu() for c in range(0, len(used), 16)])
    faces = body.faces.cpu()
    uv_corners = body.uv_coords[body.uv_faces].cpu()
    dist = np.asarray(seq.manifest["camera"].get("dist", np.zeros(5)), np.float64)
    start = int(seq.manifest["source"]["start"])
    row = {int(t): i for i, t in enumerate(used)}

    def views():
        last = start + int(used[-1]) + 1
        for t, image in enumerate(iter_frames(seq.source_video(), start, last)):
            i = row.get(t)
            if i is not None:
                yield verts[i], image, masks[i]

    baked = backproject(views(), faces, uv_corners, seq.K, size, dist=dist, backend=backend,
                        total=len(used), **options)
    baked.stats.update(source_frames=[int(t) for t in cand], frames_used=[int(t) for t in used],
                       body_model=seq.manifest["body_model"]["name"],
                       seconds_total=round(time.time() - t0, 2))
    log.info("texture baked from %d frames at %d^2: %.1f %% of the UV islands seen, %.1f s",
             len(used), size, 100 * baked.coverage_fraction, baked.stats["seconds_total"])
    return baked


# --------------------------------------------------------------------------------------------
# files


def write_texture(seq_dir, baked: BakedTexture) -> Path:
    """Write ``texture.png`` (RGB), ``texture_coverage.png`` (grey, 255 = fully seen) and
    ``texture.json`` (``baked.stats``) atomically into the sequence directory.

    Args:
        seq_dir: the ``sequence`` directory (or the subject directory containing it).
        baked: the texture.
    Returns:
        Path of ``texture.png``.
    Raises:
        TextureError: OpenCV could not encode a PNG.
    """
    root = sequence_root(seq_dir)
    coverage = np.rint(baked.coverage * 255).clip(0, 255).astype(np.uint8)
    for name, img in ((TEXTURE, cv2.cvtColor(baked.rgb, cv2.COLOR_RGB2BGR)),
                      (TEXTURE_COVERAGE, coverage)):
        with atomic_path(root / name) as tmp:
            if not cv2.imwrite(str(tmp), img):
                raise TextureError(f"could not write {root / name}")
    atomic_write_text(root / TEXTURE_INFO, json.dumps(baked.stats, indent=1))
    return root / TEXTURE


def texture_tensor(rgb: np.ndarray, size: int | None = None) -> torch.Tensor:
    """(S,S,3) uint8 atlas -> ``(1,3,size,size)`` float32 in [0,1] (cv2.INTER_AREA when
    shrinking, bilinear when enlarging; ``size`` None keeps S)."""
    if size is not None and int(size) != rgb.shape[0]:
        interp = cv2.INTER_AREA if int(size) < rgb.shape[0] else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (int(size), int(size)), interpolation=interp)
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0


def load_texture(seq_dir, size: int | None = None) -> torch.Tensor:
    """Read ``sequence/texture.png`` as a ``(1,3,size,size)`` float tensor in [0,1].

    Args:
        seq_dir: the ``sequence`` directory (or the subject directory containing it).
        size: output side (resized with cv2.INTER_AREA); None keeps the file's size.
    Raises:
        TextureError: the file is missing, unreadable or not a square RGB image.
    """
    path = sequence_root(seq_dir) / TEXTURE
    if not path.is_file():
        raise TextureError(f"no baked texture at {path}; run `ram-avatar capture` again or bake "
                           "it with ram_avatar.render.texture_bake.ensure_texture")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None or img.ndim != 3 or img.shape[0] != img.shape[1]:
        raise TextureError(f"{path} is corrupt or not a square RGB image; delete it and it is "
                           "baked again from the video (ensure_texture)")
    return texture_tensor(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), size)


def bake_capture_texture(seq, body=None, size: int = 1024) -> float:
    """Capture's last step: bake the default training frames' texture into ``seq.root`` and
    log its coverage. A bake that finds nothing to sample (:class:`TextureError`) only logs a
    warning: training bakes again through :func:`ensure_texture`.

    Returns:
        Seconds spent.
    """
    t0 = time.time()
    try:
        baked = bake_texture(seq, body=body, size=size)
    except TextureError as e:
        log.warning("no texture baked: %s", e)
        return time.time() - t0
    write_texture(seq.root, baked)
    log.info("texture: %.1f %% of the UV islands seen in %d training frames -> %s",
             100 * baked.coverage_fraction, baked.stats["frames"], "sequence/" + TEXTURE)
    return time.time() - t0


def ensure_texture(seq, frames=None, size: int | None = None, body=None, bake_size: int = 1024,
                   **bake_options) -> torch.Tensor:
    """The subject's baked texture as a ``(1,3,size,size)`` float tensor in [0,1], baking (and
    writing) it first when the files are missing or were baked from other candidate frames
    (so held-out frames never leak in when the split changes).

    Args:
        seq: saved FittedSequence.
        frames: training frame indices (None: :func:`default_training_frames`).
        size: output side (the renderer's ``texture_size``); None keeps the file's size.
        body: body model (avoids loading it again when baking).
        bake_size: atlas side of a new bake.
        **bake_options: forwarded to :func:`bake_texture`.
    Raises:
        TextureError: see :func:`bake_texture` / :func:`load_texture`.
    """
    if seq.root is None:
        raise TextureError("ensure_texture needs a saved sequence (seq.root is None)")
    root = Path(seq.root)
    want = (default_training_frames(seq) if frames is None
            else np.asarray(frames, np.int64).ravel())
    want = sorted(int(t) for t in want)
    if (root / TEXTURE).is_file():
        try:
            info = json.loads((root / TEXTURE_INFO).read_text())
        except (OSError, ValueError):
            info = None
        recorded = None if info is None else info.get("source_frames")
        if recorded is None or sorted(recorded) == want:
            return load_texture(root, size)
        log.info("baked texture %s came from other frames than the training split: baking "
                 "again", root / TEXTURE)
    baked = bake_texture(seq, np.asarray(want, np.int64), size=bake_size, body=body,
                         **bake_options)
    try:
        write_texture(root, baked)
    except OSError as e:
        log.warning("could not write the baked texture into %s (%s); using it in memory", root, e)
    return texture_tensor(baked.rgb, size)
