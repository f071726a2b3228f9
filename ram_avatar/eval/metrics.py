"""Image-quality metrics of the paper's evaluation (RAM-Avatar Sec. 4.2): PSNR, SSIM, LPIPS,
tLPIPS, plus a cheap temporal-stability score.

All image tensors are ``(B, C, H, W)`` (C = 3 for RGB) float in ``[0, 1]``; every metric returns
one value per image, shape ``(B,)``, so callers can average over a test set as they like.

Masks (``(B, 1, H, W)``, binarised at 0.5) restrict a metric to the person: pixels outside the
mask have no influence on the value at all (see :func:`ssim` for how the local window statistics
are restricted). An image whose mask is empty gives NaN.

Pretrained networks. LPIPS (Zhang et al., CVPR 2018, "v0.1") needs two kinds of weights, and
neither is downloaded or ever replaced by random weights here:

* the ImageNet backbone, torchvision's standard checkpoint files ``alexnet-owt-7be5be79.pth``
  (net="alex") or ``vgg16-397923af.pth`` (net="vgg"); our own :class:`AlexNetFeatures` /
  :class:`VGG16Features` reproduce torchvision's ``features`` layer layout so those files load
  as they are. The 8 hex characters in the file names are the sha256 prefix, which is verified.
* the LPIPS linear heads, ``weights/v0.1/alex.pth`` / ``vgg.pth`` from the ``lpips`` package
  (BSD-2, a few KB, pinned by full sha256). ``pip install --no-deps lpips`` is enough: it is
  located with :func:`importlib.util.find_spec`, never imported (it imports torchvision).

Search order for every weight file: an explicit path (file or folder), then each folder in
``$RAM_AVATAR_WEIGHTS`` (``os.pathsep``-separated), then the torch hub cache
``torch.hub.get_dir()/checkpoints`` (where torchvision itself saves these files).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ram_avatar.errors import RamAvatarError
from ram_avatar.utils import sha256_file  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

__all__ = [
    "psnr", "ssim", "ssim_map", "temporal_stability", "temporal_lpips",
    "LPIPS", "load_lpips", "AlexNetFeatures", "VGG16Features",
    "TapFeatures", "make_vgg_layers", "weight_search_dirs", "find_weight_file", "sha256_file",
    "load_feature_state_dict",
    "WEIGHTS_ENV",
]

WEIGHTS_ENV = "RAM_AVATAR_WEIGHTS"

# torchvision's ImageNet checkpoints: file name -> (sha256 prefix, download URL for the message)
TORCHVISION_FILES = {
    "alexnet": ("alexnet-owt-7be5be79.pth", "7be5be79",
                "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "vgg16": ("vgg16-397923af.pth", "397923af",
              "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "vgg19": ("vgg19-dcbb9e9d.pth", "dcbb9e9d",
              "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"),
}

# LPIPS v0.1 linear heads as shipped in the lpips 0.1.4 wheel (weights/v0.1/<net>.pth).
LPIPS_HEAD_SHA256 = {
    "alex": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    "vgg": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
}


# ----------------------------------------------------------------------------------------------
# checks


def _check_pair(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None,
                name: str) -> None:
    if pred.dim() != 4 or pred.shape != target.shape:
        raise RamAvatarError(
            f"{name}: pred and target must both be (B,C,H,W) with the same shape, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}; resize the prediction to the "
            "ground-truth resolution first")
    if mask is not None:
        b, _, h, w = pred.shape
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != b or mask.shape[2:] != (h, w):
            raise RamAvatarError(
                f"{name}: mask must be (B,1,H,W) = ({b},1,{h},{w}), got {tuple(mask.shape)}")


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _binary_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return (mask > 0.5).to(like.dtype)


# ----------------------------------------------------------------------------------------------
# PSNR


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
         data_range: float = 1.0, max_db: float = 100.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, one value per image.

    ``PSNR = 10 log10(data_range^2 / MSE)`` with the MSE averaged over channels and pixels (only
    pixels inside ``mask`` when given).

    Args:
        pred, target: (B,C,H,W) in [0, data_range].
        mask: optional (B,1,H,W); binarised at 0.5. Empty mask -> NaN for that image.
        data_range: peak value (1 for [0,1] images).
        max_db: identical images (MSE 0) would give +inf; the value is capped at ``max_db``.

    Returns:
        (B,) tensor of PSNR in dB.

    Raises:
        RamAvatarError: shapes disagree.
    """
    _check_pair(pred, target, mask, "psnr")
    pred, target = _float(pred), _float(target)
    err = (pred - target) ** 2
    if mask is None:
        mse = err.flatten(1).mean(1)
    else:
        m = _binary_mask(mask, err)
        mse = (err * m).flatten(1).sum(1) / (m.flatten(1).sum(1) * err.shape[1])
    min_mse = data_range ** 2 * 10.0 ** (-max_db / 10.0)
    return 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(min_mse))


