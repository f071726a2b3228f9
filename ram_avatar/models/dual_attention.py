"""Sparsely computed dual attention of RAM-Avatar (Sec. 3.2): criss-cross attention with a
distance prior, spatial (expanded mesh) and temporal (previous frame) parts.

The body feature map ``F`` (neural texture or triplane sampled at the rendered body, ``C``
channels at ``H x W``) is brought to a reduced ``H1 x W1 = H/2^k x W/2^k`` by ``k`` stride-2
convolutions (released code: two, 1024^2 -> 256^2), shared by all inputs. Then, for each part:

* **spatial**: queries from the features ``F_e`` of the *expanded* mesh (the body rendered a
  second time with its vertices pushed out along their normals), keys and values from ``F``;
* **temporal**: queries from the features of the *previous frame's* body map, keys and values
  from ``F``.

Criss-cross attention (CCNet, Huang et al. 2019) lets every cell ``u`` attend over the
``H1 + W1 - 1`` cells of its own row and column. Scores are ``e(u, i) = d(u, i) * <Q_u, K_i>``
with the distance prior ``d(u, i) = 1 / (|u - i|^0.8 + 1)`` (``|u - i|`` counted in cells along
the shared row or column, as in the released code, which multiplies the scores by it), a
softmax over the ``H1 + W1 - 1`` cells, and ``out_u = alpha * sum_i a(u, i) V_i + x_u`` with a
learned ``alpha`` initialised to 0 (so the module starts as the identity/skip connection). It is
applied ``recurrence`` times (2; same weights, queries fixed, keys/values from the previous
pass) so that information reaches every cell. Each part has its own 3x3 conv back to ``C``
channels; the parts are summed at ``H1 x W1`` and the sum is upsampled bilinearly to ``H x W``
(equal to summing the upsampled parts, since the upsampling is linear). (The released code
upsamples first and convolves at full resolution: 96 -> 48 channels at 1024^2, about 85 GFLOPs
per part; convolving at ``H1 x W1`` costs 16x less, and the full-resolution conv would only
see a bilinear upsampling of ``H1 x W1`` content anyway.)

Output: with ``residual=True`` (default) ``F + sum_parts``, which keeps the full-resolution body
features and makes "no attention" (both parts ablated) exactly the plain body map; with
``residual=False`` only ``sum_parts`` as in the released code (whose sum replaces the body map).

Three implementations of the criss-cross aggregation, all pure torch:

* :func:`criss_cross_reference`: gathers the ``H1 + W1 - 1`` cells of every position explicitly
  (obviously correct, memory ``O(B C H W (H + W))``; for tests);
* :func:`criss_cross_dense`: dense ``HW x HW`` attention with a same-row-or-column mask (for
  tests);
* :func:`criss_cross_attention`: the efficient one (``impl="einsum"``, the name kept for
  saved configs), four contractions over rows and columns written as batched matmuls of
  permuted views, no gather; exports to ONNX (MatMul) with a dynamic batch. As MatMul the
  whole ``cpu-256`` render in ONNX Runtime took 112.9 ms against 119.5 ms as Einsum (256^2,
  1 thread, 30 interleaved runs).

The released code forgets to give this module to any optimiser; here it is an ordinary
submodule of the renderer and trains with the generator (see ``training.trainer``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ram_avatar.models.styleunet import ConvLayer

__all__ = ["distance_weights", "criss_cross_attention", "criss_cross_reference",
           "criss_cross_dense", "CrissCrossAttention", "DualAttention"]


def distance_weights(n: int, power: float = 0.8, device=None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``d[i, j] = 1 / (|i - j|^power + 1)`` as an ``(n, n)`` tensor (1 on the diagonal)."""
    idx = torch.arange(n, device=device, dtype=torch.float64)
    dist = (idx[:, None] - idx[None, :]).abs()
    return (1.0 / (dist.pow(power) + 1.0)).to(dtype)


