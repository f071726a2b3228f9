"""Shared fixtures: the Anny body model (built once per session), paths of the sample videos."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for tests/synthetic_smplx.py

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="session")
def anny_body():
    from ram_avatar.body import load_body_model

    return load_body_model("anny")


@pytest.fixture(scope="session")
def taiji_video() -> Path:
    return EXAMPLES / "taiji.mp4"


@pytest.fixture(scope="session")
def basketball_video() -> Path:
    return EXAMPLES / "basketball_drive.mp4"


@pytest.fixture(scope="session")
def smplx_dir(tmp_path_factory) -> Path:
    from synthetic_smplx import write_synthetic_smplx

    d = tmp_path_factory.mktemp("smplx_model")
    write_synthetic_smplx(d)
    return d


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield


@pytest.fixture
def one_thread():
    """One torch thread for tests of many tiny ops (small MLPs, forward kinematics): fastest
    on a shared machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# tiny full RAM-Avatar renderer (dual attention, face/hand branches, triplane switch), shared by
# test_renderer, test_onnx_export and test_bench_render


def _full_config(resolution: int = 64, **kw):
    from ram_avatar.models import RendererConfig

    base = dict(resolution=resolution, texture_channels=6, texture_size=64, texture_levels=2,
                base_channels=4, max_channels=16, style_dim=16, latent_dim=8, num_frames=6,
                variant="full", attention_channels=8, attention_recurrence=2,
                branch_channels=4, branch_hidden=4, branch_depth=2, triplane_channels=2,
                triplane_size=32)
    base.update(kw)
    return RendererConfig(**base)


def _full_maps(batch: int, size: int, seed: int = 0, triplane: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.rand(*shape, generator=g)

    mask = (rnd(batch, 1, size, size) > 0.3).float()
    maps = {"uv": rnd(batch, 2, size, size) * mask, "body_mask": mask,
            "hand": (rnd(batch, 5, size, size) > 0.95).float(),
            "face": (rnd(batch, 3, size, size) > 0.95).float()}
    mask_e = (rnd(batch, 1, size, size) > 0.2).float()
    prev_mask = (rnd(batch, 1, size, size) > 0.3).float()
    maps.update(uv_expanded=rnd(batch, 2, size, size) * mask_e, body_mask_expanded=mask_e,
                prev_uv=rnd(batch, 2, size, size) * prev_mask, prev_body_mask=prev_mask)
    if triplane:
        for key, m in (("canon", mask), ("canon_expanded", mask_e), ("prev_canon", prev_mask)):
            maps[key] = (rnd(batch, 3, size, size) * 2 - 1) * m
    return maps


def _open_attention(model):
    """Give the zero-initialised alphas a value and sharpen the attention (larger query/key
    weights) so the attention visibly changes the output."""
    with torch.no_grad():
        for part in ("spatial", "temporal"):
            p = getattr(model.attention, part)
            if p is not None:
                p.cca.alpha.fill_(0.5)
                p.cca.query.weight.mul_(20.0)
                p.cca.key.weight.mul_(20.0)


@pytest.fixture
def full_config():
    """``full_config(resolution=64, **fields) -> RendererConfig``: a tiny full renderer (6
    texture channels, 8 attention channels, 4-channel branches, 2x32^2 triplane)."""
    return _full_config


@pytest.fixture
def full_maps():
    """``full_maps(batch, size, seed=0, triplane=False) -> dict``: random conditioning maps for
    every full-renderer input (uv, body_mask, hand, face, expanded, previous frame, canon)."""
    return _full_maps


@pytest.fixture
def open_attention():
    """``open_attention(model)``: opens the zero-initialised dual attention of ``model``."""
    return _open_attention
