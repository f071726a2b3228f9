"""Training switches of issue 10's second round: the discriminator's start step
(``gan.start_step``), the generator's zero-initialised residual on the baked texture
(``optim.zero_init_residual``) and the learnable RGB texture (``optim.rgb_texture_lr_mult``),
on the small full-renderer run of tests/data/trainer_v0 (GAN with R1, EMA, hand loss)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ram_avatar.models.renderer import AvatarRenderer
from ram_avatar.training import ConfigError, load_config
from ram_avatar.training.checkpoint import latest_checkpoint, load_checkpoint
from ram_avatar.training.config import apply_overrides
from ram_avatar.training.trainer import train

FX = Path(__file__).parent / "data" / "trainer_v0"
sys.path.insert(0, str(FX))
from make_fixture import load_items  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def items():
    train_set, val_set = load_items(FX / "items.npz")
    texture = torch.from_numpy(np.load(FX / "items.npz")["texture"])
    return train_set, val_set, texture


def _config(overrides: list[str]):
    cfg = load_config(FX / "run" / "config.yaml")
    cfg.model = replace(cfg.model, num_frames=None)
    return apply_overrides(cfg, overrides)


def _scalars(monkeypatch, values: bool = False) -> dict:
    """The tags the trainer logs, each with its steps (or its values with ``values``)."""
    import torch.utils.tensorboard as tb

    scalars: dict[str, list] = {}

    class Writer(tb.SummaryWriter):
        def add_scalar(self, tag, value, step=None, *a, **k):
            scalars.setdefault(tag, []).append(float(value) if values else int(step))

    monkeypatch.setattr(tb, "SummaryWriter", Writer)
    return scalars


def _trained(run: Path, cfg) -> AvatarRenderer:
    model = AvatarRenderer(replace(cfg.model, num_frames=12))
    load_checkpoint(latest_checkpoint(run), model=model)
    return model


def test_discriminator_starts_at_its_step(items, tmp_path, monkeypatch):
    train_set, val_set, texture = items
    scalars = _scalars(monkeypatch)
    cfg = _config(["gan.start_step=3", "data.augment_prob=0", "data.solid_bg_prob=0"])
    s = train(train_set, val_set, tmp_path / "run", cfg, steps=6, device="cpu",
              show_progress=False, init_texture=texture)
    assert s["step"] == 6
    # logged after every step (at step + 1): the L1 term from the first step, the GAN terms
    # from the fourth (global step 3) only
    assert scalars["loss/l1"][:6] == [1, 2, 3, 4, 5, 6]
    assert scalars["loss/gan_g"] == [4, 5, 6] and scalars["loss/gan_d"] == [4, 5, 6]
    with pytest.raises(ConfigError, match="start_step"):
        _config(["gan.start_step=-1"])


def test_cpu_bf16_trains_the_full_renderer_with_its_discriminator(items, tmp_path, monkeypatch):
    """optim.cpu_bf16 on the full renderer with the temporal discriminator and its R1 penalty
    from the first step: every logged loss stays finite and the weights stay float32."""
    from ram_avatar.training import distributed as D

    monkeypatch.setattr(D, "cpu_has_native_bf16", lambda: True)  # bf16 autocast runs anywhere
    train_set, val_set, texture = items
    scalars = _scalars(monkeypatch, values=True)
    cfg = _config(["optim.cpu_bf16=true", "gan.start_step=0", "gan.r1_interval=2"])
    s = train(train_set, val_set, tmp_path / "run", cfg, steps=4, device="cpu",
              show_progress=False, init_texture=texture)
    assert s["step"] == 4
    assert len(scalars["loss/gan_d"]) >= 3 and len(scalars["loss/l1"]) >= 4, sorted(scalars)
    r1 = [k for k in scalars if k.endswith("r1")]
    assert r1, sorted(scalars)  # the R1 penalty (a double backward) ran under bf16 autocast
    assert all(np.isfinite(v) for k in ["loss/l1", "loss/gan_g", "loss/gan_d"] + r1
               for v in scalars[k])
    model = _trained(tmp_path / "run", cfg)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


def test_zero_init_residual_starts_from_the_baked_texture(items, tmp_path):
    train_set, val_set, texture = items
    cfg = _config(["optim.zero_init_residual=true"])
    model = AvatarRenderer(replace(cfg.model, num_frames=12)).eval()
    model.set_rgb_texture(texture)
    model.zero_init_residual()
    batch = torch.utils.data.default_collate([val_set[i] for i in range(len(val_set))])
    with torch.no_grad():
        out = model.forward_batch(batch, None)
        _, rgb = model.body_and_rgb(batch["uv"], batch["body_mask"], uv_expanded=batch["uv_expanded"],
                                    body_mask_expanded=batch["body_mask_expanded"],
                                    prev_uv=batch["prev_uv"], prev_body_mask=batch["prev_body_mask"])
    inside = batch["body_mask"].expand(-1, 3, -1, -1) > 0.5
    assert int(inside.sum()) > 100
    # the untrained renderer draws the baked colour inside the body (clamped as the skip is)
    want = rgb.clamp(0.02, 0.98)
    torch.testing.assert_close(out["fg"][inside], want[inside], atol=1e-5, rtol=0)
    # training moves the ToRGB weights away from zero (they get gradients at once)
    train(train_set, val_set, tmp_path / "run", cfg, steps=2, device="cpu", show_progress=False,
          init_texture=texture)
    trained = _trained(tmp_path / "run", cfg)
    norms = [float(t.conv.weight.detach().abs().max()) for t in [trained.generator.to_rgb_in,
                                                        *trained.generator.to_rgbs]]
    assert min(norms) > 0


@pytest.mark.parametrize("mult", [0.0, 10.0])
def test_rgb_texture_learns_only_with_its_rate(items, tmp_path, mult):
    train_set, val_set, texture = items
    cfg = _config([f"optim.rgb_texture_lr_mult={mult}"])
    train(train_set, val_set, tmp_path / "run", cfg, steps=3, device="cpu", show_progress=False,
          init_texture=texture)
    trained = _trained(tmp_path / "run", cfg)
    ref = AvatarRenderer(replace(cfg.model, num_frames=12))
    ref.set_rgb_texture(texture)
    change = float((trained.texture.rgb_texture - ref.texture.rgb_texture).abs().max())
    if mult == 0:
        assert change == 0.0
    else:  # Adam moves each seen texel by about lr * mult = 0.01 per step
        assert 0.005 < change < 0.1


def test_expand_offset_from_masks_measures_the_gap_in_metres():
    from ram_avatar.errors import RamAvatarError
    from ram_avatar.training.run import EXPAND_OFFSET_RANGE, expand_offset_from_masks

    mesh = np.zeros((2, 64, 64), bool)
    mesh[:, 10:50, 20:40] = True
    person = mesh.copy()
    person[:, 10:50, 8:20] = True  # 12 px of loose sleeve left of the template: distances 1..12
    z, f = np.array([3.0, 3.0]), 400.0
    m = expand_offset_from_masks(mesh, person, z, f, quantile=0.75)
    # the 0.75 quantile of 1..12 px is 9.25 px -> 9.25 * 3 / 400 m = 0.069 m
    assert m["raw"] == pytest.approx(9.25 * 3.0 / 400.0, abs=0.5 * 3.0 / 400.0)
    assert m["offset"] == pytest.approx(m["raw"]) and m["frames"] == 2
    assert m["outside_fraction"] == pytest.approx(12 / 32)
    # twice as far away: twice the metres (clipped to the range's top)
    far = expand_offset_from_masks(mesh, person, 2 * z, f, quantile=0.75)
    assert far["raw"] == pytest.approx(2 * m["raw"]) and far["offset"] == EXPAND_OFFSET_RANGE[1]
    # a person inside the template: the renderer's default floor
    tight = expand_offset_from_masks(mesh, mesh & person, z, f)
    assert tight["raw"] == 0.0 and tight["offset"] == EXPAND_OFFSET_RANGE[0]
    with pytest.raises(RamAvatarError, match="no person pixels"):
        expand_offset_from_masks(mesh, np.zeros_like(mesh), z, f)


def test_alpha_prior_shell_leaves_the_shell_to_the_generator(items):
    from ram_avatar.models.renderer import RendererConfig

    _, val_set, texture = items
    cfg = _config(["model.alpha_prior_shell=true"])
    model = AvatarRenderer(replace(cfg.model, num_frames=12)).eval()
    model.zero_init_residual()  # the generator's alpha residual is 0: alpha = prior only
    batch = torch.utils.data.default_collate([val_set[i] for i in range(len(val_set))])
    with torch.no_grad():
        out = model.forward_batch(batch, None)
    m, me = batch["body_mask"] == 1, batch["body_mask_expanded"] == 1  # (edges are soft)
    shell = me & (batch["body_mask"] == 0)
    assert int(shell.sum()) > 0 and int(m.sum()) > 0
    a = float(model.alpha_prior.detach())
    logit = out["alpha_logit"]
    torch.testing.assert_close(logit[m], torch.full_like(logit[m], a))
    torch.testing.assert_close(logit[shell], torch.zeros_like(logit[shell]))
    out_ = batch["body_mask_expanded"] == 0
    torch.testing.assert_close(logit[out_], torch.full_like(logit[out_], -a))
    # without the expanded mesh (spatial attention off): the plain prior, +a / -a
    plain = AvatarRenderer(replace(cfg.model, num_frames=12, spatial_attention=False)).eval()
    assert "body_mask_expanded" not in plain.input_names()
    plain.zero_init_residual()
    with torch.no_grad():
        logit = plain.forward_batch(batch, None)["alpha_logit"]
    a = float(plain.alpha_prior.detach())
    off = batch["body_mask"] == 0
    torch.testing.assert_close(logit[m], torch.full_like(logit[m], a))
    torch.testing.assert_close(logit[off], torch.full_like(logit[off], -a))
    assert RendererConfig(variant="v1", alpha_prior_shell=True).alpha_prior_shell


@pytest.mark.slow
def test_a_new_run_records_the_expand_offset_of_its_own_frames(tmp_path, anny_body, monkeypatch):
    """``prepare_training`` with ``data.expand_offset_from_masks``: a new run's
    ``model.expand_offset`` is the offset measured on its training frames; a run whose
    config.yaml exists keeps the offset recorded there."""
    from tiny_subject import TINY_TRAIN, write_tiny_subject

    import ram_avatar.body
    from ram_avatar.io.sequence import load_sequence
    from ram_avatar.training import save_config
    from ram_avatar.training.run import EXPAND_OFFSET_RANGE, measure_expand_offset, prepare_training

    monkeypatch.setattr(ram_avatar.body, "load_body_model", lambda *a, **k: anny_body)
    subject = write_tiny_subject(tmp_path / "s", anny_body, T=12)
    sets = [*TINY_TRAIN, "data.expand_offset_from_masks=true"]
    setup = prepare_training(subject, "cpu-256-v1", "r", sets)
    want = measure_expand_offset(load_sequence(subject), setup.split.train, 32, anny_body)
    assert setup.config.model.expand_offset == pytest.approx(want["offset"])
    assert EXPAND_OFFSET_RANGE[0] <= want["offset"] <= EXPAND_OFFSET_RANGE[1]
    assert want["frames"] == len(setup.split.train) and want["outside_fraction"] > 0
    # the figure's landmark discs reach beyond the template: a measured, not a default, offset
    assert want["raw"] > 0
    # resuming: the run's own config.yaml decides, nothing is measured again
    recorded = replace(setup.config, model=replace(setup.config.model, expand_offset=0.033))
    save_config(recorded, setup.run.config_path)
    again = prepare_training(subject, "cpu-256-v1", "r", sets)
    assert again.config.model.expand_offset == pytest.approx(0.033)


def test_training_warns_about_captures_with_the_old_person_masks(tmp_path, anny_body,
                                                               monkeypatch, caplog):
    """A capture whose manifest does not name its mask source was made with Selfie
    Segmentation (it missed legs): training says so and how to re-capture; a current capture
    trains without the warning."""
    import json
    import logging

    from tiny_subject import TINY_TRAIN, write_tiny_subject

    import ram_avatar.body
    from ram_avatar.training.run import prepare_training

    monkeypatch.setattr(ram_avatar.body, "load_body_model", lambda *a, **k: anny_body)
    subject = write_tiny_subject(tmp_path / "s", anny_body, T=8)
    with caplog.at_level(logging.WARNING, logger="ram_avatar.training.run"):
        prepare_training(subject, "cpu-256-v1", "new", list(TINY_TRAIN))
    assert "Selfie" not in caplog.text
    path = subject / "sequence" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["masks"]
    path.write_text(json.dumps(manifest))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ram_avatar.training.run"):
        prepare_training(subject, "cpu-256-v1", "old", list(TINY_TRAIN))
    assert "Selfie Segmentation" in caplog.text and "--overwrite" in caplog.text
