"""The temporal discriminator (ram_avatar.models.discriminator): shapes, frame stacking, and the
trainer's discriminator update separating real from fake triplets (CPU, tiny sizes)."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from ram_avatar.losses.gan import d_logistic_loss
from ram_avatar.models.discriminator import TemporalDiscriminator, stack_frames
from ram_avatar.training import get_preset
from ram_avatar.training.trainer import _discriminator_step


def test_discriminator_shapes():
    d = TemporalDiscriminator(64, base_channels=4, max_channels=16)
    frames = [torch.rand(3, 3, 64, 64) for _ in range(3)]
    x = stack_frames(*frames)
    assert x.shape == (3, 9, 64, 64)
    assert torch.equal(x[:, 3:6], frames[1])  # the judged frame sits in the middle
    assert d(x).shape == (3, 1)
    assert d(x[:1]).shape == (1, 1)
    with pytest.raises(ValueError):
        d(torch.rand(1, 6, 64, 64))


def _toy_triplets(n: int, size: int, seed: int):
    """Real: smooth gradients moving slowly; fake middle frame: noise."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    frames = []
    for _ in range(n):
        phase = torch.rand(1, generator=g).item()
        seq = [torch.stack([torch.sin(6 * xs + phase + 0.1 * t) * 0.5 + 0.5, ys,
                            torch.full_like(xs, 0.4)]) for t in range(3)]
        frames.append(torch.stack(seq))
    frames = torch.stack(frames)                         # (n,3,3,S,S)
    prev, cur, nxt = frames[:, 0], frames[:, 1], frames[:, 2]
    fake = torch.rand(cur.shape, generator=g)
    return prev, cur, nxt, fake


def test_discriminator_step_separates_real_from_fake():
    """The trainer's D update (not swapped): after a few steps real logits > fake logits."""
    torch.manual_seed(0)
    cfg = get_preset("cpu-256")
    cfg.r1_interval = 4
    disc = TemporalDiscriminator(32, base_channels=8, max_channels=32)
    opt = torch.optim.Adam(disc.parameters(), lr=2e-3, betas=(0.5, 0.99))

    def clip_and_step(o, sc, params, loss, what):
        loss.backward()
        o.step()

    for step in range(20):
        prev, cur, nxt, fake = _toy_triplets(4, 32, seed=step)
        batch = {"image_prev": prev, "image": cur, "image_next": nxt}
        terms = _discriminator_step(disc, opt, None, batch, fake, cfg, step,
                                    contextlib.nullcontext, clip_and_step)
        assert all(not p.requires_grad for p in disc.parameters())  # frozen again for G
        assert ("r1" in terms) == (step % cfg.r1_interval == 0)
    prev, cur, nxt, fake = _toy_triplets(8, 32, seed=999)
    with torch.no_grad():
        real_logits = disc(stack_frames(prev, cur, nxt))
        fake_logits = disc(stack_frames(prev, fake, nxt))
    assert real_logits.min() > fake_logits.max()
    assert real_logits.mean() > fake_logits.mean() + 0.5
    assert d_logistic_loss(real_logits, fake_logits) < 2 * math.log(2)
