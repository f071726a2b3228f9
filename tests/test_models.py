"""Renderer v1 models: neural texture, StyleUNet, AvatarRenderer (CPU, small sizes)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from ram_avatar.models import AvatarRenderer, NeuralTexture, RendererConfig, StyleUNet
from ram_avatar.models.styleunet import InverseHaar, ModulatedConv2d


def tiny_config(resolution: int = 64, **kw) -> RendererConfig:
    base = dict(resolution=resolution, texture_channels=4, texture_size=64, texture_levels=2,
                base_channels=4, max_channels=16, style_dim=16, latent_dim=8, num_frames=5)
    base.update(kw)
    return RendererConfig(**base)


def random_maps(batch: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    uv = torch.rand(batch, 2, size, size, generator=g)
    mask = (torch.rand(batch, 1, size, size, generator=g) > 0.3).float()
    hand = (torch.rand(batch, 5, size, size, generator=g) > 0.95).float()
    face = (torch.rand(batch, 3, size, size, generator=g) > 0.95).float()
    return uv * mask, mask, hand, face


@pytest.mark.parametrize("size,wavelet", [(64, True), (128, True), (128, False), (256, True)])
def test_renderer_shapes_and_ranges(size, wavelet):
    torch.manual_seed(0)
    model = AvatarRenderer(tiny_config(size, wavelet_output=wavelet))
    uv, mask, hand, face = random_maps(2, size)
    with torch.no_grad():
        out = model(uv, mask, hand, face, torch.tensor([0, 3]))
    for key, c in (("rgb", 3), ("alpha", 1), ("fg", 3), ("alpha_logit", 1)):
        assert out[key].shape == (2, c, size, size), key
        assert torch.isfinite(out[key]).all(), key
    for key in ("rgb", "alpha", "fg"):
        assert out[key].min() >= 0 and out[key].max() <= 1, key
    assert out["background"].shape == (1, 3, size, size)


def test_cpu_preset_renderer_at_256():
    from ram_avatar.training import get_preset

    cfg = get_preset("cpu-256-v1").model
    cfg.num_frames = 3
    model = AvatarRenderer(cfg)
    uv, mask, hand, face = random_maps(1, 256)
    with torch.no_grad():
        out = model(uv, mask, hand, face)
    assert out["rgb"].shape == (1, 3, 256, 256)
    assert model.generator.channels[128] == 16 and model.generator.channels[8] == 64


def test_background_initialised_grey():
    model = AvatarRenderer(tiny_config())
    assert torch.allclose(model.background(), torch.full((1, 3, 64, 64), 0.5))


def test_frame_index_none_uses_mean_of_trained_latents():
    torch.manual_seed(0)
    model = AvatarRenderer(tiny_config()).eval()
    gen = model.generator
    with torch.no_grad():
        gen.latents.weight.normal_()
    uv, mask, hand, face = random_maps(2, 64)
    # no frame marked yet: mean over all rows
    assert torch.allclose(gen.mean_latent(), gen.latents.weight.mean(0, keepdim=True))
    gen.mark_trained(torch.tensor([1, 3]))
    mean = (gen.latents.weight[1] + gen.latents.weight[3]) / 2
    assert torch.allclose(gen.mean_latent()[0], mean, atol=1e-6)
    with torch.no_grad():
        out_none = model(uv, mask, hand, face, None)["rgb"]
        # the same result with the per-frame latent table set to the mean latent
        gen.latents.weight[0] = mean
        out_mean = model(uv, mask, hand, face, torch.tensor([0, 0]))["rgb"]
        out_frame = model(uv, mask, hand, face, torch.tensor([1, 1]))["rgb"]
    assert torch.allclose(out_none, out_mean, atol=1e-6)
    assert not torch.allclose(out_none, out_frame, atol=1e-4)


def test_gradients_reach_texture_and_generator():
    torch.manual_seed(0)
    model = AvatarRenderer(tiny_config())
    with torch.no_grad():  # latents start at zero (first mapping weight would get no gradient)
        model.generator.latents.weight.normal_()
    uv, mask, hand, face = random_maps(2, 64)
    out = model(uv, mask, hand, face, torch.tensor([0, 2]))
    target = torch.rand_like(out["rgb"])
    loss = F.l1_loss(out["rgb"], target) + out["alpha_logit"].square().mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        if name == "generator.latents.weight":
            used = p.grad[[0, 2]].abs().sum(dim=1)
            unused = p.grad[[1, 3, 4]].abs().sum()
            assert (used > 0).all() and unused == 0
        else:
            assert p.grad.abs().sum() > 0, name
    for level in model.texture.textures:
        assert level.grad.abs().sum() > 0


def test_batch_independence():
    torch.manual_seed(0)
    model = AvatarRenderer(tiny_config()).eval()
    uv, mask, hand, face = random_maps(3, 64, seed=1)
    fi = torch.tensor([0, 4, 2])
    with torch.no_grad():
        full = model(uv, mask, hand, face, fi)
        full_mean = model(uv, mask, hand, face, None)
        for i in range(3):
            one = model(uv[i:i + 1], mask[i:i + 1], hand[i:i + 1], face[i:i + 1], fi[i:i + 1])
            one_mean = model(uv[i:i + 1], mask[i:i + 1], hand[i:i + 1], face[i:i + 1], None)
            for key in ("rgb", "alpha", "fg"):
                assert torch.allclose(full[key][i:i + 1], one[key], atol=1e-5), key
                assert torch.allclose(full_mean[key][i:i + 1], one_mean[key], atol=1e-5), key


def test_texture_uv_convention():
    """u -> column, v up: texel row = (1 - v) * S; [0,1] spans the whole texture."""
    tex = NeuralTexture(channels=1, size=8, levels=1)
    with torch.no_grad():
        tex.textures[0].copy_(torch.arange(64.0).view(1, 1, 8, 8))
    rows, cols = torch.tensor([0, 2, 7, 5]), torch.tensor([0, 6, 3, 7])
    u = (cols + 0.5) / 8
    v = 1 - (rows + 0.5) / 8
    uv = torch.stack([u, v]).view(1, 2, 1, 4)
    got = tex(uv, torch.ones(1, 1, 1, 4)).flatten()
    assert torch.allclose(got, (rows * 8 + cols).float())
    # masked pixels are zero
    assert tex(uv, torch.zeros(1, 1, 1, 4)).abs().max() == 0


def test_texture_pyramid_levels_sum():
    tex = NeuralTexture(channels=2, size=16, levels=3, init_std=1.0)
    assert [t.shape[-1] for t in tex.textures] == [16, 8, 4]
    uv, mask, _, _ = random_maps(1, 8)
    full = tex.full_texture()
    assert full.shape == (1, 2, 16, 16)
    assert tex(uv, mask).shape == (1, 2, 8, 8)


def _fused_modconv(x, style, mod: ModulatedConv2d):
    """StyleGAN2 reference: per-sample modulated+demodulated weights, grouped convolution."""
    b, cin, h, w = x.shape
    s = mod.modulation(style).view(b, 1, cin, 1, 1)
    weight = mod.weight[None] * mod.scale * s
    if mod.demodulate:
        weight = weight * torch.rsqrt(weight.square().sum([2, 3, 4]) + 1e-8).view(b, -1, 1, 1, 1)
    weight = weight.view(b * mod.out_ch, cin, *mod.weight.shape[2:])
    out = F.conv2d(x.reshape(1, b * cin, h, w), weight, padding=mod.padding, groups=b)
    return out.view(b, mod.out_ch, h, w)


@pytest.mark.parametrize("demodulate", [True, False])
def test_nonfused_modulation_equals_fused(demodulate):
    torch.manual_seed(0)
    mod = ModulatedConv2d(6, 5, 3, style_dim=7, demodulate=demodulate)
    x = torch.randn(3, 6, 10, 10)
    style = torch.randn(3, 7)
    assert torch.allclose(mod(x, style), _fused_modconv(x, style, mod), atol=1e-5)


def test_inverse_haar_inverts_haar_analysis():
    x = torch.randn(2, 3, 8, 8)
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    bands = torch.stack([(a + b + c + d) / 2, (a + b - c - d) / 2,
                         (a - b + c - d) / 2, (a - b - c + d) / 2], dim=2)  # (B,C,4,H,W)
    rebuilt = InverseHaar(3)(bands.flatten(1, 2))
    assert torch.allclose(rebuilt, x, atol=1e-6)


def test_styleunet_rejects_bad_size():
    with pytest.raises(ValueError):
        StyleUNet(in_channels=4, size=96)


def test_preset_parameter_counts():
    from ram_avatar.models import count_parameters
    from ram_avatar.training import get_preset

    cfg = get_preset("cpu-256-v1").model
    cfg.num_frames = 100
    n = count_parameters(AvatarRenderer(cfg))
    assert 1e6 < n < 5e6  # tiny: mostly the 16-channel texture pyramid
    g = StyleUNet(in_channels=48 + 9, size=1024, base_channels=64, max_channels=512,
                  style_dim=512, latent_dim=512, num_frames=1)
    assert g.channels == {512: 64, 256: 128, 128: 256, 64: 512, 32: 512, 16: 512, 8: 512}


def test_onnx_export_dynamic_batch(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    del onnx
    torch.manual_seed(0)
    model = AvatarRenderer(tiny_config()).eval()

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, uv, body_mask, hand, face):
            out = self.m(uv, body_mask, hand, face, None)
            return out["rgb"], out["alpha"]

    names = ["uv", "body_mask", "hand", "face"]
    path = tmp_path / "r.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapper(model), random_maps(2, 64), str(path), input_names=names,
                          output_names=["rgb", "alpha"], opset_version=17, dynamo=False,
                          dynamic_axes={k: {0: "batch"} for k in names + ["rgb", "alpha"]})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        maps = random_maps(batch, 64, seed=batch)
        with torch.no_grad():
            ref = Wrapper(model)(*maps)
        got = sess.run(None, {k: v.numpy() for k, v in zip(names, maps)})
        for r, o in zip(ref, got):
            assert math.isclose(float((r - torch.from_numpy(o)).abs().max()), 0.0, abs_tol=1e-4)