# ----------------------------------------------------------------------------------------------
# SSIM


def _gaussian_1d(win_size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(win_size, device=device, dtype=torch.float64) - (win_size - 1) / 2.0
    g = torch.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return (g / g.sum()).to(dtype)


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter per channel, 'valid' (no padding): (B,C,H,W)->(B,C,H-k+1,W-k+1)."""
    c = x.shape[1]
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim_map(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
             data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5,
             k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-pixel, per-channel SSIM map (Wang et al. 2004, Gaussian window), differentiable.

    The map covers the 'valid' region only: (B,C,H-win_size+1,W-win_size+1), as in Wang's
    reference code and ``skimage.metrics.structural_similarity`` (which crops the same border).

    With a mask the local means/variances/covariance are mask-normalised Gaussian averages
    (``G*(m x) / G*m``), i.e. computed from masked pixels only; with an all-ones mask this is
    exactly the standard SSIM map.
    """
    if min(pred.shape[-2:]) < win_size:
        raise RamAvatarError(
            f"ssim: images of {tuple(pred.shape[-2:])} px are smaller than the {win_size}-px "
            "window; evaluate at a higher resolution")
    g = _gaussian_1d(win_size, sigma, pred.device, pred.dtype)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    stack = torch.cat([pred, target, pred * pred, target * target, pred * target], 1)
    c = pred.shape[1]
    if mask is None:
        stats = _filter_valid(stack, g)
    else:
        m = _binary_mask(mask, pred)
        wsum = _filter_valid(m, g).clamp_min(1e-8)
        stats = _filter_valid(stack * m, g) / wsum
    mu_x, mu_y, exx, eyy, exy = stats.split(c, dim=1)
    sxx = exx - mu_x * mu_x
    syy = eyy - mu_y * mu_y
    sxy = exy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2)
    return num / den


def ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
         data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity (Wang et al., IEEE TIP 2004), one value per image, differentiable.

    Standard settings: 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, population
    (not sample) covariance, computed per channel and averaged over channels and the valid
    region (border of ``win_size // 2`` pixels excluded). This equals
    ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1)``.

    Masked SSIM: the window statistics use only masked pixels (mask-normalised Gaussian
    weights) and the SSIM map is averaged over masked pixels of the valid region, so pixels
    outside the mask do not influence the result.

    Args:
        pred, target: (B,C,H,W) in [0, data_range], H and W >= win_size.
        mask: optional (B,1,H,W), binarised at 0.5; an empty mask (in the valid region) gives NaN.

    Returns:
        (B,) tensor, 1.0 for identical images.

    Raises:
        RamAvatarError: shapes disagree or images are smaller than the window.
    """
    _check_pair(pred, target, mask, "ssim")
    pred, target = _float(pred), _float(target)
    smap = ssim_map(pred, target, mask, data_range, win_size, sigma, k1, k2)
    if mask is None:
        return smap.flatten(1).mean(1)
    r = win_size // 2
    mc = _binary_mask(mask, smap)[:, :, r:r + smap.shape[2], r:r + smap.shape[3]]
    return (smap * mc).flatten(1).sum(1) / (mc.flatten(1).sum(1) * smap.shape[1])


# ----------------------------------------------------------------------------------------------
# temporal


def _check_seq(pred_seq: torch.Tensor, real_seq: torch.Tensor, name: str) -> None:
    if pred_seq.dim() != 4 or pred_seq.shape != real_seq.shape:
        raise RamAvatarError(f"{name}: sequences must both be (T,C,H,W) with the same shape, got "
                             f"{tuple(pred_seq.shape)} and {tuple(real_seq.shape)}")
    if pred_seq.shape[0] < 2:
        raise RamAvatarError(f"{name}: needs at least 2 frames, got {pred_seq.shape[0]}")


def temporal_stability(pred_seq: torch.Tensor, real_seq: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between consecutive-frame differences of generated and real video.

    ``mean_t |(pred[t] - pred[t-1]) - (real[t] - real[t-1])|`` over t = 1..T-1, channels and
    pixels. 0 when the generated video changes exactly like the real one (lower is better;
    flicker raises it).

    Args:
        pred_seq, real_seq: (T,C,H,W) in [0,1], T >= 2, consecutive frames.

    Returns:
        scalar tensor.
    """
    _check_seq(pred_seq, real_seq, "temporal_stability")
    pred_seq, real_seq = _float(pred_seq), _float(real_seq)
    dp = pred_seq[1:] - pred_seq[:-1]
    dr = real_seq[1:] - real_seq[:-1]
    return (dp - dr).abs().mean()


@torch.no_grad()
def temporal_lpips(model: "LPIPS", pred_seq: torch.Tensor, real_seq: torch.Tensor,
                   batch_size: int = 8) -> torch.Tensor:
    """tLPIPS (tLP of Chu et al., TecoGAN 2020), as used by RAM-Avatar Sec. 4.2.

    ``mean_t |LPIPS(pred[t], pred[t-1]) - LPIPS(real[t], real[t-1])|``: how differently the
    generated video changes between consecutive frames, perceptually. Papers often report it
    multiplied by 100; this returns the raw value.

    Args:
        model: a loaded :class:`LPIPS`.
        pred_seq, real_seq: (T,3,H,W) in [0,1], T >= 2.

    Returns:
        scalar tensor.
    """
    _check_seq(pred_seq, real_seq, "temporal_lpips")
    dev = next(model.parameters()).device
    diffs = []
    for s in range(1, pred_seq.shape[0], batch_size):
        e = min(s + batch_size, pred_seq.shape[0])
        p_cur, p_prev = pred_seq[s:e].to(dev), pred_seq[s - 1:e - 1].to(dev)
        r_cur, r_prev = real_seq[s:e].to(dev), real_seq[s - 1:e - 1].to(dev)
        diffs.append((model(p_cur, p_prev) - model(r_cur, r_prev)).abs().cpu())
    return torch.cat(diffs).mean()


# ----------------------------------------------------------------------------------------------
# weight files


def weight_search_dirs() -> list[Path]:
    """Folders searched for weight files: entries of $RAM_AVATAR_WEIGHTS, then the hub cache."""
    dirs: list[Path] = []
    env = os.environ.get(WEIGHTS_ENV, "")
    for part in env.split(os.pathsep):
        if part.strip():
            dirs.append(Path(part.strip()).expanduser())
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def find_weight_file(names: str | Sequence[str], path: str | os.PathLike | None = None,
                     extra_dirs: Iterable[Path] = ()) -> Path | None:
    """Find a weight file by name.

    Args:
        names: acceptable file names (relative paths allowed, e.g. ``lpips/v0.1/alex.pth``).
        path: explicit file, or folder holding one of ``names``. Searched first.
        extra_dirs: further folders, searched after $RAM_AVATAR_WEIGHTS and the hub cache.

    Returns:
        the first existing file, or None.

    Raises:
        RamAvatarError: ``path`` was given but does not exist (a user typo should not silently
            fall through to another file).
    """
    if isinstance(names, str):
        names = [names]
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        if p.is_dir():
            for n in names:
                if (p / n).is_file():
                    return p / n
        elif not p.exists():
            raise RamAvatarError(f"weight file or folder {p} does not exist; check the path "
                                 f"(expected a file named {names[0]})")
    for d in [*weight_search_dirs(), *extra_dirs]:
        for n in names:
            if (d / n).is_file():
                return d / n
    return None




