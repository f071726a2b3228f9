"""Training configs (ram_avatar.training.config): the full presets round-trip through YAML and
their switches are typed overrides."""

from __future__ import annotations

import pytest

from ram_avatar.training import get_preset


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
