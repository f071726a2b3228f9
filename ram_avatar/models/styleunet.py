"""StyleUNet generator (StyleAvatar / RAM-Avatar Sec. 3.1, 4.1).

A convolutional encoder takes the conditioning maps from the input resolution ``S`` down to
8x8 (downsampling residual blocks) and keeps the feature map of every scale. A StyleGAN2-style
decoder climbs back with modulated/demodulated 3x3 convolutions; at every scale it
concatenates the encoder features of that scale (UNet skip connections) and emits an image
through a modulated 1x1 ToRGB; the images of all scales are upsampled and summed. The style
vector ``w`` comes from a small mapping MLP applied to a learned per-frame latent (an
embedding over training frames); at test time (``frame_index=None``) the mean latent of the
frames seen in training is used.

With ``wavelet_output=True`` (the released RAM-Avatar/StyleAvatar choice) the decoder stops at
``S/2`` and each ToRGB predicts the four Haar sub-bands of an image of twice its resolution,
turned into pixels by an inverse Haar transform; no convolution runs at full resolution.

Export notes: modulation/demodulation are written in the *non-fused* form (scale the input
activations by the style, convolve with the shared weight, scale the output by the
demodulation coefficients), which uses ordinary convolutions, keeps the batch dimension
dynamic in ONNX and makes every batch item independent of the others. No BatchNorm, no noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_LRELU_GAIN = math.sqrt(2.0)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * _LRELU_GAIN


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (StyleGAN2): weight ~ N(0,1) scaled at runtime."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return _lrelu(out) if self.activate else out


class ConvLayer(nn.Module):
    """Equalised-lr 3x3 (or kxk) convolution + bias + scaled leaky ReLU; optional stride 2."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 activate: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size ** 2)
        self.stride = stride
        self.padding = kernel_size // 2
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride,
                       padding=self.padding)
        return _lrelu(out) if self.activate else out


