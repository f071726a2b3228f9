"""Perceptual losses: VGG19 feature loss (RAM-Avatar Eq. 3, "VGG19 perceptual") and SSIM loss.

The VGG19 stack is our own (torchvision cannot be imported here) but reproduces torchvision's
``vgg19().features`` layer layout, so torchvision's standard ImageNet checkpoint
``vgg19-dcbb9e9d.pth`` (https://download.pytorch.org/models/vgg19-dcbb9e9d.pth, 548 MB) loads
as it is. It is never downloaded here and never replaced by random weights. :func:`load_vgg19`
looks for it (explicit path, then folders in ``$RAM_AVATAR_WEIGHTS``, then
``torch.hub.get_dir()/checkpoints``) and verifies the sha256 prefix ``dcbb9e9d`` in its name.

Documented fallback when the file is absent: ``load_vgg19(allow_fallback=True)`` logs a warning
and returns None; the trainer then replaces the VGG term by SSIM + L1, i.e.
``ssim_loss(pred, target)`` added to its existing L1 term (same weight the VGG term had).
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ram_avatar.errors import RamAvatarError
from ram_avatar.eval.metrics import (TORCHVISION_FILES, TapFeatures, find_weight_file,
                                     load_feature_state_dict, make_vgg_layers, ssim,
                                     weight_search_dirs, WEIGHTS_ENV)

log = logging.getLogger(__name__)

__all__ = ["VGG19Features", "VGGPerceptualLoss", "load_vgg19", "build_vgg_loss",
           "ssim_loss", "imagenet_normalize", "VGG19_LAYER_INDEX", "DEFAULT_VGG_LAYERS",
           "DEFAULT_VGG_WEIGHTS"]

VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
             512, 512, 512, 512, "M"]


def _layer_names(cfg) -> dict[str, int]:
    names: dict[str, int] = {}
    idx, block, conv = 0, 1, 1
    for v in cfg:
        if v == "M":
            names[f"pool{block}"] = idx
            idx += 1
            block += 1
            conv = 1
        else:
            names[f"conv{block}_{conv}"] = idx
            names[f"relu{block}_{conv}"] = idx + 1
            idx += 2
            conv += 1
    return names


#: layer name (conv1_1, relu1_1, ..., relu5_4, pool5) -> index in torchvision's vgg19().features
VGG19_LAYER_INDEX = _layer_names(VGG19_CFG)

DEFAULT_VGG_LAYERS = ("relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4")
#: pix2pixHD's per-layer weights (shallow to deep)
DEFAULT_VGG_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) in [0,1] -> ImageNet-normalised input of torchvision classifiers."""
    mean = x.new_tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(_IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class VGG19Features(TapFeatures):
    """torchvision ``vgg19().features`` (state-dict keys ``features.N.weight/bias``).

    forward(x) takes an ImageNet-normalised (B,3,H,W) and returns the activations after the
    requested layers, in the order given.

    Args:
        layers: names from :data:`VGG19_LAYER_INDEX` (e.g. relu3_4), in increasing depth.
    """

    def __init__(self, layers: Sequence[str] = DEFAULT_VGG_LAYERS):
        unknown = [n for n in layers if n not in VGG19_LAYER_INDEX]
        if unknown:
            raise RamAvatarError(f"unknown VGG19 layer(s) {unknown}; use names like relu3_4 "
                                 f"(known: {', '.join(VGG19_LAYER_INDEX)})")
        taps = [VGG19_LAYER_INDEX[n] for n in layers]
        if taps != sorted(taps) or len(set(taps)) != len(taps):
            raise RamAvatarError(f"VGG19 layers must be distinct and in increasing depth: {layers}")
        super().__init__(make_vgg_layers(VGG19_CFG), taps=taps)
        self.layer_names = tuple(layers)


def load_vgg19(path: str | os.PathLike | None = None, allow_fallback: bool = False,
               check_hash: bool = True, layers: Sequence[str] = DEFAULT_VGG_LAYERS,
               device: str | torch.device = "cpu") -> VGG19Features | None:
    """Load torchvision's ImageNet VGG19 weights into a frozen :class:`VGG19Features`.

    Args:
        path: the checkpoint file, or a folder holding ``vgg19-dcbb9e9d.pth``; searched before
            ``$RAM_AVATAR_WEIGHTS`` folders and ``torch.hub.get_dir()/checkpoints``.
        allow_fallback: when the file is absent, log a warning and return None (the caller then
            uses SSIM + L1, see the module docstring) instead of raising.
        check_hash: verify that the file's sha256 starts with ``dcbb9e9d``. Pass False to load a
            different checkpoint with the same layout (e.g. a converted ``.safetensors``).
        layers: output layers of the returned stack.
        device: where to put the network.

    Returns:
        the network in eval mode with ``requires_grad=False``, or None (fallback).

    Raises:
        RamAvatarError: file absent (without ``allow_fallback``), explicit ``path`` missing,
            sha256 mismatch, unreadable file or wrong keys/shapes.
    """
    fname, sha_prefix, url = TORCHVISION_FILES["vgg19"]
    found = find_weight_file([fname], path)
    if found is None:
        where = ", ".join(str(d) for d in weight_search_dirs())
        msg = (f"ImageNet VGG19 weights not found: expected file {fname} (torchvision's {url}, "
               f"548 MB). Put it in a folder named by ${WEIGHTS_ENV} or in the torch hub cache, "
               f"or pass its path; searched: {where}")
        if allow_fallback:
            log.warning("%s. Falling back to SSIM + L1 instead of the VGG perceptual loss.", msg)
            return None
        raise RamAvatarError(msg)
    net = VGG19Features(layers)
    load_feature_state_dict(net, found, sha_prefix, check_hash)
    net.requires_grad_(False)
    net.eval()
    log.info("VGG19 weights loaded from %s", found)
    return net.to(device)


class VGGPerceptualLoss(nn.Module):
    """Weighted L1 distance of VGG19 activations (pix2pixHD ``VGGLoss``; RAM-Avatar Eq. 3).

    ``sum_i w_i * mean|phi_i(pred) - phi_i(target)|`` with target features detached, inputs in
    [0,1] normalised with ImageNet statistics. The VGG stays frozen and in eval mode; gradients
    flow to ``pred`` only.

    Args:
        vgg: a loaded :class:`VGG19Features` (from :func:`load_vgg19`) whose layers match
            ``len(weights)``.
        weights: per-layer weights; default pix2pixHD's 1/32, 1/16, 1/8, 1/4, 1.

    forward(pred, target): (B,3,H,W) in [0,1] -> scalar loss.
    """

    def __init__(self, vgg: VGG19Features, weights: Sequence[float] = DEFAULT_VGG_WEIGHTS):
        super().__init__()
        if len(weights) != len(vgg.taps):
            raise RamAvatarError(f"VGGPerceptualLoss: {len(weights)} weights for "
                                 f"{len(vgg.taps)} VGG layers")
        self.vgg = vgg.requires_grad_(False).eval()
        self.weights = tuple(float(w) for w in weights)

    def train(self, mode: bool = True) -> "VGGPerceptualLoss":
        super().train(mode)
        self.vgg.eval()
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise RamAvatarError(f"VGGPerceptualLoss: expected two (B,3,H,W) tensors of the same "
                                 f"shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
        fp = self.vgg(imagenet_normalize(pred))
        with torch.no_grad():
            ft = self.vgg(imagenet_normalize(target))
        loss = pred.new_zeros(())
        for w, a, b in zip(self.weights, fp, ft):
            loss = loss + w * F.l1_loss(a, b)
        return loss


def build_vgg_loss(path: str | os.PathLike | None = None, allow_fallback: bool = False,
                   layers: Sequence[str] = DEFAULT_VGG_LAYERS,
                   weights: Sequence[float] = DEFAULT_VGG_WEIGHTS, check_hash: bool = True,
                   device: str | torch.device = "cpu") -> VGGPerceptualLoss | None:
    """:func:`load_vgg19` + :class:`VGGPerceptualLoss`; None when falling back (see module doc)."""
    vgg = load_vgg19(path, allow_fallback=allow_fallback, check_hash=check_hash, layers=layers,
                     device=device)
    return None if vgg is None else VGGPerceptualLoss(vgg, weights).to(device)


def ssim_loss(pred: torch.Tensor, target: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """``1 - SSIM`` averaged over the batch (differentiable; same SSIM as the evaluation metric).

    Args:
        pred, target: (B,C,H,W) in [0,1], H, W >= 11.
        mask: optional (B,1,H,W) restricting SSIM to the person (see ``eval.metrics.ssim``).

    Returns:
        scalar tensor in [0, 2].
    """
    return 1.0 - ssim(pred, target, mask).mean()
