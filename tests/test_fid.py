"""FID: Fréchet distance against closed forms; loading/calling the TorchScript metric network
through a tiny stand-in with the NVlabs signature; absent / corrupt weight files."""

import logging

import numpy as np
import pytest
import torch

from ram_avatar.errors import RamAvatarError
from ram_avatar.eval import fid as fidmod
from ram_avatar.eval.fid import (
    FID_WEIGHTS_FILE, compute_fid, compute_fid_with_note, fid_from_features, find_fid_weights,
    frechet_distance, inception_features, load_fid_inception,
)


class _StandIn(torch.nn.Module):
    """Same call signature as NVlabs' inception-2015-12-05.pt: uint8 NCHW in, (N, 2048) out."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Parameter(torch.randn(3 * 4 * 4, 2048, generator=g) * 0.1)
        self.head = torch.nn.Parameter(torch.randn(2048, 1008, generator=g) * 0.01)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise RuntimeError("expected uint8 images")
        y = torch.nn.functional.adaptive_avg_pool2d(x.to(torch.float32) / 255.0, 4)
        f = torch.tanh(y.flatten(1) @ self.proj)
        if return_features:
            return f
        return f @ self.head


@pytest.fixture()
def no_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("RAM_AVATAR_WEIGHTS", str(tmp_path / "w"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(fidmod, "_missing_logged", False)
    return tmp_path


@pytest.fixture()
def standin_file(tmp_path):
    d = tmp_path / "weights"
    d.mkdir()
    p = d / FID_WEIGHTS_FILE
    torch.jit.save(torch.jit.script(_StandIn()), str(p))
    return p


def _images(n, seed, shift=0.0, size=16):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 0.8 + shift).clamp(0, 1)


# ---------------------------------------------------------------- Fréchet distance


def test_frechet_isotropic_closed_form():
    d, a, b = 16, 0.7, 1.9
    mu1, mu2 = np.zeros(d), np.linspace(-1, 1, d)
    val = frechet_distance(mu1, a * a * np.eye(d), mu2, b * b * np.eye(d))
    assert val == pytest.approx(mu2 @ mu2 + d * (a - b) ** 2, rel=1e-9)


def test_frechet_diagonal_closed_form_and_symmetry():
    rng = np.random.default_rng(1)
    d = 12
    s1, s2 = rng.uniform(0.2, 2.0, d), rng.uniform(0.2, 2.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    ab = frechet_distance(mu1, np.diag(s1 ** 2), mu2, np.diag(s2 ** 2))
    ba = frechet_distance(mu2, np.diag(s2 ** 2), mu1, np.diag(s1 ** 2))
    assert ab == pytest.approx(expected, rel=1e-9)
    assert ba == pytest.approx(ab, rel=1e-9)


def test_frechet_full_covariance_symmetric_and_zero_for_identical():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    s1, s2 = a @ a.T + 0.1 * np.eye(8), b @ b.T + 0.1 * np.eye(8)
    mu = rng.normal(size=8)
    assert frechet_distance(mu, s1, mu + 1, s2) == pytest.approx(
        frechet_distance(mu + 1, s2, mu, s1), rel=1e-7)
    assert frechet_distance(mu, s1, mu, s1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_singular_covariances_finite():
    # rank-1 covariances: the product is singular, sqrtm needs the safeguards
    v = np.zeros(6)
    v[0] = 1.0
    w = np.zeros(6)
    w[1] = 1.0
    val = frechet_distance(np.zeros(6), np.outer(v, v), np.zeros(6), 4 * np.outer(w, w))
    assert np.isfinite(val) and val == pytest.approx(1.0 + 4.0, abs=1e-3)


def test_frechet_shape_mismatch():
    with pytest.raises(RamAvatarError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_fid_from_features_identical_symmetric_and_both_paths_agree():
    rng = np.random.default_rng(3)
    f1 = rng.normal(size=(10, 16))
    f2 = rng.normal(size=(14, 16)) * 1.5 + 0.3
    assert fid_from_features(f1, f1) == pytest.approx(0.0, abs=1e-8)
    low = fid_from_features(f1, f2)  # N < D: nuclear-norm form
    assert low > 0 and low == pytest.approx(fid_from_features(f2, f1), rel=1e-9)
    # same statistics through sqrtm on the (rank-deficient) covariances
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1 = np.cov(f1, rowvar=False, bias=True)
    s2 = np.cov(f2, rowvar=False, bias=True)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(low, rel=1e-5)
    # N >= D: sqrtm path, against np.cov with ddof=1 (pytorch-fid convention)
    g1, g2 = rng.normal(size=(40, 6)), rng.normal(size=(50, 6)) + 0.5
    ref = frechet_distance(g1.mean(0), np.cov(g1, rowvar=False), g2.mean(0),
                           np.cov(g2, rowvar=False))
    assert fid_from_features(g1, g2, ddof=1) == pytest.approx(ref, rel=1e-9)


def test_fid_from_features_too_few_samples():
    with pytest.raises(RamAvatarError, match="at least 2"):
        fid_from_features(np.zeros((1, 4)), np.zeros((3, 4)))


# ---------------------------------------------------------------- network file


def test_standin_loads_and_compute_fid(standin_file, no_weights):
    det = load_fid_inception(standin_file)
    assert isinstance(det, torch.jit.ScriptModule) and not det.training
    a, b = _images(6, 0), _images(7, 1, shift=0.2)
    feats = inception_features(det, a, batch=4)
    assert feats.shape == (6, 2048) and feats.dtype == np.float64
    val = compute_fid(a, b, weights=standin_file)
    assert np.isfinite(val) and val > 0
    assert compute_fid(a, a.clone(), weights=standin_file.parent) == pytest.approx(0.0, abs=1e-6)


def test_weights_found_through_env_and_hub_cache(standin_file, no_weights, monkeypatch):
    assert find_fid_weights() is None
    monkeypatch.setenv("RAM_AVATAR_WEIGHTS", str(standin_file.parent))
    assert find_fid_weights() == standin_file
    monkeypatch.setenv("RAM_AVATAR_WEIGHTS", "")
    ckpt = no_weights / "torch_home" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / FID_WEIGHTS_FILE).write_bytes(standin_file.read_bytes())
    assert find_fid_weights() == ckpt / FID_WEIGHTS_FILE


def test_corrupt_file_clear_error(tmp_path):
    bad = tmp_path / FID_WEIGHTS_FILE
    bad.write_bytes(b"not a zip archive" * 10)
    with pytest.raises(RamAvatarError, match="not a loadable TorchScript"):
        load_fid_inception(bad)
    sd = tmp_path / "sd" / FID_WEIGHTS_FILE
    sd.parent.mkdir()
    torch.save({"w": torch.zeros(2)}, sd)  # a state dict, not TorchScript
    with pytest.raises(RamAvatarError, match="TorchScript"):
        load_fid_inception(sd)


def test_explicit_missing_path_raises(tmp_path):
    with pytest.raises(RamAvatarError, match="does not exist"):
        compute_fid(_images(2, 0), _images(2, 1), weights=tmp_path / "nope.pt")


def test_absent_weights_none_logged_once(no_weights, caplog):
    a, b = _images(3, 0), _images(3, 1)
    with caplog.at_level(logging.WARNING, logger="ram_avatar.eval.fid"):
        assert compute_fid(a, b) is None
        assert compute_fid(a, b) is None
    msgs = [r for r in caplog.records if FID_WEIGHTS_FILE in r.getMessage()]
    assert len(msgs) == 1
    val, note = compute_fid_with_note(a, b)
    assert val is None and FID_WEIGHTS_FILE in note


def test_bad_image_shape(standin_file):
    det = load_fid_inception(standin_file)
    with pytest.raises(RamAvatarError, match=r"\(N, 3, H, W\)"):
        inception_features(det, torch.rand(3, 16, 16))
