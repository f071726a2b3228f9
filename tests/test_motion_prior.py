"""Pose prior (ram_avatar.motion.prior): the VAE loss falls on a small run, save / load, and the
shipped prior loads with its provenance and reconstructs held-out mocap poses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ram_avatar.errors import CheckpointError
from ram_avatar.motion.prior import (DEFAULT_PRIOR_DIR, GroupFK, MocapCorpus, PosePrior, PriorConfig,
                                     default_prior_available, load_prior, mirror_groups, prior_loss,
                                     reconstruction_error, sixd_to_rotmat, train_prior)
from ram_avatar.motion.retarget import NUM_GROUPS, body_pose_to_groups

#: stated bound: mean joint-group angle error (deg) of the shipped prior on held-out mocap clips
SHIPPED_HELD_OUT_BOUND_DEG = 12.0


pytestmark = pytest.mark.usefixtures("one_thread")


def _toy_corpus(n=2000, seed=0) -> MocapCorpus:
    """Poses on a low-dimensional manifold (4 latent factors), like real motion."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(4, 35 * 3, generator=gen, dtype=torch.float64) * 0.25
    c = torch.rand(n, 4, generator=gen, dtype=torch.float64) * 2 - 1
    bp = (c @ basis).view(n, 35, 3)
    G = body_pose_to_groups(bp).float()
    return MocapCorpus(G, np.repeat(np.arange(20), n // 20), [f"clip{i}" for i in range(20)],
                       {"toy": {"clips": 20, "frames": n}})


def test_rotation_helpers():
    R = body_pose_to_groups(torch.randn(8, 35, 3, dtype=torch.float64) * 0.5).float()
    from ram_avatar.motion.prior import rotmat_to_6d
    assert torch.allclose(sixd_to_rotmat(rotmat_to_6d(R)), R, atol=1e-5)
    assert torch.allclose(mirror_groups(mirror_groups(R)), R, atol=1e-6)


def test_vae_loss_falls(tmp_path):
    torch.manual_seed(0)
    corpus = _toy_corpus()
    cfg = PriorConfig(hidden=64, latent_dim=8, steps=300, batch_size=128, kl_warmup_steps=100,
                      lr=3e-3, holdout_every=5)
    model = PosePrior(cfg, GroupFK())
    with torch.no_grad():
        before, _ = prior_loss(model, corpus.groups[:512], cfg.w_kl)
    meta = train_prior(None, tmp_path / "p", config=cfg, corpus=corpus, provenance={"licence": "test"})
    hist = meta["history"]
    assert hist[-1]["rot"] < 0.5 * hist[0]["rot"], hist
    assert meta["data"]["licence"] == "test" and len(meta["held_out_clips"]) == 4
    p = load_prior(tmp_path / "p")
    with torch.no_grad():
        after, _ = prior_loss(p, corpus.groups[:512], cfg.w_kl)
    assert float(after) < 0.5 * float(before)
    # the loaded copy reproduces what training reported on the held-out clips
    err = reconstruction_error(p, corpus.groups[np.isin(corpus.clip_index, [4, 9, 14, 19])])
    assert err["angle_deg"] == pytest.approx(meta["metrics"]["held_out_reconstruction"]["angle_deg"], rel=0.05)
    # decode / encode on body_pose
    z = torch.zeros(3, cfg.latent_dim)
    assert p.decode(z).shape == (3, 35, 3)
    assert p.encode(torch.zeros(3, 35, 3))[0].shape == (3, cfg.latent_dim)


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="train-prior"):
        load_prior(tmp_path)
    (tmp_path / "prior.json").write_text(json.dumps({"format": "other", "version": 1}))
    (tmp_path / "prior.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="not a version"):
        load_prior(tmp_path)


@pytest.mark.skipif(not default_prior_available(), reason="no shipped motion prior")
def test_shipped_prior_metadata_and_size():
    p = load_prior()
    meta = p.meta
    assert (DEFAULT_PRIOR_DIR / "prior.safetensors").stat().st_size < 5_000_000
    data = meta["data"]
    assert "CC BY-NC 4.0" in data["licence"] and "non-commercial" in data["licence"].lower()
    assert "Bandai-Namco-Research-Motiondataset" in data["provenance"]
    assert data["clips"] > 100 and data["frames"] > 10_000
    assert meta["trained_on"]["date"] and meta["config"]["latent_dim"] == p.latent_dim
    assert meta["metrics"]["held_out_reconstruction"]["angle_deg"] < SHIPPED_HELD_OUT_BOUND_DEG
    z = torch.randn(4, p.latent_dim)
    assert torch.isfinite(p.decode(z)).all()


@pytest.mark.skipif(not default_prior_available(), reason="no shipped motion prior")
def test_shipped_prior_reconstructs_held_out_mocap(tmp_path):
    from ram_avatar.motion.bvh import read_bvh
    from ram_avatar.motion.retarget import retarget_bvh
    from test_motion_bvh import extract_bandai
    p = load_prior()
    held = [c for c in p.meta["held_out_clips"] if c.startswith("dataset-1_")][:2]
    assert held, "the shipped prior lists no held-out dataset-1 clip"
    files = extract_bandai([c[:-4] for c in held], tmp_path)
    G = torch.cat([body_pose_to_groups(torch.from_numpy(retarget_bvh(read_bvh(f)).body_pose).double()).float()
                   for f in files])
    assert G.shape[1] == NUM_GROUPS
    err = reconstruction_error(p, G)
    assert err["angle_deg"] < SHIPPED_HELD_OUT_BOUND_DEG, err
