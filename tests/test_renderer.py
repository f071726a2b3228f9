"""The full RAM-Avatar renderer (dual attention, face/hand branches, triplane), its ablation
switches, ONNX export, the temporal discriminator and GAN/hand losses, and full training with
exact resume of the discriminator and the EMA (CPU, tiny sizes)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from ram_avatar.errors import RamAvatarError
from ram_avatar.losses.gan import d_logistic_loss, g_nonsaturating_loss, gan_weight, r1_penalty
from ram_avatar.losses.hand import HandPerceptualLoss, hand_crops
from ram_avatar.models import AvatarRenderer, RendererConfig
from ram_avatar.models.discriminator import TemporalDiscriminator, stack_frames
from ram_avatar.training import get_preset, latest_checkpoint, train
from ram_avatar.training.checkpoint import read_checkpoint
from ram_avatar.training.config import TrainConfig
from ram_avatar.training.trainer import (_discriminator_step, aux_checkpoint_path,
                                         load_ema_weights, required_extras)
from test_trainer import SyntheticAvatar

EXTRA_KEYS = ("uv_expanded", "body_mask_expanded", "prev_uv", "prev_body_mask")


def full_config(resolution: int = 64, **kw) -> RendererConfig:
    base = dict(resolution=resolution, texture_channels=6, texture_size=64, texture_levels=2,
                base_channels=4, max_channels=16, style_dim=16, latent_dim=8, num_frames=6,
                variant="full", attention_channels=8, attention_recurrence=2,
                branch_channels=4, branch_hidden=4, branch_depth=2, triplane_channels=2,
                triplane_size=32)
    base.update(kw)
    return RendererConfig(**base)


def full_maps(batch: int, size: int, seed: int = 0, triplane: bool = False) -> dict:
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


def _call(model, maps, frame_index=None):
    return model.forward_batch(maps, frame_index)


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


# ---------------------------------------------------------------------------------------------
# model


@pytest.mark.parametrize("size", [64, 128])
def test_full_forward_backward(size):
    torch.manual_seed(0)
    model = AvatarRenderer(full_config(size))
    _open_attention(model)
    with torch.no_grad():
        model.generator.latents.weight.normal_()
    maps = full_maps(2, size)
    out = _call(model, maps, torch.tensor([0, 3]))
    for key, c in (("rgb", 3), ("alpha", 1), ("fg", 3), ("alpha_logit", 1)):
        assert out[key].shape == (2, c, size, size), key
        assert torch.isfinite(out[key]).all()
    loss = F.l1_loss(out["rgb"], torch.rand_like(out["rgb"])) + out["alpha_logit"].square().mean()
    loss.backward()
    for name, p in model.named_parameters():
        if name == "generator.latents.weight":
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.config.in_channels == 6 + 4 + 4 + 1
    assert model.generator.stem.weight.shape[1] == model.config.in_channels


def test_extra_maps_change_the_output_and_fallback_warns(caplog):
    torch.manual_seed(0)
    model = AvatarRenderer(full_config()).eval()
    _open_attention(model)
    maps = full_maps(1, 64)
    with torch.no_grad():
        ref = _call(model, maps)["rgb"]
        for key in ("uv_expanded", "prev_uv"):
            changed = dict(maps, **{key: torch.rand_like(maps[key]) * maps["body_mask"]})
            assert not torch.allclose(_call(model, changed)["rgb"], ref, atol=1e-5), key
        base = {k: maps[k] for k in ("uv", "body_mask", "hand", "face")}
        with caplog.at_level("WARNING"):
            fallback = _call(model, base)["rgb"]
        assert fallback.shape == ref.shape
        assert "uv_expanded" in caplog.text and "prev_uv" in caplog.text


ABLATIONS = {
    "spatial_attention": ("attention.spatial.",),
    "temporal_attention": ("attention.temporal.",),
    "face_branch": ("face_branch.",),
    "hand_branch": ("hand_branch.",),
}


@pytest.mark.parametrize("switch", list(ABLATIONS))
def test_ablation_removes_exactly_the_named_module(switch):
    torch.manual_seed(0)
    full = AvatarRenderer(full_config())
    ablated = AvatarRenderer(full_config(**{switch: False}))
    full_names = {n for n, _ in full.named_parameters()}
    abl_names = {n for n, _ in ablated.named_parameters()}
    removed = full_names - abl_names
    assert abl_names <= full_names
    assert removed and all(n.startswith(ABLATIONS[switch]) for n in removed), removed
    assert not any(n.startswith(ABLATIONS[switch]) for n in abl_names)
    # the generator's input shrinks only for the branches
    expected_in = full.config.in_channels - (4 if switch in ("face_branch", "hand_branch") else 0)
    assert ablated.generator.stem.weight.shape[1] == expected_in
    with torch.no_grad():
        out = _call(ablated, full_maps(2, 64))
    assert out["rgb"].shape == (2, 3, 64, 64)
    # the ablated part's inputs are no longer needed
    dropped = {"spatial_attention": {"uv_expanded", "body_mask_expanded"},
               "temporal_attention": {"prev_uv", "prev_body_mask"},
               "face_branch": {"face"}, "hand_branch": {"hand"}}[switch]
    assert set(full.input_names()) - set(ablated.input_names()) == dropped


def test_no_attention_at_all_and_v1_unchanged():
    model = AvatarRenderer(full_config(spatial_attention=False, temporal_attention=False))
    assert not hasattr(model, "attention")
    assert model.config.data_extras() == ()
    v1 = AvatarRenderer(replace(full_config(), variant="v1"))
    names = {n for n, _ in v1.named_parameters()}
    assert not any(n.startswith(("attention", "face_branch", "hand_branch", "triplane"))
                   for n in names)
    assert v1.input_names() == ("uv", "body_mask", "hand", "face")
    # a v1 config written before the new fields existed still loads as v1
    data = RendererConfig().to_dict()
    for key in ("variant", "spatial_attention", "face_branch", "body_features"):
        data.pop(key)
    assert TrainConfig.from_dict({"model": data}).model.variant == "v1"


def test_triplane_body_features():
    torch.manual_seed(0)
    model = AvatarRenderer(full_config(body_features="triplane"))
    names = {n for n, _ in model.named_parameters()}
    assert {"triplane.planes.xy", "triplane.planes.yz", "triplane.planes.xz"} <= names
    assert not any(n.startswith("texture.") for n in names)
    assert model.config.body_channels == 6
    assert model.config.data_extras() == ("expanded", "canonical", "temporal")
    maps = full_maps(2, 64, triplane=True)
    out = _call(model, maps)
    out["rgb"].mean().backward()
    assert model.triplane.planes["xy"].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="canon"):
        model(None, maps["body_mask"], maps["hand"], maps["face"])


def test_bad_variant_is_rejected():
    with pytest.raises(ValueError, match="variant"):
        AvatarRenderer(full_config(variant="v2"))


def test_full_onnx_export_dynamic_batch(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from exporters.onnx_export import export_onnx

    torch.manual_seed(0)
    model = AvatarRenderer(full_config()).eval()
    _open_attention(model)
    names = model.input_names()

    class Export(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            out = self.m.forward_batch(dict(zip(names, args)), None)
            return out["rgb"], out["alpha"]

    wrapper = Export(model).eval()
    maps = full_maps(2, 64, seed=1)
    report = export_onnx(wrapper, {k: maps[k] for k in names}, tmp_path / "full.onnx",
                         output_names=["rgb", "alpha"], dynamic_batch=True, atol=1e-4)
    assert report["inputs"][0]["shape"][0] == "batch"
    sess = ort.InferenceSession(str(tmp_path / "full.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        m = full_maps(batch, 64, seed=batch + 5)
        with torch.no_grad():
            ref = wrapper(*[m[k] for k in names])
        got = sess.run(None, {k: m[k].numpy() for k in names})
        for r, o in zip(ref, got):
            assert float((r - torch.from_numpy(o)).abs().max()) < 1e-4


# ---------------------------------------------------------------------------------------------
# discriminator and losses


def test_discriminator_shapes():
    d = TemporalDiscriminator(64, base_channels=4, max_channels=16)
    frames = [torch.rand(3, 3, 64, 64) for _ in range(3)]
    x = stack_frames(*frames)
    assert x.shape == (3, 9, 64, 64)
    assert torch.equal(x[:, 3:6], frames[1])  # the judged frame sits in the middle
    assert d(x).shape == (3, 1)
    assert d(x[:1]).shape == (1, 1)
    with pytest.raises(ValueError):
        d(torch.rand(1, 6, 64, 64))


def _toy_triplets(n: int, size: int, seed: int):
    """Real: smooth gradients moving slowly; fake middle frame: noise."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    frames = []
    for _ in range(n):
        phase = torch.rand(1, generator=g).item()
        seq = [torch.stack([torch.sin(6 * xs + phase + 0.1 * t) * 0.5 + 0.5, ys,
                            torch.full_like(xs, 0.4)]) for t in range(3)]
        frames.append(torch.stack(seq))
    frames = torch.stack(frames)                         # (n,3,3,S,S)
    prev, cur, nxt = frames[:, 0], frames[:, 1], frames[:, 2]
    fake = torch.rand(cur.shape, generator=g)
    return prev, cur, nxt, fake


