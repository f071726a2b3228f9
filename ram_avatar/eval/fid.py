"""Fréchet Inception Distance (FID; Heusel et al., "GANs Trained by a Two Time-Scale Update Rule
Converge to a Local Nash Equilibrium", NeurIPS 2017).

FID models the Inception-v3 pool3 features (2048-D) of two image sets as Gaussians
``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` and reports their Fréchet (2-Wasserstein) distance
(Heusel et al. 2017, Eq. 6; Dowson & Landau 1982)::

    d² = |mu1 - mu2|² + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))

Feature network. The standard metric network of StyleGAN2-ADA / StyleGAN3 (NVlabs) is used:
the TorchScript file ``inception-2015-12-05.pt`` (TensorFlow's 2015-12-05 Inception graph,
exported by NVlabs; :data:`FID_WEIGHTS_URL`). It loads with :func:`torch.jit.load` and needs no
torchvision. Its calling convention (stylegan2-ada-pytorch ``metrics/metric_utils.py``):
``detector(images, return_features=True)`` with ``images`` a ``torch.uint8`` NCHW RGB batch in
0..255 of any size (it resizes to 299x299 and normalises internally), returning float32
``(N, 2048)`` pool3 features. The file is never downloaded here and never replaced by a random
network; it is searched like every weight file of the project
(:func:`ram_avatar.eval.metrics.find_weight_file`): an explicit path (file or folder), then the
folders in ``$RAM_AVATAR_WEIGHTS``, then ``torch.hub.get_dir()/checkpoints`` (honours
``$TORCH_HOME``). Without it :func:`compute_fid` returns None and logs why (once).

Statistics. Means and covariances use the population normalisation (divide by N) as
StyleGAN's ``FeatureStats.get_mean_cov`` does (pytorch-fid / TTUR use ``np.cov``, N-1; pass
``ddof=1`` to :func:`fid_from_features` for that).

Small sets. FID is a biased, high-variance estimator whose bias grows like 1/N (Chong &
Forsyth, CVPR 2020); reference numbers use 50k images. On the ~41 held-out frames of one
capture the value is dominated by that bias: only compare FIDs computed on the same number of
frames (same subject, same split), never with published numbers.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from ram_avatar.errors import RamAvatarError
from ram_avatar.eval.metrics import WEIGHTS_ENV, find_weight_file, weight_search_dirs

log = logging.getLogger(__name__)

__all__ = [
    "FID_WEIGHTS_FILE", "FID_WEIGHTS_URL", "find_fid_weights", "load_fid_inception",
    "inception_features", "frechet_distance", "fid_from_features", "compute_fid",
    "compute_fid_with_note",
]

FID_WEIGHTS_FILE = "inception-2015-12-05.pt"
FID_WEIGHTS_URL = ("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                   + FID_WEIGHTS_FILE)

#: tolerance on the imaginary part of diag(sqrtm(sigma1 sigma2)) (pytorch-fid's value)
IMAG_TOL = 1e-3

_missing_logged = False


# ----------------------------------------------------------------------------------------------
# weights


def find_fid_weights(path: str | os.PathLike | None = None) -> Path | None:
    """Locate ``inception-2015-12-05.pt``.

    Args:
        path: the file, or a folder holding it; searched first.

    Returns:
        the file, or None when it is in none of: ``path``, the ``$RAM_AVATAR_WEIGHTS`` folders,
        ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``, default
        ``~/.cache/torch/hub/checkpoints``).

    Raises:
        RamAvatarError: ``path`` was given but does not exist.
    """
    return find_weight_file([FID_WEIGHTS_FILE], path)


def _missing_message() -> str:
    where = ", ".join(str(d) for d in weight_search_dirs())
    return (f"FID Inception network not found: expected file {FID_WEIGHTS_FILE} (NVlabs' "
            f"StyleGAN2-ADA metric network, {FID_WEIGHTS_URL}). Put it in a folder named "
            f"by ${WEIGHTS_ENV} or in the torch hub cache; searched: {where}")


def load_fid_inception(path: str | os.PathLike | None = None,
                       device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load the TorchScript FID Inception network, in eval mode on ``device``.

    Args:
        path: the ``.pt`` file or a folder holding it; else searched as in
            :func:`find_fid_weights`.
        device: where to put the network.

    Raises:
        RamAvatarError: the file cannot be found, or is not a loadable TorchScript module
            (corrupt / truncated download, or a pickle / state dict instead of TorchScript).
    """
    found = find_fid_weights(path)
    if found is None:
        raise RamAvatarError(_missing_message())
    try:
        det = torch.jit.load(str(found), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise RamAvatarError(
            f"{found} is not a loadable TorchScript module ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); re-download {FID_WEIGHTS_URL}") from e
    if not isinstance(det, torch.jit.ScriptModule):
        raise RamAvatarError(f"{found} holds a {type(det).__name__}, not a TorchScript module; "
                             f"re-download {FID_WEIGHTS_URL}")
    det.eval()
    log.info("FID Inception network loaded from %s", found)
    return det.to(device)


# ----------------------------------------------------------------------------------------------
# features


@torch.no_grad()
def inception_features(detector, images: torch.Tensor, batch: int = 32) -> np.ndarray:
    """Pool3 features of an image set.

    Args:
        detector: the network from :func:`load_fid_inception` (or any module with the same
            ``forward(x, return_features: bool)`` signature).
        images: ``(N, 3, H, W)`` (or ``(N, 1, H, W)``, repeated to RGB) float RGB in ``[0, 1]``,
            any H, W (the network resizes to 299x299). Quantised to uint8 0..255 the way
            StyleGAN's metrics do (``floor(255 x + 0.5)``, clamped) before the call.
        batch: images per forward pass.

    Returns:
        ``(N, D)`` float64 features; D = 2048 for the Inception network.

    Raises:
        RamAvatarError: wrong shape, non-finite values, or the network does not return one
            feature row per image.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise RamAvatarError(f"FID: images must be (N, 3, H, W), got "
                             f"{tuple(getattr(images, 'shape', ()))}")
    if images.shape[0] == 0:
        raise RamAvatarError("FID: empty image set")
    if images.is_floating_point() and not torch.isfinite(images).all():
        raise RamAvatarError("FID: images contain NaN/Inf")
    try:
        dev = next(iter(detector.parameters())).device
    except (StopIteration, AttributeError, RuntimeError):
        dev = torch.device("cpu")
    out = []
    for c in range(0, images.shape[0], max(1, int(batch))):
        x = images[c:c + batch]
        if x.dtype != torch.uint8:
            x = (x.float() * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        f = detector(x.to(dev), return_features=True)
        if not isinstance(f, torch.Tensor) or f.ndim != 2 or f.shape[0] != x.shape[0]:
            raise RamAvatarError(
                f"FID: the Inception network returned {tuple(getattr(f, 'shape', ()))} for "
                f"{x.shape[0]} images, expected ({x.shape[0]}, 2048); is {FID_WEIGHTS_FILE} "
                "the NVlabs metric network?")
        out.append(f.detach().double().cpu().numpy())
    return np.concatenate(out, axis=0)


# ----------------------------------------------------------------------------------------------
# distance


def _check_gaussian(mu1, sigma1, mu2, sigma2):
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise RamAvatarError(f"frechet_distance: shapes mu1 {mu1.shape}, sigma1 {s1.shape}, "
                             f"mu2 {mu2.shape}, sigma2 {s2.shape} do not match (d,), (d, d)")
    for name, a in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise RamAvatarError(f"frechet_distance: {name} contains NaN/Inf")
    return mu1, s1, mu2, s2


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance of two Gaussians (Heusel et al. 2017, Eq. 6)::

        |mu1 - mu2|² + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2))

    Args:
        mu1, mu2: ``(d,)`` means.
        sigma1, sigma2: ``(d, d)`` symmetric positive semi-definite covariances.
        eps: diagonal offset used when the product is too singular for ``sqrtm``.

    Returns:
        the distance (squared feature units), >= 0; tiny negative values from round-off are
        clipped to 0.

    The matrix square root is :func:`scipy.linalg.sqrtm` (as in pytorch-fid and StyleGAN's
    ``frechet_inception_distance.py``), with pytorch-fid's safeguards for numerical trouble:

    * a non-finite result (nearly singular product) is recomputed with ``eps * I`` added to both
      covariances;
    * a small imaginary part (|Im diag| <= 1e-3) is round-off and dropped. Where pytorch-fid
      raises on a larger one (StyleGAN silently keeps the real part), this falls back to the
      exact symmetric form ``Tr((sqrt(s1) s2 sqrt(s1))^(1/2))`` (same eigenvalues as
      ``s1 s2`` for PSD matrices) and logs a warning.

    ``sqrtm`` of a 2048x2048 matrix takes about a minute on two CPU cores; for feature sets with
    fewer samples than dimensions use :func:`fid_from_features`, which is exact and fast there.

    Raises:
        RamAvatarError: shapes do not match or inputs are not finite.
    """
    mu1, s1, mu2, s2 = _check_gaussian(mu1, sigma1, mu2, sigma2)
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Matrix is singular and may not have a square root"
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            log.info("FID: sigma1 @ sigma2 is singular; adding %g to the diagonals", eps)
            off = np.eye(s1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off))
    if np.iscomplexobj(covmean):
        im = np.abs(np.diagonal(covmean).imag).max() if covmean.size else 0.0
        if im <= IMAG_TOL and np.isfinite(covmean).all():
            covmean = covmean.real
            tr_covmean = float(np.trace(covmean))
        else:
            log.warning("FID: sqrtm gave an imaginary part of %.3g; using the symmetric "
                        "eigenvalue form instead", im)
            r1 = _psd_sqrt(s1)
            w = np.linalg.eigvalsh(r1 @ s2 @ r1)
            tr_covmean = float(np.sqrt(np.clip(w, 0, None)).sum())
    else:
        tr_covmean = float(np.trace(covmean))
    val = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(val, 0.0)


