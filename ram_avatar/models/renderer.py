"""The avatar renderer: neural texture + StyleUNet + compositing over a learned background.

Renderer v1 of RAM-Avatar (Sec. 3.1, 4.1) without dual attention: the body neural texture is
sampled at the rasterised UV map, concatenated with the hand (5 ch), face (3 ch) and body-mask
(1 ch) maps, and translated by the StyleUNet into a foreground RGB and an alpha logit; the
person is composited over a learned background image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ram_avatar.models.neural_texture import NeuralTexture
from ram_avatar.models.styleunet import StyleUNet


@dataclass
class RendererConfig:
    """Architecture of :class:`AvatarRenderer` (sizes are config-driven; see training presets).

    Attributes:
        resolution: output side S in pixels (power of two); conditioning maps are S x S.
        texture_channels: neural texture channels C (paper: 48).
        texture_size: neural texture side in texels (paper: 1024).
        texture_levels: Laplacian-pyramid levels of the texture (1 = single texture).
        texture_init_std: std of the texture's normal initialisation.
        hand_channels: channels of the hand map (one per finger).
        face_channels: channels of the face map.
        base_channels: generator channels at its top resolution (S/2 with wavelets).
        max_channels: cap on generator channels at low resolutions.
        style_dim: style vector width (paper code: 512).
        latent_dim: per-frame latent width.
        mapping_layers: layers of the mapping MLP (paper code: 2).
        num_frames: rows of the per-frame latent table (max frame index + 1); ``None`` until
            the trainer resolves it from the dataset (then treated as 1).
        wavelet_output: Haar-wavelet ToRGB + inverse Haar (released RAM-Avatar code).
        alpha_mask_prior: initial value of a learned scale ``a`` adding ``a * (2 m - 1)`` to the
            alpha logit (m = body mask): the template silhouette is the starting guess of the
            person's alpha and the generator learns the residual (hair, loose clothes). 0 = off.
    """

    resolution: int = 256
    texture_channels: int = 16
    texture_size: int = 256
    texture_levels: int = 4
    texture_init_std: float = 0.1
    hand_channels: int = 5
    face_channels: int = 3
    base_channels: int = 16
    max_channels: int = 64
    style_dim: int = 64
    latent_dim: int = 32
    mapping_layers: int = 2
    num_frames: int | None = None
    wavelet_output: bool = True
    alpha_mask_prior: float = 3.0

    @property
    def in_channels(self) -> int:
        """Generator input channels: texture C + hand + face + 1 body mask."""
        return self.texture_channels + self.hand_channels + self.face_channels + 1

    def to_dict(self) -> dict:
        return asdict(self)


class AvatarRenderer(nn.Module):
    """Neural texture -> StyleUNet -> alpha compositing over a learned background.

    Args:
        config: :class:`RendererConfig`.

    Inputs (S = ``config.resolution``): ``uv (B,2,S,S)`` in [0,1] (0 on background),
    ``body_mask (B,1,S,S)``, ``hand (B,5,S,S)``, ``face (B,3,S,S)``, ``frame_index (B,) int``
    or ``None`` (mean training latent; used for unseen frames and at test time).

    Returns:
        dict with ``rgb (B,3,S,S)`` composited image in [0,1], ``alpha (B,1,S,S)`` in [0,1],
        ``fg (B,3,S,S)`` foreground colour in [0,1], ``alpha_logit (B,1,S,S)`` (for the BCE
        mask loss) and ``background (1,3,S,S)`` in [0,1].
    """

    def __init__(self, config: RendererConfig | None = None) -> None:
        super().__init__()
        config = config or RendererConfig()
        self.config = config
        self.texture = NeuralTexture(config.texture_channels, config.texture_size,
                                     config.texture_levels, config.texture_init_std)
        self.generator = StyleUNet(
            in_channels=config.in_channels, out_channels=4, size=config.resolution,
            base_channels=config.base_channels, max_channels=config.max_channels,
            style_dim=config.style_dim, latent_dim=config.latent_dim,
            mapping_layers=config.mapping_layers, num_frames=config.num_frames or 1,
            wavelet_output=config.wavelet_output,
        )
        s = config.resolution
        # stored as a logit so the background stays in [0,1]; 0 -> grey 0.5
        self.background_logit = nn.Parameter(torch.zeros(1, 3, s, s))
        self.alpha_prior = nn.Parameter(torch.tensor(float(config.alpha_mask_prior)))

    def background(self) -> torch.Tensor:
        """The learned background image ``(1,3,S,S)`` in [0,1]."""
        return torch.sigmoid(self.background_logit)

    def forward(self, uv: torch.Tensor, body_mask: torch.Tensor, hand: torch.Tensor,
                face: torch.Tensor, frame_index: torch.Tensor | None = None) -> dict:
        if frame_index is not None and not isinstance(frame_index, torch.Tensor):
            frame_index = torch.as_tensor(frame_index, device=uv.device)
        features = self.texture(uv, body_mask)
        x = torch.cat([features, hand, face, body_mask], dim=1)
        out = self.generator(x, frame_index)
        fg = torch.sigmoid(out[:, :3])
        alpha_logit = out[:, 3:4] + self.alpha_prior * (2.0 * body_mask - 1.0)
        alpha = torch.sigmoid(alpha_logit)
        bg = self.background()
        rgb = alpha * fg + (1.0 - alpha) * bg
        return {"rgb": rgb, "alpha": alpha, "fg": fg, "alpha_logit": alpha_logit,
                "background": bg}


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
