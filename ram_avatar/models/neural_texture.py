"""Learnable neural texture sampled at rasterised UV coordinates.

RAM-Avatar (Sec. 4.1) conditions the generator on a body neural texture of 1024x1024x48
sampled at the UV coordinates of the rendered template. This module holds the texture as a
learnable tensor ``(1, C, S, S)``, optionally as a multi-resolution Laplacian pyramid (a sum of
textures at S, S/2, S/4, ... each sampled bilinearly, as in Deferred Neural Rendering), which
lets coarse levels learn quickly from few pixels while fine levels add detail.

The pyramid is collapsed before sampling: coarse levels are bilinearly upsampled to S x S and
summed, then one ``grid_sample`` reads the result (one sampling pass instead of one per level,
about 4x cheaper on CPU; gradients still reach every level through the upsampling).

UV convention (OBJ): ``u`` runs left to right, ``v`` bottom to top, both in [0, 1]; texel row
``(1 - v) * S``. Background pixels carry ``uv = 0`` and are zeroed by the body mask.

RGB texture (``rgb=True``, issue 10): a parameter ``rgb_texture (1,3,S,S)`` in [0,1] (0.5 grey
until set, e.g. from the texture baked from the video, :mod:`ram_avatar.render.texture_bake`),
fixed unless training gives it a learning rate (``optim.rgb_texture_lr_mult``, off by default:
``requires_grad`` is False until then), is concatenated to the collapsed learned texture
before the single ``grid_sample``, so the output has ``C + 3`` channels: the learned features
first, then the RGB colour at the same uv. It is saved in checkpoints and embedded in ONNX
exports as a constant.

Export: only :func:`torch.nn.functional.grid_sample` (ONNX GridSample, opset >= 16) and
elementwise ops; batch size stays dynamic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def uv_to_grid(uv: torch.Tensor) -> torch.Tensor:
    """Convert a UV map ``(B,2,H,W)`` in [0,1] (v up) to a ``grid_sample`` grid ``(B,H,W,2)``.

    ``x = 2u - 1`` and ``y = 1 - 2v`` (texel row grows downward while v grows upward), for
    ``align_corners=False`` so that [0,1] spans the texture's full extent.
    """
    u = uv[:, 0:1] * 2.0 - 1.0
    v = 1.0 - uv[:, 1:2] * 2.0
    return torch.cat([u, v], dim=1).permute(0, 2, 3, 1)


class NeuralTexture(nn.Module):
    """A learnable ``C``-channel texture of ``size x size`` texels, sampled at UV maps.

    Args:
        channels: feature channels C (16 for the ``cpu-256`` preset, 48 in the paper).
        size: texture side S in texels (power of two recommended when ``levels > 1``).
        levels: Laplacian-pyramid levels; level k has side ``size / 2**k`` (1 = plain texture).
        init_std: standard deviation of the normal initialisation (of every level).
        rgb: also hold the RGB texture ``rgb_texture (1,3,S,S)`` (module doc; a parameter with
            ``requires_grad`` off: fixed unless the trainer turns it on).

    Shapes:
        ``uv (B,2,H,W)`` in [0,1], ``body_mask (B,1,H,W)`` in [0,1] -> ``(B,C,H,W)``, or
        ``(B,C+3,H,W)`` with ``rgb`` (learned features, then RGB in [0,1]).
    """

    def __init__(self, channels: int = 16, size: int = 256, levels: int = 1,
                 init_std: float = 0.1, rgb: bool = False) -> None:
        super().__init__()
        if channels < 1 or size < 1 or levels < 1:
            raise ValueError(f"NeuralTexture needs channels, size, levels >= 1 "
                             f"(got {channels}, {size}, {levels})")
        if size >> (levels - 1) < 1:
            raise ValueError(f"texture size {size} is too small for {levels} pyramid levels")
        self.channels = channels
        self.size = size
        self.levels = levels
        self.textures = nn.ParameterList(
            nn.Parameter(torch.randn(1, channels, size >> k, size >> k) * init_std)
            for k in range(levels)
        )
        self.rgb = bool(rgb)
        if self.rgb:
            # a parameter (same state-dict key as the buffer of older checkpoints), fixed until
            # the trainer gives it a learning rate
            self.rgb_texture = nn.Parameter(torch.full((1, 3, size, size), 0.5),
                                            requires_grad=False)

    @property
    def out_channels(self) -> int:
        """Channels of :meth:`forward`'s output (C, plus 3 with the RGB texture)."""
        return self.channels + (3 if self.rgb else 0)

    @torch.no_grad()
    def set_rgb_texture(self, texture: torch.Tensor) -> None:
        """Load the fixed RGB texture from ``texture (1,3,H,W)`` or ``(3,H,W)`` float in [0,1]
        (same uv layout: row 0 = v 1), resized to ``size`` (area average when shrinking,
        bilinear when enlarging).

        Raises:
            ValueError: the texture was built without ``rgb``, or ``texture`` has a wrong shape.
        """
        if not self.rgb:
            raise ValueError("this NeuralTexture has no RGB texture (build it with rgb=True, "
                             "model.texture_rgb in the renderer config)")
        t = torch.as_tensor(texture, dtype=torch.float32)
        if t.dim() == 3:
            t = t[None]
        if t.dim() != 4 or t.shape[:2] != (1, 3):
            raise ValueError(f"RGB texture must be (1,3,H,W) or (3,H,W), got {tuple(t.shape)}")
        t = t.to(self.rgb_texture.device)
        if t.shape[-2:] != (self.size, self.size):
            shrink = t.shape[-1] > self.size and t.shape[-2] > self.size
            t = F.interpolate(t, size=(self.size, self.size),
                              mode="area" if shrink else "bilinear",
                              **({} if shrink else {"align_corners": False}))
        self.rgb_texture.copy_(t.clamp(0.0, 1.0))

    def full_texture(self) -> torch.Tensor:
        """The pyramid collapsed to one ``(1,C,S,S)`` texture (levels upsampled bilinearly, summed)."""
        out = self.textures[0]
        for tex in list(self.textures)[1:]:
            out = out + F.interpolate(tex, size=(self.size, self.size), mode="bilinear",
                                      align_corners=False)
        return out

    def sample(self, uv: torch.Tensor, body_mask: torch.Tensor,
               rgb_batch: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The learned features at every map and the RGB colour at the first ``rgb_batch`` maps
        only (the full renderer stacks the current, expanded and previous frame's maps on the
        batch axis, and only the current one needs colour).

        Args:
            uv: ``(N,2,H,W)`` in [0,1].
            body_mask: ``(N,1,H,W)`` in [0,1].
            rgb_batch: how many leading maps get the RGB colour (0: none).

        Returns:
            ``features (N,C,H,W)`` and ``rgb (rgb_batch,3,H,W)`` in [0,1], both zero where the
            mask is 0; ``rgb`` is None without the RGB texture or with ``rgb_batch`` 0.
        """
        grid = uv_to_grid(uv)
        tex = self.full_texture()
        feats = F.grid_sample(tex.expand(uv.shape[0], -1, -1, -1), grid, mode="bilinear",
                              padding_mode="border", align_corners=False) * body_mask
        if not (self.rgb and rgb_batch):
            return feats, None
        rgb = F.grid_sample(self.rgb_texture.expand(rgb_batch, -1, -1, -1), grid[:rgb_batch],
                            mode="bilinear", padding_mode="border", align_corners=False)
        return feats, rgb * body_mask[:rgb_batch]

    def forward(self, uv: torch.Tensor, body_mask: torch.Tensor) -> torch.Tensor:
        """Sample the texture at ``uv``; returns ``(B,C,H,W)`` features (``(B,C+3,H,W)`` with the
        RGB texture at every map), zero where mask is 0."""
        feats, rgb = self.sample(uv, body_mask, uv.shape[0])
        return feats if rgb is None else torch.cat([feats, rgb], dim=1)
