"""Temporal discriminator of RAM-Avatar (Eq. 4).

The discriminator sees three consecutive frames stacked on channels: real samples are
``(I_gt[t-1], I_gt[t], I_gt[t+1])``, fake samples ``(I_gt[t-1], G(F_t), I_gt[t+1])`` (the
generated frame in the middle), so it judges the generated frame also by its temporal
consistency with its real neighbours.

Architecture (StyleGAN2 residual discriminator, as StyleAvatar/RAM-Avatar): a 1x1 "fromRGB"
conv at full resolution, residual stride-2 blocks down to 4x4, minibatch standard deviation, a
3x3 conv and two equalised linear layers ending in one unbounded logit per sample. Differences
from the released code, on purpose: no Haar-wavelet input transform (plain pixels) and no
activation on the final logit (the released code applies a leaky ReLU to it, which distorts
the logistic loss).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ram_avatar.models.styleunet import ConvLayer, EqualLinear, ResBlockDown

__all__ = ["TemporalDiscriminator", "stack_frames"]


def stack_frames(prev: torch.Tensor, cur: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
    """``(B,3,H,W)`` x 3 -> ``(B,9,H,W)`` in the order (t-1, t, t+1) (Eq. 4)."""
    return torch.cat([prev, cur, nxt], dim=1)


class TemporalDiscriminator(nn.Module):
    """Residual discriminator over ``frames`` stacked RGB frames.

    Args:
        size: input side S (power of two >= 8).
        frames: frames stacked on channels (3: t-1, t, t+1).
        base_channels: channels at full resolution; doubled at each halving, capped.
        max_channels: cap on channels (512 at paper scale).
        mbstd_group: minibatch-stddev group size (the largest divisor of B not above it is used).

    forward(x (B, 3*frames, S, S)) -> logits (B, 1).
    """

    def __init__(self, size: int, frames: int = 3, base_channels: int = 32,
                 max_channels: int = 512, mbstd_group: int = 4) -> None:
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ValueError(f"discriminator size must be a power of two >= 8, got {size}")
        self.size = size
        self.in_channels = 3 * frames
        self.mbstd_group = mbstd_group

        def ch(res: int) -> int:
            return min(max_channels, base_channels * (size // res))

        self.from_rgb = ConvLayer(self.in_channels, ch(size), 1)
        res = [size >> k for k in range(int(math.log2(size // 4)) + 1)]  # size ... 4
        self.blocks = nn.ModuleList(ResBlockDown(ch(r), ch(r // 2)) for r in res[:-1])
        c4 = ch(4)
        self.final_conv = ConvLayer(c4 + 1, c4, 3)
        self.final_linear = EqualLinear(c4 * 16, c4, activate=True)
        self.out = EqualLinear(c4, 1)

    def _mbstd(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        g = max(d for d in range(1, min(self.mbstd_group, B) + 1) if B % d == 0)
        y = x.view(g, B // g, C, H, W)
        y = torch.sqrt(y.var(dim=0, unbiased=False) + 1e-8)          # (B/g, C, H, W)
        y = y.mean(dim=(1, 2, 3)).view(B // g, 1, 1, 1)
        y = y.repeat(g, 1, H, W)
        return torch.cat([x, y], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels or x.shape[-1] != self.size or x.shape[-2] != self.size:
            raise ValueError(f"discriminator expects (B,{self.in_channels},{self.size},"
                             f"{self.size}), got {tuple(x.shape)}")
        h = self.from_rgb(x)
        for block in self.blocks:
            h = block(h)
        h = self.final_conv(self._mbstd(h))
        return self.out(self.final_linear(h.flatten(1)))