def criss_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          power: float = 0.8) -> torch.Tensor:
    """Criss-cross attention with the distance prior, efficient form (contractions over
    rows/columns as batched matmuls).

    Args:
        q: queries ``(B,Cq,H,W)``.
        k: keys ``(B,Cq,H,W)``.
        v: values ``(B,C,H,W)``.
        power: exponent of the distance prior ``1 / (|i-u|^power + 1)``.

    Returns:
        ``(B,C,H,W)``: for each cell, the softmax-weighted sum of the values of the
        ``H + W - 1`` cells in its row and column (the cell itself counted once).
    """
    B, _, H, W = q.shape
    # column part: cells (g, w) of the same column, g != h; row part: cells (h, x), all x.
    # Each part stays in its own layout, batched over columns (B,W,H,G) or rows (B,H,W,X):
    # e_col[b,w,h,g] = sum_c q[b,c,h,w] k[b,c,g,w] and e_row[b,h,w,x] = sum_c q[b,c,h,w]
    # k[b,c,h,x], exported as MatMul (ONNX Runtime runs it faster than Einsum)
    e_col = torch.matmul(q.permute(0, 3, 2, 1), k.permute(0, 3, 1, 2))    # (B,W,H,G)
    e_row = torch.matmul(q.permute(0, 2, 3, 1), k.permute(0, 2, 1, 3))    # (B,H,W,X)
    e_col = e_col * distance_weights(H, power, q.device, e_col.dtype)[None, None]
    e_row = e_row * distance_weights(W, power, q.device, e_row.dtype)[None, None]
    idx = torch.arange(H, device=q.device)
    self_cell = (idx[:, None] == idx[None, :])[None, None]  # (no EyeLike: ORT lacks bool)
    e_col = e_col.masked_fill(self_cell, float("-inf"))
    if e_col.dtype in (torch.float16, torch.bfloat16):  # AMP: softmax in float32
        e_col, e_row = e_col.float(), e_row.float()
    # one softmax over the H - 1 + W cells of each position, without bringing the two parts
    # into one layout: the common max and the common sum are (B,H,W) maps, and the weighted
    # values are normalised after the products (C numbers per cell instead of H + W). This
    # replaces two (B,H,W,H) transposes of the column scores, their concatenation with the
    # row scores and the split of the weights (paper-1024: the largest tensors of the render)
    m = torch.maximum(e_col.amax(dim=-1).transpose(1, 2), e_row.amax(dim=-1))    # (B,H,W)
    p_col = torch.exp(e_col - m.transpose(1, 2).unsqueeze(-1))                    # (B,W,H,G)
    p_row = torch.exp(e_row - m.unsqueeze(-1))                                    # (B,H,W,X)
    inv = 1.0 / (p_col.sum(dim=-1).transpose(1, 2) + p_row.sum(dim=-1))         # (B,H,W)
    # out[b,c,h,w] = (sum_g p_col[b,w,h,g] v[b,c,g,w] + sum_x p_row[b,h,w,x] v[b,c,h,x]) * inv
    o_col = torch.matmul(p_col.to(v.dtype), v.permute(0, 3, 2, 1))               # (B,W,H,C)
    o_row = torch.matmul(p_row.to(v.dtype), v.permute(0, 2, 3, 1))               # (B,H,W,C)
    o_col = o_col * inv.transpose(1, 2).unsqueeze(-1).to(v.dtype)
    o_row = o_row * inv.unsqueeze(-1).to(v.dtype)
    return o_col.permute(0, 3, 2, 1) + o_row.permute(0, 3, 1, 2)


def _criss_cross_cells(H: int, W: int, device=None):
    """Indices ``(H,W,L)`` (row, column) and distances of the ``L = H + W - 1`` cells of each
    position: its column without itself, then its whole row."""
    hs = torch.arange(H, device=device)
    ws = torch.arange(W, device=device)
    rows, cols, dist = [], [], []
    for h in range(H):
        col_rows = torch.cat([hs[:h], hs[h + 1:]])               # (H-1,)
        r = torch.cat([col_rows, torch.full((W,), h, device=device)])
        rows.append(r[None].expand(W, -1))                           # (W, L)
        c = torch.cat([ws[:, None].expand(W, H - 1), ws[None].expand(W, W)], dim=1)
        cols.append(c)
        dcol = (col_rows - h).abs().float()[None].expand(W, -1)
        drow = (ws[None, :] - ws[:, None]).abs().float()
        dist.append(torch.cat([dcol, drow], dim=1))
    return torch.stack(rows), torch.stack(cols), torch.stack(dist)


