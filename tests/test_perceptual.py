"""VGG19 / AlexNet / VGG16 stacks load torchvision-named state dicts; loaders never use random
weights; LPIPS and VGG losses behave as distances."""

import logging
from pathlib import Path

import pytest
import torch

from ram_avatar.errors import RamAvatarError
from ram_avatar.eval import metrics
from ram_avatar.eval.metrics import (AlexNetFeatures, LPIPS, load_lpips, sha256_file,
                                     temporal_lpips)
from ram_avatar.losses import VGG19Features, VGGPerceptualLoss, load_vgg19, ssim_loss
from ram_avatar.losses.perceptual import build_vgg_loss

# torchvision's key names of vgg19().features (conv layers only carry parameters)
VGG19_CONV_IDX = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
ALEX_CONV_IDX = [0, 3, 6, 8, 10]


@pytest.fixture(autouse=True)
def _isolated_weight_dirs(tmp_path, monkeypatch):
    """No weight files from the real machine: empty $RAM_AVATAR_WEIGHTS and hub dir."""
    monkeypatch.setenv("RAM_AVATAR_WEIGHTS", str(tmp_path / "weights_env"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(metrics, "_lpips_package_weight_dirs", lambda: [])


def _fake_vgg19_checkpoint(path: Path, seed=0) -> dict:
    """A checkpoint with torchvision's exact vgg19 key names and shapes (random values)."""
    g = torch.Generator().manual_seed(seed)
    sd, c_in = {}, 3
    widths = [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]
    for idx, c in zip(VGG19_CONV_IDX, widths):
        std = (2 / (9 * c_in)) ** 0.5
        sd[f"features.{idx}.weight"] = torch.randn(c, c_in, 3, 3, generator=g) * std
        sd[f"features.{idx}.bias"] = torch.zeros(c)
        c_in = c
    sd["classifier.0.weight"] = torch.zeros(4, 4)  # ignored, as torchvision's classifier
    torch.save(sd, path)
    return sd


@pytest.fixture(scope="module")
def vgg19_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / "my_vgg19.pth"
    return path, _fake_vgg19_checkpoint(path)


def test_vgg19_layout_matches_torchvision_keys(tmp_path):
    net = VGG19Features()
    keys = set(net.state_dict())
    expected = {f"features.{i}.{p}" for i in VGG19_CONV_IDX for p in ("weight", "bias")}
    assert keys == expected
    assert len(net.features) == 37


def test_load_vgg19_from_file_and_hash_policy(tmp_path, vgg19_ckpt):
    ck, sd = vgg19_ckpt
    # a different checkpoint: sha256 does not start with dcbb9e9d -> clear error
    with pytest.raises(RamAvatarError, match="sha256"):
        load_vgg19(ck)
    net = load_vgg19(ck, check_hash=False)
    assert torch.equal(net.features[34].weight, sd["features.34.weight"])
    assert not any(p.requires_grad for p in net.parameters())
    # under the canonical name in $RAM_AVATAR_WEIGHTS it is found, and the hash is checked
    env_dir = tmp_path / "weights_env"
    env_dir.mkdir()
    (env_dir / "vgg19-dcbb9e9d.pth").symlink_to(ck)
    with pytest.raises(RamAvatarError, match="dcbb9e9d"):
        load_vgg19()
    assert load_vgg19(check_hash=False) is not None


def test_load_vgg19_wrong_layout_raises(tmp_path):
    ck = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3, 3, 3)}, ck)
    with pytest.raises(RamAvatarError, match="layout"):
        load_vgg19(ck, check_hash=False)


def test_load_vgg19_absent(tmp_path, caplog):
    with pytest.raises(RamAvatarError, match="vgg19-dcbb9e9d.pth"):
        load_vgg19()
    with caplog.at_level(logging.WARNING):
        assert load_vgg19(allow_fallback=True) is None
        assert build_vgg_loss(allow_fallback=True) is None
    assert "vgg19-dcbb9e9d.pth" in caplog.text and "RAM_AVATAR_WEIGHTS" in caplog.text
    with pytest.raises(RamAvatarError, match="does not exist"):
        load_vgg19(tmp_path / "nope.pth", allow_fallback=True)


def test_vgg_loss_is_a_distance_with_gradient(vgg19_ckpt):
    ck, _ = vgg19_ckpt
    loss_fn = build_vgg_loss(ck, check_hash=False)
    assert isinstance(loss_fn, VGGPerceptualLoss)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=g)
    y = torch.rand(1, 3, 32, 32, generator=g)
    assert loss_fn(x, x).item() == 0.0
    p = x.clone().requires_grad_(True)
    loss = loss_fn(p, y)
    loss.backward()
    assert loss.item() > 0 and p.grad.abs().sum() > 0
    loss_fn.train()
    assert not loss_fn.vgg.training


def test_ssim_loss():
    x = torch.rand(2, 3, 24, 24)
    assert ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    p = torch.rand(2, 3, 24, 24, requires_grad=True)
    ssim_loss(p, x).backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()


def _fake_alex_files(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    net = AlexNetFeatures()
    sd = dict(net.state_dict())
    sd["classifier.1.weight"] = torch.zeros(2, 2)
    torch.save(sd, folder / "alexnet-owt-7be5be79.pth")
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1)
             for k, c in enumerate((64, 192, 384, 256, 256))}
    torch.save(heads, folder / "lpips_v0.1_alex.pth")


def test_load_lpips_absent_returns_none(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert load_lpips("alex") is None
    assert "alexnet-owt-7be5be79.pth" in caplog.text
    # backbone present but heads missing -> still None, naming the head file
    d = tmp_path / "weights_env"
    _fake_alex_files(d)
    (d / "lpips_v0.1_alex.pth").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load_lpips("alex", check_hash=False) is None
    assert "lpips_v0.1_alex.pth" in caplog.text


def test_lpips_refuses_random_weights():
    with pytest.raises(RamAvatarError):
        LPIPS("alex")(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))


def test_load_lpips_with_files(tmp_path):
    d = tmp_path / "w"
    _fake_alex_files(d)
    with pytest.raises(RamAvatarError, match="sha256"):
        load_lpips("alex", backbone_path=d, head_path=d)
    model = load_lpips("alex", backbone_path=d, head_path=d, check_hash=False)
    assert model is not None and not model.training
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g)
    y = torch.rand(2, 3, 64, 64, generator=g)
    assert torch.allclose(model(x, x), torch.zeros(2))
    d_xy = model(x, y)
    assert d_xy.shape == (2,) and (d_xy > 0).all()
    assert torch.allclose(d_xy, model(y, x), atol=1e-6)
    seq = torch.rand(3, 3, 64, 64, generator=g)
    assert temporal_lpips(model, seq, seq).item() == pytest.approx(0.0, abs=1e-7)


def test_sha256_file(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
