"""Triplane body features (the released RAM-Avatar code's alternative to the UV texture).

Three learnable feature planes (xy, yz, xz; ``C`` channels each, ``S x S``; released code:
16 x 512^2) are sampled bilinearly at the *canonical* (rest-pose) position of the body surface
seen by each pixel, and concatenated to ``3C`` channels (48 = the paper's body map width). The
canonical-position map comes from the conditioning renderer (``canon``: the rest-pose vertex
positions interpolated with the rasteriser's fragments, normalised to [-1, 1]^3 by the rest
mesh's bounding box; 0 on background).

As in the released code, the planes pass through ``tanh`` before sampling (bounded features).
Unlike a UV texture, the triplane has no seams and shares features between points close in the
rest pose (left/right arm stay apart in the rest pose, so they do not mix).

Export: ``grid_sample`` (ONNX GridSample, opset >= 16), dynamic batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Triplane"]

_PLANES = (("xy", (0, 1)), ("yz", (1, 2)), ("xz", (0, 2)))


class Triplane(nn.Module):
    """Learnable triplane sampled at canonical positions.

    Args:
        channels: C per plane (16 in the released code).
        size: plane side S (512 in the released code).
        init_std: std of the normal initialisation of the planes (before tanh).

    Shapes: ``canon (B,3,H,W)`` in [-1,1] (x, y, z), ``body_mask (B,1,H,W)`` ->
    ``(B,3C,H,W)`` [xy | yz | xz features], zero where the mask is 0.
    """

    def __init__(self, channels: int = 16, size: int = 512, init_std: float = 0.1) -> None:
        super().__init__()
        if channels < 1 or size < 2:
            raise ValueError(f"Triplane needs channels >= 1 and size >= 2 (got {channels}, {size})")
        self.channels = channels
        self.size = size
        self.planes = nn.ParameterDict({
            name: nn.Parameter(torch.randn(1, channels, size, size) * init_std)
            for name, _ in _PLANES
        })

    @property
    def out_channels(self) -> int:
        return 3 * self.channels

    def forward(self, canon: torch.Tensor, body_mask: torch.Tensor) -> torch.Tensor:
        B = canon.shape[0]
        feats = []
        for name, (a, b) in _PLANES:
            grid = torch.stack([canon[:, a], canon[:, b]], dim=-1)        # (B,H,W,2)
            plane = torch.tanh(self.planes[name]).expand(B, -1, -1, -1)
            feats.append(F.grid_sample(plane, grid, mode="bilinear", padding_mode="border",
                                       align_corners=False))
        return torch.cat(feats, dim=1) * body_mask