def criss_cross_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          power: float = 0.8) -> torch.Tensor:
    """Reference criss-cross attention: gathers every cell's ``H + W - 1`` neighbours explicitly.

    Same contract as :func:`criss_cross_attention`; memory ``O(B C H W (H+W))``, for tests.
    """
    B, _, H, W = q.shape
    rows, cols, dist = _criss_cross_cells(H, W, q.device)
    kg = k[:, :, rows, cols]                                 # (B,Cq,H,W,L)
    vg = v[:, :, rows, cols]                                 # (B,C,H,W,L)
    scores = (q[..., None] * kg).sum(dim=1)                  # (B,H,W,L)
    scores = scores / (dist.to(scores.dtype).pow(power) + 1.0)
    att = torch.softmax(scores, dim=-1)
    return (att[:, None] * vg).sum(dim=-1)


def criss_cross_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      power: float = 0.8) -> torch.Tensor:
    """Dense ``HW x HW`` attention masked to the same row or column (for tests).

    ``d(u, i)`` uses the row distance for cells of the same column and the column distance for
    cells of the same row (the cell itself: distance 0, weight 1).
    """
    B, Cq, H, W = q.shape
    n = H * W
    r = torch.arange(H, device=q.device).repeat_interleave(W).to(q.dtype)
    c = torch.arange(W, device=q.device).repeat(H).to(q.dtype)
    same_row = r[:, None] == r[None, :]
    same_col = c[:, None] == c[None, :]
    dist = torch.where(same_row, (c[:, None] - c[None, :]).abs(), (r[:, None] - r[None, :]).abs())
    weight = 1.0 / (dist.pow(power) + 1.0)
    scores = torch.einsum("bcu,bci->bui", q.reshape(B, Cq, n), k.reshape(B, Cq, n)) * weight
    scores = scores.masked_fill(~(same_row | same_col), float("-inf"))
    att = torch.softmax(scores, dim=-1)
    out = torch.einsum("bui,bci->bcu", att, v.reshape(B, v.shape[1], n))
    return out.reshape(B, v.shape[1], H, W)


_IMPLS = {"einsum": criss_cross_attention, "reference": criss_cross_reference,
          "dense": criss_cross_dense}


