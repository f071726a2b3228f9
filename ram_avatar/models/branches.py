"""Face and hand branches of RAM-Avatar (Sec. 4.1): shallow UNets turning the face map and the
5-channel finger map into 16-channel feature maps at full resolution.

The full conditioning of the generator is ``F_full = concat(F_hand 16ch, F_face 16ch,
F_body 48ch)`` (plus the body mask, used by the alpha prior). The released code uses a
two-layer "conv stride 2 -> blur upsample -> conv" per branch; here each branch is a small UNet
(``depth`` stride-2 levels with skip connections), which keeps the thin skeleton/contour lines
of the maps sharp at full resolution while giving every output pixel a receptive field of a few
dozen pixels (enough to see a whole finger at 256^2, a finger segment at 1024^2).

Export: ordinary convolutions, bilinear x2 upsampling and concatenation; dynamic batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ram_avatar.models.styleunet import ConvLayer

__all__ = ["ShallowUNet"]


class ShallowUNet(nn.Module):
    """A shallow UNet: ``in_channels`` map -> ``out_channels`` features at the same resolution.

    Args:
        in_channels: channels of the input map (3 face, 5 hand).
        out_channels: output feature channels (16 in the paper).
        hidden: channels at full resolution; doubled at each level, capped at ``max_hidden``.
        depth: number of stride-2 levels (>= 0; 0 = two plain convolutions).
        max_hidden: cap on the hidden channels.

    Shapes: ``(B,in_channels,H,W)`` with H, W divisible by ``2^depth`` ->
    ``(B,out_channels,H,W)`` (unbounded features).
    """

    def __init__(self, in_channels: int, out_channels: int = 16, hidden: int = 16,
                 depth: int = 2, max_hidden: int = 64) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or hidden < 1 or depth < 0:
            raise ValueError(f"bad ShallowUNet sizes: in {in_channels}, out {out_channels}, "
                             f"hidden {hidden}, depth {depth}")
        chans = [min(max_hidden, hidden * 2 ** i) for i in range(depth + 1)]
        self.inc = ConvLayer(in_channels, chans[0], 3)
        self.downs = nn.ModuleList(ConvLayer(chans[i], chans[i + 1], 3, stride=2)
                                   for i in range(depth))
        self.ups = nn.ModuleList(ConvLayer(chans[i + 1] + chans[i], chans[i], 3)
                                 for i in reversed(range(depth)))
        self.out = ConvLayer(chans[0], out_channels, 1, activate=False)
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inc(x)
        skips = [h]
        for down in self.downs:
            h = down(h)
            skips.append(h)
        skips.pop()
        for up in self.ups:
            h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
            h = up(torch.cat([h, skips.pop()], dim=1))
        return self.out(h)