def test_discriminator_step_separates_real_from_fake():
    """The trainer's D update (not swapped): after a few steps real logits > fake logits."""
    torch.manual_seed(0)
    cfg = get_preset("cpu-256")
    cfg.r1_interval = 4
    disc = TemporalDiscriminator(32, base_channels=8, max_channels=32)
    opt = torch.optim.Adam(disc.parameters(), lr=2e-3, betas=(0.5, 0.99))

    def clip_and_step(o, sc, params, loss, what):
        loss.backward()
        o.step()

    for step in range(20):
        prev, cur, nxt, fake = _toy_triplets(4, 32, seed=step)
        batch = {"image_prev": prev, "image": cur, "image_next": nxt}
        terms = _discriminator_step(disc, opt, None, batch, fake, cfg, step,
                                    contextlib.nullcontext, clip_and_step)
        assert all(not p.requires_grad for p in disc.parameters())  # frozen again for G
        assert ("r1" in terms) == (step % cfg.r1_interval == 0)
    prev, cur, nxt, fake = _toy_triplets(8, 32, seed=999)
    with torch.no_grad():
        real_logits = disc(stack_frames(prev, cur, nxt))
        fake_logits = disc(stack_frames(prev, fake, nxt))
    assert real_logits.min() > fake_logits.max()
    assert real_logits.mean() > fake_logits.mean() + 0.5
    assert d_logistic_loss(real_logits, fake_logits) < 2 * math.log(2)


