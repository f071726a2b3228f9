"""Conditioning maps of RAM-Avatar (Sec. 4.1): what the neural renderer sees for one frame.

From a posed body and a camera we render, at the renderer's resolution S:

- ``uv`` (B, 2, S, S): texture coordinates of the visible body surface (0 on background); the
  renderer samples its learnable neural texture there (the body map F_body).
- ``body_mask`` (B, 1, S, S): 1 where the body mesh covers the pixel.
- ``hand`` (B, 5, S, S): one channel per finger, skeleton lines of the posed body's projected
  finger joints (DESIGN.md, "Hands").
- ``face`` (B, 3, S, S): the tracked face mesh (MediaPipe 478 landmarks) expressed in head-local
  coordinates and re-posed on the body's head, drawn as contour lines (DESIGN.md, "Face
  template"), so the face follows the avatar's head under any pose.

Optional maps of the full renderer (only when asked for, :meth:`ConditioningRenderer.render`):

- ``uv_expanded`` (B, 2, S, S), ``body_mask_expanded`` (B, 1, S, S): the same body rendered a
  second time with every vertex pushed ``expand_offset`` metres along its (outward, area
  weighted) vertex normal: the expanded mesh of the dual attention's spatial part (Sec. 3.2),
  which also covers pixels just outside the template (loose clothes, hair).
- ``canon`` (B, 3, S, S): the canonical (rest-pose) position of the surface point seen by each
  pixel, normalised to [-1, 1]^3 by the rest mesh's bounding box (centre, largest half extent
  x 1.05), 0 on background; the triplane body features are sampled there. ``canon_expanded``:
  the same for the expanded mesh.
- ``hand_boxes`` (B, 2, 4) [x0, y0, x1, y1] pixels of the projected hand joints (left, right)
  is always returned (cheap), for the hand perceptual loss's crops.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ram_avatar.body.base import BodyModel, BodyParams
from ram_avatar.render.maps import draw_face_map, draw_hand_map
from ram_avatar.render.rasterizer import rasterize_attribute


#: recently used vertex-face matrices: (faces, number of vertices, matrix)
_ADJACENCY: list[tuple[torch.Tensor, int, torch.Tensor]] = []


def _vertex_face_matrix(faces: torch.Tensor, num_vertices: int) -> torch.Tensor:
    """Sparse CSR ``(V,F)`` matrix with a 1 where vertex v is a corner of face f (cached by the
    faces' values): ``A @ x`` sums a per-face quantity onto the faces' corners."""
    f = faces.long()
    for cached, v, A in _ADJACENCY:
        if v == num_vertices and cached.shape == f.shape and cached.device == f.device \
                and torch.equal(cached, f):
            return A
    F = f.shape[0]
    rows = f.t().reshape(-1)                                       # corner k of every face
    cols = torch.arange(F, device=f.device).repeat(3)
    with warnings.catch_warnings():  # torch's notes that sparse CSR is in beta
        warnings.simplefilter("ignore", UserWarning)
        A = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(3 * F, device=f.device),
                                    (num_vertices, F)).coalesce().to_sparse_csr()
    _ADJACENCY.insert(0, (f.clone(), num_vertices, A))
    del _ADJACENCY[4:]
    return A


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals ``(B,V,3)`` of meshes ``verts (B,V,3)``, ``faces (F,3)``,
    oriented outward (flipped per mesh when most normals point towards the centroid).

    The face normals are summed onto the vertices by a cached sparse vertex-face matrix, and
    the corners gathered with one ``index_select`` (issue 13: 15.8 -> about 4 ms per Anny mesh
    on one CPU thread, the same normals within 3e-6; it runs once per live frame for the
    expanded mesh)."""
    f = faces.to(verts.device).long()
    B, V = verts.shape[:2]
    corners = verts.index_select(1, f.reshape(-1)).view(B, -1, 3, 3)    # (B,F,3 corners,3)
    v0, v1, v2 = corners.unbind(2)
    fn = torch.cross(v1 - v0, v2 - v0, dim=-1)                       # (B,F,3), |fn| = 2 area
    A = _vertex_face_matrix(f, V).to(fn.dtype)
    n = (A @ fn.permute(1, 0, 2).reshape(f.shape[0], B * 3)).reshape(V, B, 3).permute(1, 0, 2)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    centre = verts.mean(dim=1, keepdim=True)
    sign = torch.sign(((verts - centre) * n).sum(dim=(1, 2), keepdim=True))
    return n * torch.where(sign == 0, torch.ones_like(sign), sign)


def hand_boxes(hands_2d: torch.Tensor) -> torch.Tensor:
    """``(B,2,21,2)`` projected hand joints -> ``(B,2,4)`` boxes [x0, y0, x1, y1] pixels."""
    lo = hands_2d.amin(dim=2)
    hi = hands_2d.amax(dim=2)
    return torch.cat([lo, hi], dim=-1)


def project_points(points: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Pinhole projection (..., 3) camera metres -> (..., 2) pixels with K (3, 3)."""
    z = points[..., 2:3].clamp(min=1e-4)
    return (points[..., :2] / z) * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])


def crop_intrinsics(K: np.ndarray, crop: tuple[float, float, float], size: int) -> np.ndarray:
    """Intrinsics of a square crop ``(x0, y0, side)`` (pixels) resized to ``size`` x ``size``."""
    x0, y0, side = crop
    Kc = np.array(K, dtype=np.float64).copy()
    Kc[0, 2] -= x0
    Kc[1, 2] -= y0
    Kc[:2] *= size / side
    return Kc


def face_to_head_local(face_px: np.ndarray, head_T: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Lift MediaPipe face landmarks to 3D and express them in the head's local frame.

    The landmark depth is MediaPipe's relative z (pixel units) around the head joint's depth:
    Z_i = Z_head + z_i * Z_head / f, X_i = (u_i - cx) Z_i / fx, Y_i = (v_i - cy) Z_i / fy.

    Args:
        face_px: (T, 478, 3) [u, v, z_px].
        head_T: (T, 4, 4) world (camera) transform of the fitted head.
        K: (3, 3) intrinsics.
    Returns:
        (T, 478, 3) head-local coordinates, metres.
    """
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    zh = head_T[:, 2, 3][:, None]
    Z = zh + face_px[..., 2] * zh / fx
    X = (face_px[..., 0] - cx) * Z / fx
    Y = (face_px[..., 1] - cy) * Z / fy
    P = np.stack([X, Y, Z], -1)
    R, t = head_T[:, :3, :3], head_T[:, :3, 3]
    return np.einsum("tji,tnj->tni", R, P - t[:, None])  # R^T (P - t)


def fill_invalid(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Replace frames where ``valid`` is False by the nearest valid frame's values ((T, ...)).

    When no frame is valid the input is returned unchanged.
    """
    if valid.all() or not valid.any():
        return values
    idx = np.nonzero(valid)[0]
    nearest = idx[np.abs(np.arange(len(valid))[:, None] - idx[None]).argmin(1)]
    return values[nearest]


class ConditioningRenderer:
    """Renders the conditioning maps of posed bodies (module docstring).

    Args:
        body: the subject's body model.
        backend: rasterizer backend (``auto``, ``torch``, ``moderngl``).
    """

    def __init__(self, body: BodyModel, backend: str = "auto"):
        self.body = body
        self.backend = backend
        self.uv_corners = body.uv_coords[body.uv_faces]  # (F, 3, 2)
        self._canon_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def canonical_vertices(self, betas: torch.Tensor) -> torch.Tensor:
        """Rest-pose vertices of ``betas (1,n)`` normalised to [-1,1]^3 (bounding box centre,
        largest half extent x 1.05): ``(1,V,3)``. Cached per betas."""
        betas = betas[:1].to(self.body.device)
        if self._canon_cache is not None and torch.equal(self._canon_cache[0], betas):
            return self._canon_cache[1]
        rest = self.body.posed_vertices_rest(betas)
        lo, hi = rest.amin(dim=1, keepdim=True), rest.amax(dim=1, keepdim=True)
        centre, half = (lo + hi) / 2, ((hi - lo) / 2).amax() * 1.05
        canon = (rest - centre) / half
        self._canon_cache = (betas.clone(), canon)
        return canon

    @torch.no_grad()
    def render(self, params: BodyParams, face_local: np.ndarray | torch.Tensor | None,
               K: np.ndarray, size: int, face_valid: np.ndarray | None = None,
               expand_offset: float | None = None,
               canonical: bool = False) -> dict[str, torch.Tensor]:
        """Render the maps of a batch of B poses.

        Args:
            params: BodyParams of batch B (betas (1, n) broadcast).
            face_local: (B, 478, 3) head-local face landmarks, or None (empty face map).
            K: (3, 3) intrinsics of the S x S output (see :func:`crop_intrinsics`).
            size: S, output resolution in pixels.
            face_valid: (B,) bool; frames without a face draw an empty face map.
            expand_offset: when given (metres), also render the expanded mesh: ``uv_expanded``,
                ``body_mask_expanded`` (and ``canon_expanded`` with ``canonical``).
            canonical: also render ``canon`` (canonical positions, triplane features).
        Returns:
            dict ``uv`` (B,2,S,S), ``body_mask`` (B,1,S,S), ``hand`` (B,5,S,S), ``face`` (B,3,S,S),
            float32 on CPU, plus ``hands_2d`` (B,2,21,2) and ``face_2d`` (B,478,2) pixels,
            ``hand_boxes`` (B,2,4) and the optional maps asked for (module docstring).
        """
        device = self.body.device
        Kt = torch.as_tensor(K, dtype=torch.float32, device=device)
        out = self.body(params.to(device), return_vertices=True)
        B = out.vertices.shape[0]
        uv_corners = self.uv_corners.to(device)
        faces = self.body.faces
        # the UVs straight from the rasterizer (with moderngl, GL interpolates them: no face
        # ids and barycentrics read back and gathered in Python); the expanded mesh, when asked
        # for, is drawn in the same call as B more items (one validation and one upload of the
        # UV corners instead of two)
        verts_e = None
        drawn = out.vertices
        if expand_offset is not None:
            verts_e = out.vertices + float(expand_offset) * vertex_normals(out.vertices, faces)
            drawn = torch.cat([out.vertices, verts_e])
        uv, covered = rasterize_attribute(drawn, faces, Kt, (size, size), uv_corners,
                                          backend=self.backend)               # (B,S,S,2)
        uv_e, covered_e = uv[B:], covered[B:]
        uv, covered = uv[:B], covered[:B]
        mask = covered.float()[:, None]
        thick = max(1, size // 128)
        hands_2d = project_points(out.hand_landmarks, Kt)                    # (B,2,21,2)
        hand = draw_hand_map(hands_2d.cpu(), torch.ones(B, 2, dtype=torch.bool), (size, size), thick)
        if face_local is not None:
            fl = torch.as_tensor(np.asarray(face_local), dtype=torch.float32, device=device)
            H = out.head_transform
            fw = torch.einsum("bij,bnj->bni", H[:, :3, :3], fl) + H[:, None, :3, 3]
            face_2d = project_points(fw, Kt)
            fv = np.ones(B, bool) if face_valid is None else np.asarray(face_valid, bool)
            face = draw_face_map(face_2d.cpu(), fv, (size, size), max(1, size // 256))
        else:
            face_2d = torch.zeros(B, 478, 2)
            face = torch.zeros(B, 3, size, size)
        res = {"uv": uv.permute(0, 3, 1, 2).contiguous().cpu(), "body_mask": mask.cpu(),
               "hand": hand.cpu(), "face": face.cpu(), "hands_2d": hands_2d.cpu(),
               "face_2d": face_2d.cpu(), "vertices": out.vertices.cpu(),
               "hand_boxes": hand_boxes(hands_2d).cpu()}
        canon_c = None
        if canonical:  # canonical positions per face corner (shared by the batch)
            canon_c = self.canonical_vertices(params.betas)[0][faces.long()]     # (F,3,3)
            canon, _ = rasterize_attribute(out.vertices, faces, Kt, (size, size), canon_c,
                                           backend=self.backend)
            res["canon"] = canon.permute(0, 3, 1, 2).contiguous().cpu()
        if verts_e is not None:
            res["uv_expanded"] = uv_e.permute(0, 3, 1, 2).contiguous().cpu()
            res["body_mask_expanded"] = covered_e.float()[:, None].cpu()
            if canon_c is not None:
                ce, _ = rasterize_attribute(verts_e, faces, Kt, (size, size), canon_c,
                                            backend=self.backend)
                res["canon_expanded"] = ce.permute(0, 3, 1, 2).contiguous().cpu()
        return res
