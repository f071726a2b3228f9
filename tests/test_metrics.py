"""PSNR / SSIM / temporal metrics against hand-computed and independent reference values."""

import math

import numpy as np
import pytest
import torch

from ram_avatar.errors import RamAvatarError
from ram_avatar.eval.metrics import psnr, ssim, ssim_map, temporal_stability


def _pair(b=2, h=48, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h, w, generator=g)
    y = (x + 0.1 * torch.randn(b, 3, h, w, generator=g)).clamp(0, 1)
    return x, y


def _ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Independent reference: skimage's algorithm (gaussian_weights, sigma 1.5, truncate 3.5,
    population covariance, border crop) written with scipy.ndimage for one (H,W,C) image."""
    from scipy.ndimage import gaussian_filter

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for c in range(x.shape[2]):
        a, b = x[..., c].astype(np.float64), y[..., c].astype(np.float64)
        f = lambda im: gaussian_filter(im, sigma=1.5, truncate=3.5)  # noqa: E731
        ux, uy = f(a), f(b)
        vx, vy, vxy = f(a * a) - ux ** 2, f(b * b) - uy ** 2, f(a * b) - ux * uy
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
        vals.append(s[5:-5, 5:-5].mean())
    return float(np.mean(vals))


def test_psnr_known_values():
    x = torch.zeros(2, 3, 8, 8)
    y = x.clone()
    y[0] += 0.1  # MSE 0.01 -> 20 dB
    y[1] += 0.01  # MSE 1e-4 -> 40 dB
    assert torch.allclose(psnr(y, x), torch.tensor([20.0, 40.0]), atol=1e-4)
    same = psnr(x, x)
    assert torch.isfinite(same).all() and torch.allclose(same, torch.tensor([100.0, 100.0]))
    assert psnr(x, x, max_db=60.0)[0].item() == pytest.approx(60.0)


def test_ssim_identical_is_one():
    x, _ = _pair()
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)


def test_ssim_matches_reference_implementation():
    x, y = _pair(b=2, h=50, w=37)
    ours = ssim(x.double(), y.double())
    for i in range(2):
        ref = _ssim_reference(x[i].permute(1, 2, 0).numpy(), y[i].permute(1, 2, 0).numpy())
        assert ours[i].item() == pytest.approx(ref, abs=1e-7)
    # float32 path agrees too
    assert torch.allclose(ssim(x, y).double(), ours, atol=1e-4)


def test_ssim_matches_skimage_if_available():
    metrics = pytest.importorskip("skimage.metrics")
    x, y = _pair(b=1, h=40, w=44, seed=3)
    a, b = x[0].permute(1, 2, 0).numpy(), y[0].permute(1, 2, 0).numpy()
    ref = metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=1.0,
                                        channel_axis=-1)
    assert ssim(x, y)[0].item() == pytest.approx(ref, abs=1e-4)


def test_ssim_is_differentiable():
    x, y = _pair(b=1)
    x.requires_grad_(True)
    (1 - ssim(x, y).mean()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def _mask(b, h, w):
    m = torch.zeros(b, 1, h, w)
    m[:, :, 10:38, 8:30] = 1.0
    return m


def test_masked_metrics_ignore_pixels_outside_mask():
    x, y = _pair()
    m = _mask(2, 48, 40)
    p0, s0 = psnr(x, y, m), ssim(x, y, m)
    x2, y2 = x.clone(), y.clone()
    outside = (m < 0.5).expand_as(x)
    x2[outside] = torch.rand(int(outside.sum()))
    y2[outside] = 0.0
    assert torch.allclose(psnr(x2, y2, m), p0, atol=1e-5)
    assert torch.allclose(ssim(x2, y2, m), s0, atol=1e-6)
    # ... but pixels inside do matter
    x3 = x.clone()
    x3[:, :, 20, 20] += 0.5
    assert not torch.allclose(ssim(x3, y, m), s0, atol=1e-6)


def test_masked_with_full_mask_equals_unmasked():
    x, y = _pair()
    ones = torch.ones(2, 1, 48, 40)
    assert torch.allclose(psnr(x, y, ones), psnr(x, y), atol=1e-5)
    assert torch.allclose(ssim(x, y, ones), ssim(x, y), atol=1e-6)


def test_masked_psnr_known_value_and_empty_mask():
    x = torch.zeros(1, 3, 16, 16)
    y = x.clone()
    y[..., :8, :] = 0.1  # error only in the top half
    y[..., 8:, :] = 0.5
    m = torch.zeros(1, 1, 16, 16)
    m[..., :8, :] = 1
    assert psnr(y, x, m).item() == pytest.approx(20.0, abs=1e-4)
    assert math.isnan(psnr(y, x, torch.zeros_like(m)).item())


def test_ssim_map_shape_and_errors():
    x, y = _pair()
    assert ssim_map(x, y).shape == (2, 3, 38, 30)
    with pytest.raises(RamAvatarError):
        ssim(x, y[:, :, :40])
    with pytest.raises(RamAvatarError):
        ssim(x[:, :, :8, :8], y[:, :, :8, :8])
    with pytest.raises(RamAvatarError):
        psnr(x, y, torch.ones(2, 3, 48, 40))


def test_temporal_stability():
    g = torch.Generator().manual_seed(1)
    real = torch.rand(5, 3, 8, 8, generator=g)
    assert temporal_stability(real, real).item() == 0.0
    assert temporal_stability(real + 0.2, real).item() == pytest.approx(0.0, abs=1e-6)  # offset
    flicker = real.clone()
    flicker[2] += 0.1  # frame 2 brighter: diffs 1->2 and 2->3 off by +-0.1, others 0
    assert temporal_stability(flicker, real).item() == pytest.approx(0.1 * 2 / 4, abs=1e-6)
    with pytest.raises(RamAvatarError):
        temporal_stability(real[:1], real[:1])