def test_gan_losses_and_ramp():
    real, fake = torch.tensor([[3.0]]), torch.tensor([[-3.0]])
    assert d_logistic_loss(real, fake) < d_logistic_loss(fake, real)
    assert g_nonsaturating_loss(torch.tensor([[3.0]])) < g_nonsaturating_loss(torch.tensor([[0.0]]))
    assert gan_weight(0) == pytest.approx(1e-3)
    assert gan_weight(1999) == pytest.approx(1e-3)
    assert gan_weight(2000) == pytest.approx(1.1e-3)
    assert gan_weight(10 ** 7) == pytest.approx(0.02)
    assert gan_weight(5, maximum=0.0) == 0.0
    x = torch.randn(2, 9, 8, 8, requires_grad=True)
    r1 = r1_penalty((x * 2).sum(dim=(1, 2, 3))[:, None], x)
    assert r1.item() == pytest.approx(4.0 * 9 * 64)


def test_hand_crops_and_l1_fallback():
    pred = torch.arange(64 * 64, dtype=torch.float32).view(1, 1, 64, 64).expand(1, 3, -1, -1)
    target = torch.zeros_like(pred)
    boxes = torch.tensor([[[10.0, 20.0, 14.0, 24.0], [60.0, 60.0, 70.0, 70.0]]])
    p, t = hand_crops(pred, target, boxes, torch.tensor([[True, True]]), crop=8)
    assert p.shape == (2, 3, 8, 8)
    assert p[0, 0, 0, 0] == 18 * 64 + 8        # centred on (12, 22)
    assert p[1, 0, -1, -1] == 63 * 64 + 63     # shifted inside the image
    p, _ = hand_crops(pred, target, boxes, torch.tensor([[False, True]]), crop=8)
    assert p.shape[0] == 1
    loss = HandPerceptualLoss(8)
    assert loss.mode == "l1"
    value = loss(pred, target, boxes, torch.tensor([[True, False]]))
    assert value == pytest.approx(float(pred[0, :, 18:26, 8:16].mean()))
    gone = torch.tensor([[[-50.0, -50.0, -40.0, -40.0], [100.0, 100.0, 110.0, 110.0]]])
    pr = pred.clone().requires_grad_(True)
    zero = loss(pr, target, gone)
    zero.backward()
    assert zero.item() == 0.0 and pr.grad is not None


# ---------------------------------------------------------------------------------------------
# training


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
    a = train(data, val, tmp_path / "a", cfg, steps=4, device="cpu", show_progress=False)
    assert a["step"] == 4
    for key in ("gan_g", "gan_d", "d_real", "d_fake", "hand", "vgg_fallback_ssim", "r1"):
        assert key in a["losses"], key
    b1 = train(data, val, tmp_path / "b", cfg, steps=2, device="cpu", show_progress=False)
    assert b1["step"] == 2
    b2 = train(data, val, tmp_path / "b", cfg, steps=4, device="cpu", show_progress=False)
    assert b2["start_step"] == 2 and b2["step"] == 4
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
        "step_00000004.aux.safetensors", "step_00000004.safetensors"]
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


