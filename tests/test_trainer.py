"""Training config, checkpoints and the training loop (CPU, tiny synthetic avatar), and the full
renderer in training: attention optimised, exact resume of the discriminator and the EMA."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import Dataset

from ram_avatar.errors import CheckpointError, RamAvatarError, TrainingDivergedError
from ram_avatar.models import AvatarRenderer
from ram_avatar.training import (ConfigError, TrainConfig, get_preset, latest_checkpoint,
                                 list_checkpoints, load_checkpoint, load_config, save_checkpoint,
                                 save_config, split_train_val, train)
from ram_avatar.training.checkpoint import read_checkpoint
from ram_avatar.training.config import apply_overrides
from ram_avatar.training.trainer import (ResumableBatchSampler, aux_checkpoint_path,
                                         load_ema_weights, required_extras)

SIZE = 64


class SyntheticAvatar(Dataset):
    """Deterministic toy avatar: a UV-textured rectangle (colour pattern in UV space) moving over
    a fixed background, with a face blob and a hand line. ``nan=True`` poisons the images."""

    def __init__(self, n: int = 6, size: int = SIZE, nan: bool = False, offset: int = 0):
        self.n, self.size, self.nan, self.offset = n, size, nan, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        s = self.size
        k = i + self.offset
        ys, xs = torch.meshgrid(torch.arange(s) + 0.5, torch.arange(s) + 0.5, indexing="ij")
        x0, y0 = s * (0.2 + 0.05 * (k % 4)), s * (0.15 + 0.03 * (k % 3))
        w, h = s * 0.45, s * 0.65
        u, v = (xs - x0) / w, 1 - (ys - y0) / h
        mask = ((u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)).float()
        uv = torch.stack([u, v]).clamp(0, 1) * mask
        colour = torch.stack([0.5 + 0.4 * torch.sin(2 * math.pi * u),
                              0.5 + 0.4 * torch.cos(2 * math.pi * v),
                              0.5 + 0.4 * torch.sin(2 * math.pi * (u + v))])
        bg = torch.stack([0.2 + 0.6 * xs / s, torch.full_like(xs, 0.3), 0.6 - 0.3 * ys / s])
        image = mask * colour + (1 - mask) * bg
        face = torch.zeros(3, s, s)
        cx = int(x0 + w / 2)
        face[0, int(y0):int(y0) + 4, cx - 2:cx + 2] = 1
        hand = torch.zeros(5, s, s)
        hand[1, int(y0 + h / 2), int(x0):int(x0 + w)] = 1
        if self.nan:
            image = image * float("nan")
        return {"uv": uv, "body_mask": mask[None], "hand": hand, "face": face, "image": image,
                "person_mask": mask[None], "frame_index": k}


def tiny_config(**kw) -> TrainConfig:
    cfg = get_preset("cpu-256-v1")
    # float32 whatever the CPU: the parity and resume tests compare float32 numbers (bfloat16
    # autocast has its own test)
    cfg.optim = replace(cfg.optim, cpu_bf16=False)
    cfg.model = replace(cfg.model, resolution=SIZE, texture_size=64, texture_levels=3,
                        base_channels=8, max_channels=32, style_dim=32, latent_dim=16)
    cfg.log = replace(cfg.log, scalars_every=10, preview_every=1000, val_every=1000,
                      checkpoint_every=1000)
    for key, value in kw.items():  # flat names (lr, batch_size, ...) are section aliases
        setattr(cfg, key, value)
    return cfg


def file_hash(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# config


@pytest.mark.parametrize("name", ["cpu-256", "cpu-256-v1", "paper-1024"])
def test_config_yaml_round_trip(tmp_path, name):
    cfg = get_preset(name)
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    assert isinstance(yaml.safe_load(path.read_text()), dict)
    back = load_config(path)
    assert back == cfg
    assert isinstance(back.betas, tuple)


def test_paper_preset_sizes():
    cfg = get_preset("paper-1024")
    assert cfg.model.resolution == 1024 and cfg.model.texture_size == 1024
    assert cfg.model.texture_channels == 48 and cfg.batch_size == 2
    assert cfg.lr == 1e-3 and cfg.grad_clip == 1.0 and cfg.l1_weight == 5.0


def test_bad_preset_name_lists_presets():
    with pytest.raises(ConfigError) as exc:
        get_preset("gpu-9000")
    assert "cpu-256" in str(exc.value) and "paper-1024" in str(exc.value)
    assert isinstance(exc.value, RamAvatarError)


def test_config_rejects_unknown_keys_and_bad_types(tmp_path):
    data = get_preset("cpu-256-v1").to_dict()
    data["learning_rate"] = 0.1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(path)
    data = get_preset("cpu-256-v1").to_dict()
    data["model"]["colour"] = 3
    with pytest.raises(ConfigError, match="model.colour"):
        TrainConfig.from_dict(data)
    data = get_preset("cpu-256-v1").to_dict()
    data["batch_size"] = "two"
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig.from_dict(data)
    data = get_preset("cpu-256-v1").to_dict()
    data["model"]["resolution"] = 100
    with pytest.raises(ConfigError, match="resolution"):
        TrainConfig.from_dict(data)
    path.write_text("- not\n- a mapping\n")
    with pytest.raises(ConfigError):
        load_config(path)
    path.write_text("!!python/object:os.system {}\n")
    with pytest.raises(ConfigError):
        load_config(path)


def test_apply_overrides():
    cfg = apply_overrides(get_preset("cpu-256-v1"), ["lr=2e-4", "model.base_channels=32", "amp=false"])
    assert cfg.lr == 2e-4 and cfg.model.base_channels == 32 and cfg.amp is False
    with pytest.raises(ConfigError):
        apply_overrides(cfg, ["model.nope=1"])


# ---------------------------------------------------------------------------------------------
# checkpoints


def _tiny_model():
    torch.manual_seed(0)
    return AvatarRenderer(replace(tiny_config().model, num_frames=4))


def test_checkpoint_round_trip_and_errors(tmp_path):
    model = _tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    item = SyntheticAvatar(1)[0]
    res = model(item["uv"][None], item["body_mask"][None], item["hand"][None], item["face"][None])
    res["rgb"].mean().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "a.safetensors", model, opt, step=7,
                           config={"x": 1}, extra={"psnr": 20.5})
    model2 = _tiny_model()
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    info = load_checkpoint(path, model2, opt2)
    assert info.step == 7 and info.config == {"x": 1} and info.extra == {"psnr": 20.5}
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s1:
        for name in s1[k]:
            assert torch.equal(torch.as_tensor(s1[k][name]), torch.as_tensor(s2[k][name]))

    # corrupt (truncated) file
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError):
        load_checkpoint(bad, _tiny_model())
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        load_checkpoint(garbage, _tiny_model())
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "missing.safetensors", _tiny_model())
    # model mismatch
    other = AvatarRenderer(replace(tiny_config().model, num_frames=4, base_channels=4))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(path, other)


# ---------------------------------------------------------------------------------------------
# training loop


def test_sampler_is_resumable():
    full = ResumableBatchSampler(7, 2, seed=3)
    it = iter(full)
    batches = [next(it) for _ in range(10)]
    it2 = iter(ResumableBatchSampler(7, 2, seed=3, start_step=4))
    assert [next(it2) for _ in range(6)] == batches[4:]
    assert sorted(sum(batches[:3], [])) == sorted(set(sum(batches[:3], [])))  # no repeats in epoch


def test_split_train_val():
    tr, va = split_train_val(SyntheticAvatar(10), 0.1)
    assert len(tr) == 9 and len(va) == 1 and va.indices == range(9, 10)


def test_loss_falls_on_synthetic_avatar(tmp_path):
    torch.set_num_threads(2)
    cfg = tiny_config(checkpoint_interval=30, preview_interval=30, val_interval=30,
                      keep_checkpoints=1)
    summary = train(SyntheticAvatar(6), SyntheticAvatar(2, offset=6), tmp_path / "run", cfg,
                    steps=60, device="cpu", show_progress=False)
    assert summary["step"] == 60 and summary["steps_run"] == 60
    assert summary["losses"]["total"] < 0.5 * summary["first_loss"], summary
    assert summary["val_psnr"] is not None and summary["val_psnr"] > 12
    run = tmp_path / "run"
    assert load_config(run / "config.yaml").model.num_frames == 8  # resolved from the data
    assert [p.name for p in list_checkpoints(run)] == ["step_00000060.safetensors"]  # keep 1
    assert (run / "previews" / "step_00000060.png").is_file()
    assert any((run / "tb").iterdir())


def test_resume_is_exact(tmp_path):
    torch.set_num_threads(2)
    cfg = tiny_config()
    data, val = SyntheticAvatar(5), SyntheticAvatar(1, offset=5)
    a = train(data, val, tmp_path / "a", cfg, steps=4, device="cpu", show_progress=False)
    b1 = train(data, val, tmp_path / "b", cfg, steps=2, device="cpu", show_progress=False)
    assert b1["step"] == 2
    b2 = train(data, val, tmp_path / "b", cfg, steps=4, device="cpu", show_progress=False)
    assert b2["start_step"] == 2 and b2["steps_run"] == 2 and b2["step"] == 4
    ta, meta_a = read_checkpoint(latest_checkpoint(tmp_path / "a"))
    tb, meta_b = read_checkpoint(latest_checkpoint(tmp_path / "b"))
    assert meta_a["step"] == meta_b["step"] == 4
    assert ta.keys() == tb.keys()
    for key in ta:  # model weights, optimiser state and RNG states, bit for bit
        assert torch.equal(ta[key], tb[key]), key
    assert meta_a["optimizer"] == meta_b["optimizer"]
    assert a["step"] == 4
    # calling again with the same target does nothing
    c = train(data, val, tmp_path / "b", cfg, steps=4, device="cpu", show_progress=False)
    assert c["steps_run"] == 0 and c["step"] == 4


def test_nan_loss_raises_and_keeps_last_good_checkpoint(tmp_path):
    torch.set_num_threads(2)
    cfg = tiny_config(checkpoint_interval=2)
    run = tmp_path / "run"
    train(SyntheticAvatar(4), None, run, cfg, steps=2, device="cpu", show_progress=False)
    ckpts = list_checkpoints(run)
    assert [p.name for p in ckpts] == ["step_00000002.safetensors"]
    before = file_hash(ckpts[0])
    with pytest.raises(TrainingDivergedError) as exc:
        train(SyntheticAvatar(4, nan=True), None, run, cfg, steps=6, device="cpu",
              show_progress=False)
    msg = str(exc.value)
    assert "step 3" in msg and "step_00000002.safetensors" in msg
    assert exc.value.step == 3
    assert list_checkpoints(run) == ckpts and file_hash(ckpts[0]) == before
    model = AvatarRenderer(load_config(run / "config.yaml").model)
    assert load_checkpoint(ckpts[0], model).step == 2


def test_resume_with_other_model_config_fails(tmp_path):
    cfg = tiny_config()
    train(SyntheticAvatar(3), None, tmp_path / "r", cfg, steps=1, device="cpu",
          show_progress=False)
    other = tiny_config()
    other.model = replace(other.model, base_channels=4)
    with pytest.raises(CheckpointError, match="base_channels"):
        train(SyntheticAvatar(3), None, tmp_path / "r", other, steps=2, device="cpu",
              show_progress=False)


def test_corrupt_latest_checkpoint_is_reported(tmp_path):
    cfg = tiny_config()
    train(SyntheticAvatar(3), None, tmp_path / "r", cfg, steps=1, device="cpu",
          show_progress=False)
    latest_checkpoint(tmp_path / "r").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        train(SyntheticAvatar(3), None, tmp_path / "r", cfg, steps=2, device="cpu",
              show_progress=False)


def test_bad_items_are_reported(tmp_path):
    cfg = tiny_config()
    cfg.model = replace(cfg.model, resolution=128, texture_size=128)
    with pytest.raises(RamAvatarError, match="resolution"):
        train(SyntheticAvatar(3), None, tmp_path / "r", cfg, steps=1, device="cpu",
              show_progress=False)
    with pytest.raises(RamAvatarError, match="empty"):
        train(SyntheticAvatar(0), None, tmp_path / "r2", tiny_config(), steps=1, device="cpu",
              show_progress=False)


def test_minutes_budget(tmp_path):
    summary = train(SyntheticAvatar(3), None, tmp_path / "r", tiny_config(), minutes=0.02,
                    device="cpu", show_progress=True)
    assert summary["step"] == summary["steps_run"]
    if summary["steps_run"]:
        assert latest_checkpoint(tmp_path / "r").name == f"step_{summary['step']:08d}.safetensors"


def test_trainer_steps_one_at_a_time(tmp_path):
    """The Trainer's parts (setup / train_iteration / validate / save) used directly, and the
    model's param groups, loss dict and DDP-free wrapping."""
    from ram_avatar.training.distributed import DistributedContext, unwrap
    from ram_avatar.training.trainer import Trainer

    cfg = tiny_config(seed=1)
    dist = DistributedContext("cpu")
    trainer = Trainer(SyntheticAvatar(6), SyntheticAvatar(2, offset=6), tmp_path / "run", cfg,
                      dist, show_progress=False)
    trainer.setup()
    assert unwrap(trainer.model.train_renderer) is trainer.model.renderer  # one rank: no DDP
    groups = {g["name"]: g for g in trainer.model.param_groups()}
    assert set(groups) == {"generator", "texture", "background"}
    assert groups["texture"]["lr"] == cfg.optim.lr * cfg.optim.texture_lr_mult
    n = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n == sum(p.numel() for p in trainer.model.renderer.parameters())
    before = trainer.model.renderer.background_logit.detach().clone()
    batches = iter(trainer.loader)
    values = trainer.train_iteration(next(batches))
    assert trainer.step == 1 and set(values) == {"l1", "ssim", "mask", "total"}
    assert values["total"] == pytest.approx(
        cfg.loss.l1_weight * values["l1"] + cfg.loss.ssim_weight * values["ssim"]
        + cfg.loss.mask_weight * values["mask"], rel=1e-5)
    assert not torch.equal(before, trainer.model.renderer.background_logit)
    trainer.train_iteration(next(batches))
    psnr = trainer.validate()
    assert 5 < psnr < 60
    path = trainer.save()
    assert path.name == "step_00000002.safetensors" and latest_checkpoint(tmp_path / "run") == path
    trainer.writer.close()


