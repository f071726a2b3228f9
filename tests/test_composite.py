"""Background modes (render.composite): re-compositing renderer output needs only rgb + alpha."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ram_avatar.models.renderer import AvatarRenderer, RendererConfig
from ram_avatar.render.composite import (BackgroundError, compose, compose_uint8,
                                         parse_background)


@pytest.fixture(scope="module")
def render_out():
    torch.manual_seed(0)
    model = AvatarRenderer(RendererConfig(resolution=32, texture_size=32, texture_levels=2,
                                          base_channels=8, max_channels=16, style_dim=16,
                                          latent_dim=8)).eval()
    with torch.no_grad():
        model.background_logit.normal_()
        uv = torch.rand(2, 2, 32, 32)
        mask = (torch.rand(2, 1, 32, 32) > 0.5).float()
        out = model(uv, mask, torch.zeros(2, 5, 32, 32), torch.zeros(2, 3, 32, 32))
    return out


def test_parse_background():
    assert parse_background(None).mode == "learned"
    assert parse_background("transparent").has_alpha
    bg = parse_background("#00FF80")
    assert bg.mode == "colour" and bg.colour == (0.0, 1.0, 128 / 255)
    with pytest.raises(BackgroundError, match="not understood"):
        parse_background("no-such-thing.png")


def test_colour_and_image_equal_direct_composite(render_out, tmp_path):
    import cv2

    o = render_out
    bg = parse_background("#3366CC")
    got = compose(o["rgb"], o["alpha"], o["background"], bg)
    c = torch.tensor([0x33, 0x66, 0xCC]).float().view(1, 3, 1, 1) / 255
    want = o["alpha"] * o["fg"] + (1 - o["alpha"]) * c
    assert (got - want).abs().max() < 1e-5
    pic = (np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)
    path = tmp_path / "room.png"
    cv2.imwrite(str(path), pic[..., ::-1])
    img_bg = parse_background(str(path))
    got = compose(o["rgb"], o["alpha"], o["background"], img_bg)
    want = o["alpha"] * o["fg"] + (1 - o["alpha"]) * img_bg.tensor((32, 32))
    assert (got - want).abs().max() < 1e-5
    assert torch.equal(compose(o["rgb"], o["alpha"], o["background"], parse_background("learned")),
                       o["rgb"])


def test_transparent_recovers_foreground_and_alpha(render_out):
    o = render_out
    rgba = compose(o["rgb"], o["alpha"], o["background"], parse_background("transparent"))
    assert rgba.shape == (2, 4, 32, 32)
    assert torch.allclose(rgba[:, 3:], o["alpha"])
    solid = o["alpha"] > 0.05
    assert (rgba[:, :3] - o["fg"]).abs()[solid.expand_as(o["fg"])].max() < 1e-3
    u8 = compose_uint8((o["rgb"].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8),
                       (o["alpha"][:, 0].numpy() * 255).round().astype(np.uint8),
                       (o["background"][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8),
                       parse_background("transparent"))
    assert u8.shape == (2, 32, 32, 4) and u8.dtype == np.uint8