# ---------------------------------------------------------------------------------------------
# conditioning extras


def test_vertex_normals_point_outward():
    from ram_avatar.render.conditioning import vertex_normals

    # octahedron with inward-wound faces: normals still come out pointing away from the centre
    verts = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
    faces = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4],
                          [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    for f in (faces, faces.flip(1)):
        n = vertex_normals(verts[None] + 3.0, f)
        assert torch.allclose(n[0], verts, atol=1e-5)


def test_conditioning_expanded_and_canonical_maps(anny_body):
    import numpy as np

    from ram_avatar.render.conditioning import ConditioningRenderer

    cond = ConditioningRenderer(anny_body, backend="auto")
    params = anny_body.zero_params(2)
    params.body_pose[1, :, 0] = 0.2  # a second, bent pose
    S = 64
    K = np.array([[140.0, 0, S / 2], [0, 140.0, S / 2], [0, 0, 1]])
    m = cond.render(params, None, K, S, expand_offset=0.03, canonical=True)
    base = cond.render(params, None, K, S)
    assert set(base) <= set(m) and "uv_expanded" not in base
    for key in ("uv", "body_mask", "hand", "face"):
        assert torch.equal(m[key], base[key]), key  # existing maps unchanged
    mask, mask_e = m["body_mask"], m["body_mask_expanded"]
    assert m["uv_expanded"].shape == (2, 2, S, S) and m["canon"].shape == (2, 3, S, S)
    assert mask_e.sum() > mask.sum() * 1.05                # the expanded mesh covers more
    assert (mask * (1 - mask_e)).sum() <= 0.01 * mask.sum()  # ... and (almost) all of the body
    assert m["canon"].abs().max() <= 1.0
    assert torch.equal(m["canon"].abs().sum(1, keepdim=True) > 0, mask > 0)
    assert m["canon_expanded"].shape == (2, 3, S, S)
    boxes = m["hand_boxes"]
    assert boxes.shape == (2, 2, 4) and (boxes[..., 2:] >= boxes[..., :2]).all()


def test_full_presets_round_trip_and_switches(tmp_path):
    from ram_avatar.training import load_config, save_config
    from ram_avatar.training.config import apply_overrides

    for name in ("cpu-256", "paper-1024"):
        cfg = get_preset(name)
        assert cfg.model.variant == "full" and cfg.adversarial and cfg.ema_decay > 0
        save_config(cfg, tmp_path / f"{name}.yaml")
        assert load_config(tmp_path / f"{name}.yaml") == cfg
    paper = get_preset("paper-1024")
    assert paper.model.in_channels == 48 + 16 + 16 + 1
    assert (paper.vgg_weight, paper.hand_weight, paper.hand_crop) == (0.03, 0.1, 128)
    assert (paper.gan_weight_start, paper.gan_weight_max) == (1e-3, 0.02)
    ablated = apply_overrides(paper, ["model.spatial_attention=false",
                                      "model.face_branch=false", "model.body_features=triplane"])
    assert ablated.model.input_names() == ("body_mask", "hand", "canon", "prev_canon",
                                           "prev_body_mask")
    from ram_avatar.training.config import ConfigError

    with pytest.raises(ConfigError, match="variant"):
        apply_overrides(paper, ["model.variant=v3"])


def test_bench_render_train_step_reports_time_and_memory():
    """``bench render --train-step``: one forward+backward of the renderer, with the time and
    the peak memory (CPU: peak RSS), leaving no gradients behind."""
    from ram_avatar.bench_render import bench_render, train_step_cost

    model = AvatarRenderer(full_config(32))
    cost = train_step_cost(model, full_maps(1, 32), torch.device("cpu"))
    assert cost["ms"] > 0 and cost["peak_rss_mb"] >= cost["rss_before_mb"] > 0
    assert all(p.grad is None for p in model.parameters()) and not model.training
    report = bench_render(resolutions=(32,), preset="cpu-256", repeats=1, warmup=0,
                          onnx=False, train_step=True)
    res = report["results"]["32"]
    assert set(res["components"]) == {"body_sampling", "attention", "branches", "generator",
                                      "total"}
    total = res["components"]["total"]
    parts = sum(res["components"][k]["params"] for k in ("body_sampling", "attention",
                                                         "branches", "generator"))
    assert total["params"] >= parts and total["gflops"] > 0
    assert res["train_step"]["ms"] > 0 and res["train_step"]["peak_rss_mb"] > 0
