"""The full RAM-Avatar renderer (ram_avatar.models.renderer): dual attention, face/hand
branches, triplane body features, the ablation switches and their inputs (CPU, tiny sizes).
The tiny config and random maps are the ``full_config`` / ``full_maps`` fixtures (conftest)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from ram_avatar.models import AvatarRenderer, RendererConfig
from ram_avatar.training.config import TrainConfig


def _call(model, maps, frame_index=None):
    return model.forward_batch(maps, frame_index)



@pytest.mark.parametrize("size", [64, 128])
def test_full_forward_backward(size, full_config, full_maps, open_attention):
    torch.manual_seed(0)
    model = AvatarRenderer(full_config(size))
    open_attention(model)
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


def test_extra_maps_change_the_output_and_fallback_warns(caplog, full_config, full_maps,
                                                          open_attention):
    torch.manual_seed(0)
    model = AvatarRenderer(full_config()).eval()
    open_attention(model)
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
def test_ablation_removes_exactly_the_named_module(switch, full_config, full_maps):
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


def test_no_attention_at_all_and_v1_unchanged(full_config):
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


def test_triplane_body_features(full_config, full_maps):
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


def test_bad_variant_is_rejected(full_config):
    with pytest.raises(ValueError, match="variant"):
        AvatarRenderer(full_config(variant="v2"))


def test_config_sections_decide_the_built_modules(full_config):
    from ram_avatar.models.renderer import (AttentionSection, BranchesSection, TextureSection,
                                            TriplaneSection)

    v1 = RendererConfig(resolution=32, texture_channels=4, texture_size=32, texture_levels=2)
    assert v1.body == TextureSection(4, 32, 2, 0.1, False, False)
    assert v1.attention is None and v1.branches is None  # v1 builds neither (fields ignored)
    full = full_config()
    assert full.attention == AttentionSection(True, True, 8, 0, 2, 2, 0.8, True, "einsum")
    assert full.branches == BranchesSection(True, True, 5, 3, 4, 4, 2)
    tri = full_config(body_features="triplane")
    assert tri.body == TriplaneSection(2, 32, 0.1)
    assert full_config(spatial_attention=False).attention.spatial is False
    assert full_config(spatial_attention=False, temporal_attention=False).attention is None
    assert full_config(face_branch=False, hand_branch=False).branches is None
    # the modules built are exactly the sections'
    for cfg in (v1, full, tri, full_config(face_branch=False, temporal_attention=False)):
        m = AvatarRenderer(cfg)
        assert hasattr(m, "triplane") == isinstance(cfg.body, TriplaneSection)
        assert hasattr(m, "texture") == isinstance(cfg.body, TextureSection)
        assert hasattr(m, "attention") == (cfg.attention is not None)
        assert hasattr(m, "hand_branch") == bool(cfg.branches and cfg.branches.hand)
        assert hasattr(m, "face_branch") == bool(cfg.branches and cfg.branches.face)


def test_one_model_section_loader(tmp_path, full_config):
    """RendererConfig.from_dict reads what to_dict writes, fills missing keys with defaults,
    coerces ints and YAML float strings, and refuses unknown keys and wrong types; the
    training config's model section goes through it (same value, same messages)."""
    from ram_avatar.io.subject import RunConfigError, renderer_config_from_dict
    from ram_avatar.training.config import ConfigError

    cfg = full_config(body_features="triplane", face_branch=False)
    assert RendererConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_dict({"model": cfg.to_dict()}).model == cfg
    got = RendererConfig.from_dict({"resolution": 32, "texture_init_std": "1e-3",
                                    "attention_distance_power": 1})
    assert (got.resolution, got.texture_init_std, got.attention_distance_power) == (32, 1e-3, 1.0)
    assert isinstance(got.attention_distance_power, float) and got.texture_size == 256
    for bad, match in (({"colour": 3}, "model.colour"),
                       ({"resolution": "big"}, "model.resolution"),
                       ({"face_branch": 1}, "model.face_branch"), ({"resolution": 100}, "power")):
        with pytest.raises(ValueError, match=match):
            RendererConfig.from_dict(bad, where="run/config.yaml")
        with pytest.raises(RunConfigError, match=match):
            renderer_config_from_dict(bad, where="run/config.yaml")
        with pytest.raises(ConfigError, match=match):
            TrainConfig.from_dict({"model": bad})
    with pytest.raises(ValueError, match="^run/config.yaml: unknown renderer config key"):
        RendererConfig.from_dict({"colour": 3}, where="run/config.yaml")
