"""Neural models: neural texture, StyleUNet generator, avatar renderer."""

from ram_avatar.models.neural_texture import NeuralTexture
from ram_avatar.models.renderer import AvatarRenderer, RendererConfig, count_parameters
from ram_avatar.models.styleunet import StyleUNet

__all__ = ["AvatarRenderer", "NeuralTexture", "RendererConfig", "StyleUNet", "count_parameters"]