def test_lr_schedule_anneals_over_the_steps_or_minutes_budget(tmp_path):
    """``optim.lr_decay_start``: constant, then a half cosine down to ``lr_final_mult`` at the
    end of the budget; a resumed run restarts from the configured rates, not the decayed
    ones; a minutes budget counts the run's training seconds."""
    from ram_avatar.training.distributed import DistributedContext
    from ram_avatar.training.state import lr_schedule_factor
    from ram_avatar.training.trainer import Trainer

    assert lr_schedule_factor(0.3, 0.5, 0.1) == 1.0
    assert lr_schedule_factor(0.75, 0.5, 0.1) == pytest.approx(0.55)
    assert lr_schedule_factor(1.0, 0.5, 0.1) == pytest.approx(0.1)
    assert lr_schedule_factor(1.5, 0.5, 0.1) == pytest.approx(0.1)
    assert lr_schedule_factor(0.99, 1.0, 0.1) == 1.0            # 1 = constant (the default)
    for name in ("cpu-256", "cpu-256-v1", "gpu-512", "paper-1024"):   # opt-in (config.py)
        assert get_preset(name).optim.lr_decay_start == 1.0, name
    with pytest.raises(ConfigError, match="lr_decay_start"):
        apply_overrides(tiny_config(), ["optim.lr_decay_start=1.5"]).validate()

    cfg = tiny_config()
    cfg.optim = replace(cfg.optim, lr_decay_start=0.5, lr_final_mult=0.1)
    base = cfg.optim.lr * cfg.optim.texture_lr_mult
    seen = []
    for steps in (4, 8):                                        # the second call resumes
        trainer = Trainer(SyntheticAvatar(4), None, tmp_path / "run", cfg,
                          DistributedContext("cpu"), show_progress=False)
        trainer.setup()
        step_once = trainer.train_iteration

        def record(batch, trainer=trainer, step_once=step_once):
            groups = {g["name"]: g["lr"] for g in trainer.state.optimizer.param_groups}
            seen.append((trainer.step, groups["texture"]))
            return step_once(batch)

        trainer.train_iteration = record
        trainer.fit(steps=steps)
    want = [(s, base * lr_schedule_factor(s / t, 0.5, 0.1)) for t, r in ((4, range(4)),
                                                                      (8, range(4, 8)))
            for s in r]
    assert [s for s, _ in seen] == [s for s, _ in want]
    assert [lr for _, lr in seen] == pytest.approx([lr for _, lr in want], rel=1e-6)
    assert seen[4][1] > seen[3][1]        # resumed with a larger budget: from the config's rate
    trainer.train_seconds = lambda: 75.0
    trainer._schedule_lr(None, 100.0)                           # 75 % of a minutes budget
    groups = {g["name"]: g["lr"] for g in trainer.state.optimizer.param_groups}
    assert groups["texture"] == pytest.approx(base * 0.55)
    assert groups["generator"] == pytest.approx(cfg.optim.lr * 0.55)


