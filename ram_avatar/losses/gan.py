"""Adversarial losses of RAM-Avatar (Eq. 3, 4): non-saturating logistic GAN, R1, weight ramp.

* Discriminator: ``L_D = softplus(-D(real)) + softplus(D(fake))``, with real =
  ``(I[t-1], I[t], I[t+1])`` and fake = ``(I[t-1], G(F_t), I[t+1])``. (The released trainer
  feeds these to ``d_logistic_loss`` swapped, i.e. trains D to call real frames fake; not here.)
* Generator: ``L_G = softplus(-D(fake))`` (non-saturating), weighted by :func:`gan_weight`.
* R1 (Mescheder et al. 2018) on real samples: ``gamma/2 * E ||grad_x D(x)||^2``, applied lazily
  every ``interval`` discriminator steps and scaled by ``interval`` (StyleGAN2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["d_logistic_loss", "g_nonsaturating_loss", "r1_penalty", "gan_weight"]


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator logistic loss: real pushed to positive, fake to negative logits."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator non-saturating loss ``softplus(-D(G(.)))``."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real_input: torch.Tensor) -> torch.Tensor:
    """``E ||d D(x) / d x||^2`` over the batch (``real_input`` must require grad); differentiable
    (create_graph) so it can be added to the discriminator loss."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_input, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


def gan_weight(step: int, start: float = 1e-3, maximum: float = 0.02, every: int = 2000,
               factor: float = 1.1) -> float:
    """Weight of the generator's GAN term at ``step``: ``min(start * factor^(step // every),
    maximum)`` (released code: 1e-3 growing 1.1x every 2000 steps up to 0.02)."""
    if maximum <= 0:
        return 0.0
    every = max(1, int(every))
    return float(min(start * factor ** (step // every), maximum))