def _verify_sha(path: Path, expected: str, check_hash: bool) -> None:
    if not check_hash:
        return
    digest = sha256_file(path)
    if not digest.startswith(expected):
        raise RamAvatarError(
            f"{path}: sha256 {digest[:16]}... does not match the expected {expected}...; the file "
            "is corrupt (re-download it) or a different checkpoint. To load a different "
            "checkpoint with the same layout on purpose, pass check_hash=False.")


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unreadable file the same way
        raise RamAvatarError(f"could not read weights from {path}: {e}; re-download the file"
                             ) from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise RamAvatarError(f"{path} does not hold a state dict (found {type(sd).__name__})")
    return sd


def load_feature_state_dict(module: nn.Module, path: Path, expected_sha_prefix: str | None,
                            check_hash: bool = True) -> None:
    """Load the ``features.*`` tensors of a torchvision classification checkpoint into ``module``.

    ``module`` must have a ``features`` ``nn.Sequential`` laid out like torchvision's. Other keys
    (``classifier.*``) are ignored; every ``features`` parameter must be present with the right
    shape.

    Raises:
        RamAvatarError: sha256 mismatch (when ``check_hash``), unreadable file, missing keys or
            wrong shapes.
    """
    if expected_sha_prefix is not None:
        _verify_sha(path, expected_sha_prefix, check_hash)
    sd = _load_state_dict_file(path)
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    feats = {k: v for k, v in sd.items() if k.startswith("features.")}
    own = module.state_dict()
    missing = [k for k in own if k not in feats]
    unexpected = [k for k in feats if k not in own]
    bad = [f"{k}: {tuple(feats[k].shape)} vs {tuple(own[k].shape)}"
           for k in own if k in feats and feats[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise RamAvatarError(
            f"{path} does not match the {type(module).__name__} layout (torchvision key names): "
            f"missing {missing[:4]}, unexpected {unexpected[:4]}, wrong shapes {bad[:4]}; "
            "use the standard torchvision ImageNet checkpoint")
    module.load_state_dict({k: feats[k].float() for k in own}, strict=True)


# ----------------------------------------------------------------------------------------------
# backbones (torchvision `features` layouts)


class TapFeatures(nn.Module):
    """A torchvision-style ``features`` Sequential returning activations after chosen indices."""

    def __init__(self, layers: list[nn.Module], taps: Sequence[int]):
        super().__init__()
        self.features = nn.Sequential(*layers)
        self.taps = tuple(taps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        last = max(self.taps)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
            if i == last:
                break
        return out


def make_vgg_layers(cfg: Sequence[int | str]) -> list[nn.Module]:
    """torchvision ``vgg.make_layers`` (no batch norm): ints are 3x3 conv widths, 'M' max-pool."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            c_in = int(v)
    return layers


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
             512, 512, 512, "M"]


class AlexNetFeatures(TapFeatures):
    """torchvision ``alexnet().features`` (keys ``features.{0,3,6,8,10}.weight/bias``).

    Returns relu1..relu5 activations (indices 1, 4, 7, 9, 11), as LPIPS uses them.
    Input: ImageNet/LPIPS-normalised (B,3,H,W).
    """

    def __init__(self):
        layers = [
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=False),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=False),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=False),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=False),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=False),
            nn.MaxPool2d(kernel_size=3, stride=2),
        ]
        super().__init__(layers, taps=(1, 4, 7, 9, 11))
        self.channels = (64, 192, 384, 256, 256)


class VGG16Features(TapFeatures):
    """torchvision ``vgg16().features`` (keys ``features.N.weight/bias``).

    Returns relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (indices 3, 8, 15, 22, 29), as LPIPS
    uses them.
    """

    def __init__(self):
        super().__init__(make_vgg_layers(VGG16_CFG), taps=(3, 8, 15, 22, 29))
        self.channels = (64, 128, 256, 512, 512)


# ----------------------------------------------------------------------------------------------
# LPIPS


class _NetLinLayer(nn.Module):
    """LPIPS linear head: (dropout) + 1x1 conv without bias; key ``model.1.weight`` as in lpips."""

    def __init__(self, c_in: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(c_in, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """Learned Perceptual Image Patch Similarity (Zhang et al., CVPR 2018), v0.1, frozen.

    Same computation as ``lpips.LPIPS(net=..., version='0.1')(x, y, normalize=True)``: inputs
    mapped to [-1,1], LPIPS scaling layer, backbone activations unit-normalised over channels,
    squared differences weighted by the linear heads, spatially averaged and summed over layers.

    Build it with :func:`load_lpips`; a bare ``LPIPS()`` has random weights and refuses to run
    until weights were loaded (``weights_loaded``).

    forward(pred, target): (B,3,H,W) in [0,1] -> (B,) distances (0 for identical images).
    """

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net in ("alex", "alexnet"):
            self.net_name = "alex"
            self.net = AlexNetFeatures()
        elif net in ("vgg", "vgg16"):
            self.net_name = "vgg"
            self.net = VGG16Features()
        else:
            raise RamAvatarError(f"LPIPS net must be 'alex' or 'vgg', got {net!r}")
        chns = self.net.channels
        self.lin0, self.lin1, self.lin2, self.lin3, self.lin4 = (_NetLinLayer(c) for c in chns)
        self.register_buffer("shift", torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("scale", torch.tensor([.458, .448, .450]).view(1, 3, 1, 1),
                             persistent=False)
        self.weights_loaded = False
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        # always evaluation mode: the heads' dropout must never be active
        return super().train(False)

    @property
    def lins(self) -> list[nn.Module]:
        return [self.lin0, self.lin1, self.lin2, self.lin3, self.lin4]

    def load_heads(self, path: Path, check_hash: bool = True) -> None:
        """Load the lpips v0.1 linear heads (``lin{k}.model.1.weight``) from ``path``."""
        if check_hash:
            digest = sha256_file(path)
            if digest != LPIPS_HEAD_SHA256[self.net_name]:
                raise RamAvatarError(
                    f"{path}: sha256 {digest[:16]}... is not the lpips v0.1 '{self.net_name}' "
                    f"head file; take weights/v0.1/{self.net_name}.pth from the lpips 0.1.4 "
                    "package, or "
                    "pass check_hash=False on purpose")
        sd = _load_state_dict_file(path)
        heads = {k: v for k, v in sd.items() if k.startswith("lin")}
        own = {k: v for k, v in self.state_dict().items() if k.startswith("lin")}
        if set(heads) != set(own) or any(heads[k].shape != own[k].shape for k in own):
            raise RamAvatarError(f"{path} does not hold LPIPS '{self.net_name}' heads "
                                 f"(expected keys {sorted(own)})")
        self.load_state_dict({**self.state_dict(), **{k: v.float() for k, v in heads.items()}},
                             strict=True)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self.weights_loaded:
            raise RamAvatarError("LPIPS weights were not loaded; build it with load_lpips()")
        _check_pair(pred, target, None, "lpips")
        x0 = (2 * pred - 1 - self.shift) / self.scale
        x1 = (2 * target - 1 - self.shift) / self.scale
        feats = self.net(torch.cat([x0, x1], 0))
        b = pred.shape[0]
        val = pred.new_zeros(b)
        for feat, lin in zip(feats, self.lins):
            n = feat / (feat.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            d = (n[:b] - n[b:]) ** 2
            val = val + lin(d).mean((1, 2, 3))
        return val


def _missing_message(what: str, filename: str, url: str | None) -> str:
    dirs = weight_search_dirs()
    where = ", ".join(str(d) for d in dirs)
    src = f" (torchvision's {url})" if url else ""
    return (f"{what} not found: expected file {filename}{src}. Put it in a folder named by "
            f"${WEIGHTS_ENV} or in the torch hub cache; searched: {where}")


def _find_lpips_heads(net: str, head_path: str | os.PathLike | None) -> Path | None:
    names = [f"lpips_v0.1_{net}.pth", f"lpips/v0.1/{net}.pth", f"lpips/weights/v0.1/{net}.pth"]
    if head_path is not None:
        return find_weight_file([*names, f"{net}.pth"], head_path)
    found = find_weight_file(names)
    if found is not None:
        return found
    for d in _lpips_package_weight_dirs():
        cand = d / f"{net}.pth"
        if cand.is_file():
            return cand
    return None


def _lpips_package_weight_dirs() -> list[Path]:
    """``weights/v0.1`` of an installed lpips package, located without importing it (it imports
    torchvision, which cannot be imported here)."""
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(loc) / "weights" / "v0.1" for loc in spec.submodule_search_locations]


def load_lpips(net: str = "alex", backbone_path: str | os.PathLike | None = None,
               head_path: str | os.PathLike | None = None, check_hash: bool = True,
               device: str | torch.device = "cpu") -> LPIPS | None:
    """Build LPIPS v0.1 from local weight files; None (with a warning) when they are absent.

    Never computes with random weights: if the ImageNet backbone or the linear heads cannot
    be found, a warning names the expected file and where to put it, and None is returned so
    the caller can skip LPIPS/tLPIPS.

    Args:
        net: 'alex' (default, the paper's LPIPS) or 'vgg' (VGG16 backbone).
        backbone_path: file or folder with ``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth``;
            searched before $RAM_AVATAR_WEIGHTS and ``torch.hub.get_dir()/checkpoints``.
        head_path: file or folder with the lpips heads (``alex.pth`` / ``vgg.pth``, or
            ``lpips_v0.1_alex.pth``); else the same folders (also ``lpips/v0.1/<net>.pth`` in
            them), then an installed ``lpips`` package (``pip install --no-deps lpips``).
        check_hash: verify sha256 (prefix from the torchvision file name; full hash for heads).
        device: where to put the model.

    Raises:
        RamAvatarError: an explicit path does not exist, a file is corrupt (hash/keys/shapes).
    """
    model = LPIPS(net)
    tv_key = "alexnet" if model.net_name == "alex" else "vgg16"
    fname, sha_prefix, url = TORCHVISION_FILES[tv_key]
    bb = find_weight_file([fname], backbone_path)
    if bb is None:
        log.warning("LPIPS disabled: %s",
                    _missing_message(f"ImageNet {tv_key} backbone for LPIPS", fname, url))
        return None
    hp = _find_lpips_heads(model.net_name, head_path)
    if hp is None:
        log.warning("LPIPS disabled: %s. The file is weights/v0.1/%s.pth of the lpips package "
                    "(`pip install --no-deps lpips` makes it found automatically)",
                    _missing_message(f"LPIPS v0.1 '{model.net_name}' linear heads",
                                     f"lpips_v0.1_{model.net_name}.pth", None), model.net_name)
        return None
    load_feature_state_dict(model.net, bb, sha_prefix, check_hash)
    model.load_heads(hp, check_hash)
    model.weights_loaded = True
    log.info("LPIPS(%s) loaded: backbone %s, heads %s", model.net_name, bb, hp)
    return model.to(device)
