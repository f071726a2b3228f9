"""Training losses (RAM-Avatar Eq. 3): perceptual (VGG19) and SSIM terms."""

from ram_avatar.losses.perceptual import (DEFAULT_VGG_LAYERS, DEFAULT_VGG_WEIGHTS, VGG19Features,
                                          VGGPerceptualLoss, build_vgg_loss, imagenet_normalize,
                                          load_vgg19, ssim_loss)

__all__ = ["VGG19Features", "VGGPerceptualLoss", "load_vgg19", "build_vgg_loss", "ssim_loss",
           "imagenet_normalize", "DEFAULT_VGG_LAYERS", "DEFAULT_VGG_WEIGHTS"]