def _as_features(f, name: str) -> np.ndarray:
    f = np.asarray(f.detach().cpu().numpy() if isinstance(f, torch.Tensor) else f, np.float64)
    if f.ndim != 2:
        raise RamAvatarError(f"fid_from_features: {name} must be (N, D), got {f.shape}")
    if f.shape[0] < 2:
        raise RamAvatarError(f"fid_from_features: {name} has {f.shape[0]} sample(s); a "
                             "covariance needs at least 2")
    if not np.isfinite(f).all():
        raise RamAvatarError(f"fid_from_features: {name} contains NaN/Inf")
    return f


def fid_from_features(f1, f2, ddof: int = 0) -> float:
    """FID of two feature sets.

    Args:
        f1: ``(N1, D)`` features (e.g. of rendered frames), numpy or torch.
        f2: ``(N2, D)`` features (e.g. of the real frames).
        ddof: covariance normalisation ``N - ddof``; 0 = StyleGAN (default), 1 = pytorch-fid.

    Returns:
        FID (squared feature units), >= 0; exactly 0 (up to round-off) for identical sets.

    When ``min(N1, N2) < D`` (e.g. 41 frames, D = 2048) both covariances have rank < D and
    ``sqrtm`` of their product is slow and ill-conditioned. The value is then computed exactly
    from the centred features: with ``B_i = (f_i - mu_i) / sqrt(N_i - ddof)`` (so
    ``sigma_i = B_i^T B_i``), the non-zero eigenvalues of ``sigma1 sigma2`` are the squared
    singular values of ``B1 B2^T`` (N1 x N2), so ``Tr((sigma1 sigma2)^(1/2)) = ||B1 B2^T||_*``
    (nuclear norm) and ``Tr(sigma_i) = ||B_i||_F²``. Otherwise :func:`frechet_distance` is used.

    Raises:
        RamAvatarError: not 2-D, different D, fewer than 2 samples, NaN/Inf.
    """
    f1, f2 = _as_features(f1, "f1"), _as_features(f2, "f2")
    if f1.shape[1] != f2.shape[1]:
        raise RamAvatarError(f"fid_from_features: feature sizes differ ({f1.shape[1]} vs "
                             f"{f2.shape[1]})")
    if ddof not in (0, 1):
        raise RamAvatarError(f"fid_from_features: ddof must be 0 or 1, got {ddof}")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    b1 = (f1 - mu1) / np.sqrt(f1.shape[0] - ddof)
    b2 = (f2 - mu2) / np.sqrt(f2.shape[0] - ddof)
    if min(f1.shape[0], f2.shape[0]) < f1.shape[1]:
        diff = mu1 - mu2
        nuc = float(np.linalg.svd(b1 @ b2.T, compute_uv=False).sum())
        val = float(diff @ diff + (b1 * b1).sum() + (b2 * b2).sum() - 2.0 * nuc)
        return max(val, 0.0)
    return frechet_distance(mu1, b1.T @ b1, mu2, b2.T @ b2)