class ResBlockDown(nn.Module):
    """Residual downsampling block: conv3x3 -> conv3x3 stride 2, plus avg-pool + 1x1 skip."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, stride=2)
        self.skip = ConvLayer(in_ch, out_ch, 1, activate=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        skip = self.skip(F.avg_pool2d(x, 2))
        return (out + skip) * (1.0 / math.sqrt(2.0))


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution in the non-fused (export-friendly) form.

    ``y = demod * conv(x * s, W)`` with ``s = A(w)`` per sample and input channel, and
    ``demod[b,o] = rsqrt(sum_{i,k} (W[o,i,k] * s[b,i])^2 + eps)``, which equals the fused
    per-sample weight formulation of StyleGAN2 (Karras et al. 2020, Eq. 1-3).

    Shapes: ``x (B,Cin,H,W)``, ``style (B,style_dim)`` -> ``(B,Cout,H',W')`` (``H' = 2H`` with
    ``upsample``: bilinear x2 before the convolution).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size ** 2)
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.demodulate = demodulate
        self.upsample = upsample
        self.padding = kernel_size // 2
        self.in_ch, self.out_ch = in_ch, out_ch

    @torch.no_grad()
    def folded_weight(self, style: torch.Tensor) -> torch.Tensor:
        """The plain convolution weight that equals this layer for one fixed style.

        With ``s = A(style)`` the same for every sample, ``conv(x * s, W) * demod`` is
        ``conv(x, W')`` with ``W'[o,i] = W[o,i] * scale * s[i] * demod[o]`` (the fused form of
        StyleGAN2, Karras et al. 2020, Eq. 1-3, for one style). The exported renderer always
        uses the mean style code, so its modulation is folded once at export
        (:func:`ram_avatar.models.export.fold_style`).

        Shapes: ``style (1,style_dim)`` -> ``(Cout,Cin,k,k)``.
        Raises:
            ValueError: ``style`` holds more than one style vector.
        """
        if style.shape[0] != 1:
            raise ValueError(f"folded_weight needs one style vector (1, style_dim), got "
                             f"{tuple(style.shape)}")
        s = self.modulation(style)[0]                                   # (Cin,)
        weight = self.weight * self.scale * s[None, :, None, None]      # (Cout,Cin,k,k)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.square().sum(dim=(1, 2, 3)) + 1e-8)[:, None,
                                                                                      None, None]
        return weight

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        s = self.modulation(style)  # (B, Cin)
        weight = self.weight * self.scale
        if self.upsample:
            x = _up2(x)
        out = F.conv2d(x * s[:, :, None, None], weight, padding=self.padding)
        if self.demodulate:
            w2 = weight.square().sum(dim=(2, 3))  # (Cout, Cin)
            demod = torch.rsqrt(F.linear(s.square(), w2) + 1e-8)  # (B, Cout)
            out = out * demod[:, :, None, None]
        return out


class StyledConv(nn.Module):
    """Modulated conv + bias + scaled leaky ReLU."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample)
        self.bias = nn.Parameter(torch.zeros(1, out_ch, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return _lrelu(self.conv(x, style) + self.bias)


class ToRGB(nn.Module):
    """Modulated 1x1 conv (no demodulation) to ``out_ch`` channels plus a bias."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, out_ch, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.conv(x, style) + self.bias


class InverseHaar(nn.Module):
    """Inverse 2D Haar transform: ``(B,4C,H,W)`` sub-bands [LL,LH,HL,HH per channel] -> ``(B,C,2H,2W)``.

    Implemented as a grouped stride-2 transposed convolution with a fixed 2x2 kernel (orthonormal
    Haar basis), so it exports to ONNX as ConvTranspose.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        ll = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
        lh = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
        hl = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
        hh = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
        kernel = torch.stack([ll, lh, hl, hh]) * 0.5  # (4,2,2)
        self.register_buffer("kernel", kernel.repeat(channels, 1, 1).unsqueeze(1),
                             persistent=False)  # (4C,1,2,2)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # grouped: group c takes input channels [4c, 4c+4) and writes output channel c
        return F.conv_transpose2d(x, self.kernel, stride=2, groups=self.channels)


class StyleUNet(nn.Module):
    """StyleUNet: conv encoder to 8x8 + modulated-conv decoder with encoder skips.

    Args:
        in_channels: channels of the conditioning input (texture C + 5 hand + 3 face + 1 mask).
        out_channels: output channels (3 RGB + 1 alpha logit).
        size: input/output side S (power of two, >= 16 with wavelets, >= 8 without).
        base_channels: feature channels at the top decoder resolution (S/2 with wavelets, S
            otherwise); doubled at every halving of the resolution, capped at ``max_channels``.
        max_channels: cap on feature channels.
        style_dim: width of the style vector ``w`` and of the mapping MLP.
        latent_dim: width of the learned per-frame latent.
        mapping_layers: layers of the mapping MLP (>= 1).
        num_frames: rows of the per-frame latent table (max training frame index + 1).
        wavelet_output: Haar-wavelet ToRGB with inverse Haar to full resolution.

    Shapes: ``x (B,in_channels,S,S)``, ``frame_index (B,) int64 | None`` -> ``(B,out_channels,S,S)``
    (raw, unbounded outputs).
    """

    def __init__(self, in_channels: int, out_channels: int = 4, size: int = 256,
                 base_channels: int = 16, max_channels: int = 64, style_dim: int = 64,
                 latent_dim: int = 32, mapping_layers: int = 2, num_frames: int = 1,
                 wavelet_output: bool = True) -> None:
        super().__init__()
        if size & (size - 1) or size < (16 if wavelet_output else 8):
            raise ValueError(f"StyleUNet size must be a power of two >= "
                             f"{16 if wavelet_output else 8}, got {size}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.size = size
        self.out_channels = out_channels
        self.wavelet_output = wavelet_output
        self.num_frames = num_frames
        top = size // 2 if wavelet_output else size
        self.top_resolution = top
        # resolutions of encoder features / decoder levels, from top down to 8
        self.resolutions = [top >> k for k in range(int(math.log2(top // 8)) + 1)]

        def ch(res: int) -> int:
            return min(max_channels, base_channels * (top // res))

        self.channels = {res: ch(res) for res in self.resolutions}

        # --- per-frame latent + mapping network -------------------------------------------
        self.latents = nn.Embedding(num_frames, latent_dim)
        nn.init.zeros_(self.latents.weight)
        # which latent rows belong to frames seen in training (mean latent is taken over them)
        self.register_buffer("trained_frames", torch.zeros(num_frames, dtype=torch.bool))
        layers = [EqualLinear(latent_dim, style_dim, activate=True)]
        layers += [EqualLinear(style_dim, style_dim, activate=True)
                   for _ in range(mapping_layers - 1)]
        self.mapping = nn.Sequential(*layers)

        # --- encoder --------------------------------------------------------------------
        self.stem = ConvLayer(in_channels, ch(top), 3, stride=2 if wavelet_output else 1)
        self.down = nn.ModuleList(
            ResBlockDown(ch(res), ch(res // 2)) for res in self.resolutions[:-1]
        )

        # --- decoder --------------------------------------------------------------------
        rgb_ch = out_channels * 4 if wavelet_output else out_channels
        self.dec_in = StyledConv(ch(8), ch(8), style_dim)
        self.to_rgb_in = ToRGB(ch(8), rgb_ch, style_dim)
        self.up_convs = nn.ModuleList()
        self.skip_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for res in reversed(self.resolutions[:-1]):  # 16 ... top
            self.up_convs.append(StyledConv(ch(res // 2), ch(res), style_dim, upsample=True))
            self.skip_convs.append(StyledConv(2 * ch(res), ch(res), style_dim))
            self.to_rgbs.append(ToRGB(ch(res), rgb_ch, style_dim))
        self.iwt = InverseHaar(out_channels) if wavelet_output else None

    # -- style ----------------------------------------------------------------------------
    def mean_latent(self) -> torch.Tensor:
        """Mean per-frame latent over frames marked as trained (all rows if none): ``(1, latent_dim)``."""
        weight = self.latents.weight
        mask = self.trained_frames.to(weight.dtype)[:, None]
        # branch-free (traceable): fall back to uniform weights when no frame is marked
        mask = torch.where(mask.sum() > 0, mask, torch.ones_like(mask))
        return (weight * mask).sum(dim=0, keepdim=True) / mask.sum()

    @torch.no_grad()
    def mark_trained(self, frame_index: torch.Tensor) -> None:
        """Record that the latents of ``frame_index`` are being trained (for :meth:`mean_latent`)."""
        self.trained_frames[frame_index.to(self.trained_frames.device).long()] = True

    def style(self, frame_index: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Style vectors ``(B, style_dim)`` for ``frame_index (B,)`` or the mean latent if None."""
        if frame_index is None:
            latent = self.mean_latent().expand(batch, -1)
        else:
            latent = self.latents(frame_index.long())
        return self.mapping(latent)

    # -- forward --------------------------------------------------------------------------
    def _to_image(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.iwt(rgb) if self.iwt is not None else rgb

    def forward(self, x: torch.Tensor, frame_index: torch.Tensor | None = None,
                style: torch.Tensor | None = None) -> torch.Tensor:
        """Run the generator; ``style (B,style_dim)`` overrides the per-frame / mean style."""
        if style is None:
            style = self.style(frame_index, x.shape[0])
        feats = [self.stem(x)]
        for block in self.down:
            feats.append(block(feats[-1]))
        # feats[k] has resolution self.resolutions[k] (top ... 8)
        h = self.dec_in(feats[-1], style)
        image = self._to_image(self.to_rgb_in(h, style))
        for k, (up, skip, to_rgb) in enumerate(zip(self.up_convs, self.skip_convs, self.to_rgbs)):
            enc = feats[-2 - k]
            h = up(h, style)
            h = skip(torch.cat([h, enc], dim=1), style)
            image = self._to_image(to_rgb(h, style)) + _up2(image)
        return image
