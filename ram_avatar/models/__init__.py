"""Neural models: neural texture, triplane, dual attention, face/hand branches, StyleUNet
generator, avatar renderer (v1 and full), temporal discriminator."""

from ram_avatar.models.branches import ShallowUNet
from ram_avatar.models.discriminator import TemporalDiscriminator
from ram_avatar.models.dual_attention import CrissCrossAttention, DualAttention
from ram_avatar.models.neural_texture import NeuralTexture
from ram_avatar.models.renderer import AvatarRenderer, RendererConfig, count_parameters
from ram_avatar.models.styleunet import StyleUNet
from ram_avatar.models.triplane import Triplane

__all__ = ["AvatarRenderer", "CrissCrossAttention", "DualAttention", "NeuralTexture",
           "RendererConfig", "ShallowUNet", "StyleUNet", "TemporalDiscriminator", "Triplane",
           "count_parameters"]