# ----------------------------------------------------------------------------------------------
# end to end


def compute_fid(pred: torch.Tensor, real: torch.Tensor, weights: str | os.PathLike | None = None,
                *, device: str | torch.device = "cpu", batch: int = 32,
                detector=None) -> float | None:
    """FID between rendered and real images with the NVlabs Inception network.

    Args:
        pred: ``(N1, 3, H, W)`` float in ``[0, 1]`` (rendered frames).
        real: ``(N2, 3, H', W')`` float in ``[0, 1]`` (ground-truth frames); N1, N2 >= 2.
        weights: ``inception-2015-12-05.pt`` or a folder holding it; else searched as in
            :func:`find_fid_weights`.
        device: where to run the network.
        batch: images per forward pass.
        detector: an already loaded network (skips the search/load).

    Returns:
        FID (>= 0), or None when the network file is absent (the reason is logged as a warning
        the first time, later at debug level). With few images (e.g. ~41 held-out frames) the
        value is a high-variance estimate biased upwards: compare it only between runs
        evaluated on the same frames.

    Raises:
        RamAvatarError: ``weights`` given but missing, file not TorchScript, bad image shapes,
            fewer than 2 images in a set.
    """
    global _missing_logged
    if detector is None:
        found = find_fid_weights(weights)
        if found is None:
            if not _missing_logged:
                log.warning("FID disabled: %s", _missing_message())
                _missing_logged = True
            else:
                log.debug("FID disabled: %s not found", FID_WEIGHTS_FILE)
            return None
        detector = load_fid_inception(found, device=device)
    for name, x in (("pred", pred), ("real", real)):
        if isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[0] < 2:
            raise RamAvatarError(f"FID: {name} has {x.shape[0]} image(s); FID needs at least 2 "
                                 "per set")
    f1 = inception_features(detector, pred, batch=batch)
    f2 = inception_features(detector, real, batch=batch)
    return fid_from_features(f1, f2)


def compute_fid_with_note(pred: torch.Tensor, real: torch.Tensor,
                          weights: str | os.PathLike | None = None,
                          device: str | torch.device = "cpu") -> tuple[float | None, str | None]:
    """:func:`compute_fid` for reports: ``(fid, None)``, or ``(None, note)`` saying why not.

    The note covers an absent network file and sets of fewer than 2 images (too few to estimate
    a covariance); other errors are raised as in :func:`compute_fid`.
    """
    if min(int(pred.shape[0]), int(real.shape[0])) < 2:
        return None, (f"FID needs at least 2 frames per set (got {int(pred.shape[0])} "
                      f"rendered, {int(real.shape[0])} real)")
    fid = compute_fid(pred, real, weights, device=device)
    if fid is None:
        return None, (f"FID Inception network not found ({FID_WEIGHTS_FILE}, {FID_WEIGHTS_URL}): "
                      f"put it in ${WEIGHTS_ENV} / the torch hub cache")
    return fid, None