class CrissCrossAttention(nn.Module):
    """One criss-cross attention step with the distance prior and a learned, zero-initialised
    ``alpha`` on a skip connection (RAM-Avatar Sec. 3.2; CCNet).

    Args:
        channels: C, channels of ``x`` (keys/values source) and of the output.
        query_channels: C of ``y`` (queries source); default ``channels``.
        qk_channels: width of queries and keys (default ``max(1, channels // 8)`` as CCNet).
        distance_power: exponent of the distance prior.
        impl: ``einsum`` (efficient), ``reference`` or ``dense`` (tests).

    forward(x (B,C,H,W), y (B,Cy,H,W)) -> ``alpha * CCA(Q(y), K(x), V(x)) + x`` (B,C,H,W).
    """

    def __init__(self, channels: int, query_channels: int | None = None,
                 qk_channels: int | None = None, distance_power: float = 0.8,
                 impl: str = "einsum") -> None:
        super().__init__()
        if impl not in _IMPLS:
            raise ValueError(f"attention impl must be one of {sorted(_IMPLS)}, got {impl!r}")
        qk = qk_channels or max(1, channels // 8)
        self.query = nn.Conv2d(query_channels or channels, qk, 1)
        self.key = nn.Conv2d(channels, qk, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.alpha = nn.Parameter(torch.zeros(1))
        self.distance_power = float(distance_power)
        self.impl = impl

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = _IMPLS[self.impl](self.query(y), self.key(x), self.value(x), self.distance_power)
        return self.alpha * out + x


class _AttentionPart(nn.Module):
    """One part (spatial or temporal): recurrent criss-cross attention + its output conv."""

    def __init__(self, hidden: int, out_channels: int, qk_channels: int | None,
                 distance_power: float, recurrence: int, impl: str) -> None:
        super().__init__()
        self.cca = CrissCrossAttention(hidden, hidden, qk_channels, distance_power, impl)
        self.out = ConvLayer(hidden, out_channels, 3)
        self.recurrence = recurrence

    def forward(self, h: torch.Tensor, q_src: torch.Tensor) -> torch.Tensor:
        """``(B,hidden,H1,W1)`` features and query source -> ``(B,C,H1,W1)`` (not upsampled:
        :class:`DualAttention` upsamples the sum of its parts once)."""
        for _ in range(self.recurrence):
            h = self.cca(h, q_src)
        return self.out(h)  # at H1 x W1 (module docstring)


class DualAttention(nn.Module):
    """Spatial + temporal criss-cross attention on the body feature map (module docstring).

    Args:
        channels: C of the body feature map (48 in the paper).
        hidden: channels at the reduced resolution (released code: 96).
        qk_channels: query/key width (default ``hidden // 8``).
        downsample: number of stride-2 convolutions (2: 1024^2 -> 256^2).
        recurrence: criss-cross passes (2).
        distance_power: exponent of the distance prior (0.8).
        spatial: build the spatial part (queries from the expanded mesh's features).
        temporal: build the temporal part (queries from the previous frame's features).
        residual: return ``F + parts`` (True) or only ``parts`` (released code).
        impl: criss-cross implementation (``einsum``, ``reference``, ``dense``).

    forward(f, f_expanded, f_prev), each ``(B,C,H,W)`` with H, W divisible by ``2^downsample``
    -> ``(B,C,H,W)``. ``f_expanded`` / ``f_prev`` are ignored when their part is disabled.

    Raises:
        ValueError: both parts disabled (then do not build the module), bad sizes.
    """

    def __init__(self, channels: int, hidden: int = 96, qk_channels: int | None = None,
                 downsample: int = 2, recurrence: int = 2, distance_power: float = 0.8,
                 spatial: bool = True, temporal: bool = True, residual: bool = True,
                 impl: str = "einsum") -> None:
        super().__init__()
        if not (spatial or temporal):
            raise ValueError("DualAttention needs the spatial or the temporal part")
        if downsample < 0 or recurrence < 1:
            raise ValueError(f"bad attention sizes: downsample {downsample}, "
                             f"recurrence {recurrence}")
        layers = []
        c_in = channels
        for _ in range(downsample):
            layers.append(ConvLayer(c_in, hidden, 3, stride=2))
            c_in = hidden
        if downsample == 0:
            layers.append(ConvLayer(channels, hidden, 1))
        self.down = nn.Sequential(*layers)
        self.scale = 2 ** downsample
        self.residual = residual
        make = lambda: _AttentionPart(hidden, channels, qk_channels, distance_power,  # noqa: E731
                                      recurrence, impl)
        self.spatial = make() if spatial else None
        self.temporal = make() if temporal else None

    def forward(self, f: torch.Tensor, f_expanded: torch.Tensor | None = None,
                f_prev: torch.Tensor | None = None) -> torch.Tensor:
        srcs, rows = [f], {}
        for part, x in (("spatial", f_expanded), ("temporal", f_prev)):
            if getattr(self, part) is not None and x is not None:
                rows[part] = len(srcs)
                srcs.append(x)
        return self.forward_stacked(torch.cat(srcs) if len(srcs) > 1 else f, f.shape[0], rows)

    def forward_stacked(self, stacked: torch.Tensor, batch: int,
                        rows: dict[str, int]) -> torch.Tensor:
        """:meth:`forward` on the feature maps stacked on the batch axis, as the renderer
        samples them in one pass: ``stacked (n*B,C,H,W)`` holds ``F`` in block 0 and each
        part's query source in block ``rows[part]`` (a part without a row takes its queries
        from ``F``). The shared stride-2 convolutions run once on the whole stack and it is
        split at ``H1 x W1`` (16x smaller than splitting the full-resolution features).

        Returns:
            ``(B,C,H,W)``, as :meth:`forward`.
        """
        d = self.down(stacked)
        # equal blocks (a Split into n outputs keeps the batch axis dynamic in ONNX)
        blocks = d.chunk(1 + max(rows.values())) if rows else (d,)
        h = blocks[0]
        out = None
        for part in ("spatial", "temporal"):
            module = getattr(self, part)
            if module is not None:
                o = module(h, blocks[rows[part]] if part in rows else h)
                out = o if out is None else out + o
        # the parts are summed at H1 x W1 and upsampled once: bilinear upsampling is linear, so
        # this equals the sum of the upsampled parts, with one Resize and one small Add instead
        # of two Resizes and a full-resolution Add (issue 13: about -5 ms of the cpu-256 render)
        if self.scale > 1:
            out = F.interpolate(out, scale_factor=float(self.scale), mode="bilinear",
                                align_corners=False)
        if not self.residual:
            return out
        return (stacked[:batch] if rows else stacked) + out


def attention_flops(batch: int, height: int, width: int, qk_channels: int, channels: int) -> int:
    """Multiply-adds x2 of one efficient criss-cross pass (scores + aggregation), for reports."""
    cells = height * width * (height + width)
    return int(2 * batch * cells * (qk_channels + channels))

