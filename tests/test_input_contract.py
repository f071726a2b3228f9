"""The renderer-input contract (models.inputs) and the one renderer loader (Run.load_renderer)."""

import inspect
import itertools
import shutil

import numpy as np
import pytest
import torch

from ram_avatar.models import inputs as C
from ram_avatar.models.renderer import AvatarRenderer


def _old_map_render_options(names, expand_offset=0.01):
    """The rule restated by drive/export/runtime before the contract (reference)."""
    names, opts = set(names), {}
    if names & {"uv_expanded", "body_mask_expanded", "canon_expanded"}:
        opts["expand_offset"] = float(expand_offset)
    if names & {"canon", "canon_expanded", "prev_canon"}:
        opts["canonical"] = True
    return opts


def test_table_covers_the_renderer_signature():
    params = inspect.signature(AvatarRenderer.forward).parameters
    assert set(C.ALL_INPUTS) == set(C.INPUTS) and len(C.ALL_INPUTS) == 11
    assert all(n in params for n in C.ALL_INPUTS)
    assert {n: C.spec(n).channels for n in C.BASE_INPUTS} == {"uv": 2, "body_mask": 1, "hand": 5, "face": 3}
    assert {C.spec(n).previous_of for n in C.previous_inputs(C.ALL_INPUTS)} == {"uv", "body_mask", "canon"}
    with pytest.raises(ValueError, match="not a renderer input"):
        C.spec("depth")


def test_render_options_match_the_old_rule_on_every_subset():
    for r in range(len(C.ALL_INPUTS) + 1):
        for names in itertools.combinations(C.ALL_INPUTS, r):
            assert C.render_options(names, 0.02) == _old_map_render_options(names, 0.02), names


def test_storage_round_trip_and_previous_rule():
    x = {"uv": torch.rand(2, 2, 8, 8), "body_mask": (torch.rand(2, 1, 8, 8) > 0.5).float(),
         "hand": torch.rand(2, 5, 8, 8)}
    stored = {k: C.to_storage(k, v) for k, v in x.items()}
    assert stored["uv"].dtype == torch.float16 and stored["body_mask"].dtype == torch.uint8
    assert stored["hand"].dtype == torch.uint8
    back = {k: C.to_float(k, v) for k, v in stored.items()}
    assert torch.equal(back["body_mask"], x["body_mask"])
    assert (back["hand"] - x["hand"]).abs().max() <= 0.5 / 255 + 1e-7
    assert (back["uv"] - x["uv"]).abs().max() < 1e-3
    valid = np.array([True, False, True, True, True])
    np.testing.assert_array_equal(C.previous_frame_indices([0, 2, 3, 4], valid), [0, 2, 2, 3])


def test_add_previous_maps_follows_the_table():
    from ram_avatar.render.sequence import add_previous_maps, maps_to_float

    maps = {"uv": torch.arange(3.0).view(3, 1, 1, 1).expand(3, 2, 4, 4).half(),
            "body_mask": torch.ones(3, 1, 4, 4, dtype=torch.uint8),
            "hand": torch.full((3, 5, 4, 4), 255, dtype=torch.uint8)}
    add_previous_maps(maps)
    assert set(maps) == {"uv", "body_mask", "hand", "prev_uv", "prev_body_mask"}
    assert maps["prev_uv"][:, 0, 0, 0].tolist() == [0.0, 0.0, 1.0]  # row 0 keeps its own
    f = maps_to_float(maps)
    assert f["hand"].max() == 1.0 and f["prev_body_mask"].dtype == torch.float32


def test_onnx_inputs_and_feed_check():
    names = ("uv", "body_mask", "hand", "face", "prev_uv", "prev_body_mask")
    spec = C.onnx_inputs(names, 64)
    assert [s["shape"] for s in spec][:2] == [["batch", 2, 64, 64], ["batch", 1, 64, 64]]
    feed = {n: torch.zeros(1, C.spec(n).channels, 64, 64) for n in names}
    C.check_feed(feed, names, 64)
    feed["hand"] = torch.zeros(1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"'hand' has shape \(1, 3, 64, 64\), expected \(B, 5, 64, 64\)"):
        C.check_feed(feed, names, 64)
    with pytest.raises(ValueError, match="unknown renderer inputs"):
        C.check_names(["uv", "body_mask", "normals"])


def test_run_load_renderer_matches_the_training_loader(tmp_path):
    """Run.load_renderer (io, no training import) builds the same model as the training
    config + checkpoint loaders, on a run written by the trainer of commit 6dbface."""
    from ram_avatar.io.subject import RunConfigError, Subject
    from ram_avatar.training.checkpoint import load_checkpoint
    from ram_avatar.training.config import load_config

    fixture = __import__("pathlib").Path(__file__).parent / "data" / "trainer_v0" / "run"
    shutil.copytree(fixture, tmp_path / "s" / "runs" / "default")
    run = Subject(tmp_path / "s").run()
    model, info = run.load_renderer()
    ref = AvatarRenderer(load_config(run.config_path).model)
    load_checkpoint(info["checkpoint"], model=ref)
    ref.eval()
    assert model.config == ref.config and info["step"] == 4 and info["preset"] == "cpu-256"
    for (k, a), (k2, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    g = torch.Generator().manual_seed(0)
    S = model.config.resolution
    feed = {n: torch.rand(1, C.spec(n).channels, S, S, generator=g) for n in model.input_names()}
    with torch.no_grad():
        assert torch.equal(model.forward_batch(feed)["rgb"], ref.forward_batch(feed)["rgb"])
    # strict: an unknown model key is refused (TorchRenderer used to drop it silently)
    text = run.config_path.read_text().replace("model:\n", "model:\n  not_a_field: 1\n", 1)
    run.config_path.write_text(text)
    with pytest.raises(RunConfigError, match="not_a_field"):
        run.load_renderer()


def test_training_batch_check_reads_the_channels_from_the_contract():
    """``training.batches.check_batch`` takes each renderer input's channel count from the
    contract table: a full batch of the right shapes passes, a map with another count is
    refused with its name and the expected shape, and a frame index past the latent table too."""
    from ram_avatar.errors import RamAvatarError
    from ram_avatar.training.batches import check_batch

    S = 16
    extras = ("uv_expanded", "body_mask_expanded", "prev_uv", "prev_body_mask")
    batch = {n: torch.zeros(2, C.spec(n).channels, S, S) for n in C.BASE_INPUTS + extras}
    batch.update(image=torch.zeros(2, 3, S, S), person_mask=torch.zeros(2, 1, S, S),
                 frame_index=torch.tensor([0, 4]))
    check_batch(batch, S, num_frames=5, extra_keys=extras)
    bad = dict(batch, prev_uv=torch.zeros(2, 3, S, S))
    with pytest.raises(RamAvatarError, match=r"'prev_uv' has shape \(3, 16, 16\), expected \(2,16,16\)"):
        check_batch(bad, S, num_frames=5, extra_keys=extras)
    with pytest.raises(RamAvatarError, match="frame_index 4 out of range"):
        check_batch(batch, S, num_frames=4, extra_keys=extras)
