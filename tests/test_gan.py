"""GAN losses (ram_avatar.losses.gan): logistic D loss, non-saturating G loss, R1, the ramp."""

from __future__ import annotations

import pytest
import torch

from ram_avatar.losses.gan import d_logistic_loss, g_nonsaturating_loss, gan_weight, r1_penalty


def test_gan_losses_and_ramp():
    real, fake = torch.tensor([[3.0]]), torch.tensor([[-3.0]])
    assert d_logistic_loss(real, fake) < d_logistic_loss(fake, real)
    assert g_nonsaturating_loss(torch.tensor([[3.0]])) < g_nonsaturating_loss(torch.tensor([[0.0]]))
    assert gan_weight(0) == pytest.approx(1e-3)
    assert gan_weight(1999) == pytest.approx(1e-3)
    assert gan_weight(2000) == pytest.approx(1.1e-3)
    assert gan_weight(10 ** 7) == pytest.approx(0.02)
    assert gan_weight(5, maximum=0.0) == 0.0
    x = torch.randn(2, 9, 8, 8, requires_grad=True)
    r1 = r1_penalty((x * 2).sum(dim=(1, 2, 3))[:, None], x)
    assert r1.item() == pytest.approx(4.0 * 9 * 64)