# ---------------------------------------------------------------------------------------------
# the full renderer (attention, branches, GAN, hand loss, EMA) in training


class FullSynthetic(SyntheticAvatar):
    """SyntheticAvatar with the full renderer's extra maps, neighbour frames and hand boxes."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        mask = item["body_mask"]
        mask_e = F.max_pool2d(mask[None], 5, 1, 2)[0]
        item["uv_expanded"] = item["uv"] * mask_e
        item["body_mask_expanded"] = mask_e
        prev = super().__getitem__(max(i - 1, 0))
        nxt = super().__getitem__(min(i + 1, self.n - 1))
        item["prev_uv"], item["prev_body_mask"] = prev["uv"], prev["body_mask"]
        item["image_prev"], item["image_next"] = prev["image"], nxt["image"]
        item["hand_boxes"] = torch.tensor([[10.0, 10.0, 20.0, 20.0], [40.0, 30.0, 50.0, 40.0]])
        item["hand_valid"] = torch.tensor([True, True])
        return item


def tiny_full_train_config(**kw) -> TrainConfig:
    cfg = get_preset("cpu-256")
    cfg.model = replace(cfg.model, resolution=64, texture_size=64, texture_levels=2,
                        texture_channels=6, base_channels=4, max_channels=16, style_dim=16,
                        latent_dim=8, attention_channels=8, branch_channels=4, branch_hidden=4)
    cfg.disc_base_channels, cfg.disc_max_channels = 4, 16
    cfg.gan_weight_start = 0.01
    cfg.gan.start_step = 0  # the discriminator from the first step (the preset starts it late)
    cfg.r1_interval = 2
    cfg.hand_crop = 16
    cfg.hand_loss = "l1"
    cfg.log_interval = 2
    cfg.preview_interval = cfg.val_interval = cfg.checkpoint_interval = 1000
    for key, value in kw.items():
        setattr(cfg, key, value)
    return cfg


def test_full_training_optimises_attention_and_resumes_exactly(tmp_path):
    # VGG19 weights searched in an empty folder first; without them: the SSIM fallback
    cfg = tiny_full_train_config(vgg_weights=str(tmp_path), keep_checkpoints=1)
    assert set(required_extras(cfg)) == {"expanded", "temporal", "neighbours", "hand_boxes"}
    data, val = FullSynthetic(5), FullSynthetic(1, offset=5)
    # 6 steps: the zero-initialised residual (optim.zero_init_residual) and the learned
    # features starting at zero delay the gradients of the attention's query by a few steps
    a = train(data, val, tmp_path / "a", cfg, steps=6, device="cpu", show_progress=False)
    assert a["step"] == 6
    for key in ("gan_g", "gan_d", "d_real", "d_fake", "hand", "vgg_fallback_ssim", "r1"):
        assert key in a["losses"], key
    b1 = train(data, val, tmp_path / "b", cfg, steps=3, device="cpu", show_progress=False)
    assert b1["step"] == 3
    b2 = train(data, val, tmp_path / "b", cfg, steps=6, device="cpu", show_progress=False)
    assert b2["start_step"] == 3 and b2["step"] == 6
    main_a, main_b = latest_checkpoint(tmp_path / "a"), latest_checkpoint(tmp_path / "b")
    for pa, pb in ((main_a, main_b), (aux_checkpoint_path(main_a), aux_checkpoint_path(main_b))):
        ta, ma = read_checkpoint(pa)
        tb, mb = read_checkpoint(pb)
        assert ta.keys() == tb.keys()
        for key in ta:  # renderer, discriminator, EMA, both optimisers, RNG: bit for bit
            assert torch.equal(ta[key], tb[key]), (pa.name, key)
        assert ma.get("optimizer") == mb.get("optimizer")
    ta, _ = read_checkpoint(aux_checkpoint_path(main_a))
    assert any(k.startswith("model.discriminator.") for k in ta)
    assert any(k.startswith("model.ema.") for k in ta)
    assert any(k.startswith("optim.") for k in ta)  # the discriminator's Adam state
    # only the aux file of the kept checkpoint remains
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == [
        "step_00000006.aux.safetensors", "step_00000006.safetensors"]
    # the attention module is optimised (the released trainer forgets it)
    tensors, _ = read_checkpoint(main_a)
    torch.manual_seed(cfg.seed)
    fresh = AvatarRenderer(replace(cfg.model, num_frames=6))
    for name, p in fresh.named_parameters():
        if name.startswith(("attention.", "hand_branch.", "face_branch.")):
            assert not torch.equal(tensors[f"model.{name}"], p.detach()), name
    # EMA weights load into a renderer
    ema_model = AvatarRenderer(replace(cfg.model, num_frames=6))
    assert load_ema_weights(main_a, ema_model)


def test_full_training_reports_missing_extras(tmp_path):
    cfg = tiny_full_train_config()
    with pytest.raises(RamAvatarError, match="uv_expanded"):
        train(SyntheticAvatar(3), None, tmp_path / "r", cfg, steps=1, device="cpu",
              show_progress=False)


def test_ablated_training_needs_fewer_extras(tmp_path):
    cfg = tiny_full_train_config(gan_weight_max=0.0, hand_weight=0.0, ema_decay=0.0)
    cfg.model = replace(cfg.model, spatial_attention=False, temporal_attention=False)
    assert required_extras(cfg) == ()
    out = train(SyntheticAvatar(3), None, tmp_path / "r", cfg, steps=2, device="cpu",
                show_progress=False)
    assert out["step"] == 2
    assert not aux_checkpoint_path(latest_checkpoint(tmp_path / "r")).exists()


def test_cpu_bf16_autocast_policy_and_training(tmp_path, monkeypatch, caplog):
    """optim.cpu_bf16 (on in the CPU presets): on a CPU with native bfloat16 the renderer's
    convolutions run in bfloat16 and training steps stay finite with float32 weights; without
    native bfloat16 it says so and trains in float32 (the full renderer with its
    discriminator: tests/test_train_options.py)."""
    from ram_avatar.training import distributed as D
    from ram_avatar.training.trainer import Trainer

    dist = D.DistributedContext("cpu")
    assert D.Precision(True, torch.device("cpu"), dist, 1.0).dtype is None  # amp: CUDA only
    assert get_preset("cpu-256").optim.cpu_bf16 and get_preset("cpu-256-v1").optim.cpu_bf16
    monkeypatch.setattr(D, "cpu_has_native_bf16", lambda: True)
    p = D.Precision(True, torch.device("cpu"), dist, 1.0, cpu_bf16=True)
    assert p.dtype == torch.bfloat16 and not p.scale_loss
    with p.autocast():
        y = torch.nn.functional.conv2d(torch.rand(1, 3, 8, 8), torch.rand(4, 3, 3, 3))
    assert y.dtype == torch.bfloat16
    cfg = tiny_config(seed=1)
    cfg = replace(cfg, optim=replace(cfg.optim, cpu_bf16=True))
    trainer = Trainer(SyntheticAvatar(4), SyntheticAvatar(2, offset=4), tmp_path / "run", cfg,
                      dist, show_progress=False)
    trainer.setup()
    assert trainer.precision.dtype == torch.bfloat16
    batches = iter(trainer.loader)
    values = [trainer.train_iteration(next(batches)) for _ in range(3)]
    assert all(math.isfinite(x) for v in values for x in v.values())
    assert all(p.dtype == torch.float32 for p in trainer.model.renderer.parameters())
    monkeypatch.setattr(D, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("INFO"):
        assert D.Precision(True, torch.device("cpu"), dist, 1.0, cpu_bf16=True).dtype is None
    assert "no native bfloat16" in caplog.text
