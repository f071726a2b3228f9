"""The studio end to end on the real sample videos (CPU): capture -> train -> export ->
evaluate -> drive, through the ``ram-avatar`` CLI, with numbers checked at every stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ram_avatar.cli import main
from ram_avatar.io.masks import PersonMasks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def subject(tmp_path_factory, taiji_video):
    """Capture 60 frames of taiji.mp4 (the last 10 % are held out by training)."""
    d = tmp_path_factory.mktemp("subject") / "taiji"
    assert main(["capture", str(taiji_video), "-o", str(d), "--start", "100", "--end", "160",
                 "--device", "cpu"]) == 0
    return d


@pytest.fixture(scope="module")
def trained(subject):
    argv = ["train", str(subject), "--preset", "cpu-256-v1", "--steps", "40", "--device", "cpu",
            "--set", "checkpoint_interval=20", "--set", "val_interval=20", "--set", "preview_interval=20"]
    assert main(argv) == 0
    return subject


def test_capture_outputs(subject, capsys):
    assert main(["info", str(subject), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["frames"] == 60 and info["valid_frames"] >= 55
    assert abs(info["fps"] - 23.976) < 0.01 and info["body_model"] == "anny"
    err = info["reprojection_error"]
    assert err["body"] < 0.03, err          # the bar, on real frames
    assert err["face"] < 0.05 and err["hands"] < 0.1, err
    seq_dir = subject / "sequence"
    for name in ("manifest.json", "fitted.npz", "masks.npz", "source.mp4", "overlay.mp4"):
        assert (seq_dir / name).is_file(), name
    from ram_avatar.capture.video import probe_video

    ov = probe_video(seq_dir / "overlay.mp4")
    assert ov.frame_count == 60 and (ov.width, ov.height) == (1280, 720)
    # the overlay shows the mesh: blue-tinted inside the person, the room's corners untouched
    from ram_avatar.io.video import read_frames

    over = read_frames(seq_dir / "overlay.mp4", 0, 1)[0].astype(np.float32)
    s0 = json.loads((seq_dir / "manifest.json").read_text())["source"]["start"]     # 100
    src = read_frames(seq_dir / "source.mp4", s0, s0 + 1)[0].astype(np.float32)
    with PersonMasks(seq_dir / "masks.npz") as masks:
        assert masks.chunk > 0  # written in chunks, frame by frame (io.masks)
        person = masks[0] > 200
    blue_gain = (over[..., 2] - over[..., 0]) - (src[..., 2] - src[..., 0])
    assert person.mean() > 0.05 and np.median(blue_gain[person]) > 15
    assert np.abs(over[:100, :100] - src[:100, :100]).mean() < 3    # video coding noise only
    fitted = np.load(seq_dir / "fitted.npz")
    assert fitted["body_pose"].shape == (60, 35, 3) and fitted["betas"].shape == (1, 6)
    assert fitted["left_hand_pose"].shape == (60, 15, 3) and fitted["transl"].shape == (60, 3)


def test_overlay_of_a_large_video_is_written_smaller(subject, tmp_path):
    """A video larger than max_side is overlaid at that size (4K took 651 ms per frame at full
    size): the frames shrink, and the mesh still lands on the person."""
    import cv2

    from ram_avatar.body import load_body_model
    from ram_avatar.capture.pipeline import write_overlay
    from ram_avatar.capture.video import probe_video
    from ram_avatar.io.sequence import load_sequence
    from ram_avatar.io.video import read_frames

    seq = load_sequence(subject)
    s0 = seq.manifest["source"]["start"]
    out = tmp_path / "overlay.mp4"
    write_overlay(out, seq.source_video(), s0, s0 + 3, 30.0, load_body_model("anny"),
                  seq.params.index(torch.arange(3)), seq.keypoints.subset(slice(0, 3)), seq.K,
                  max_side=640)
    ov = probe_video(out)
    assert (ov.width, ov.height) == (640, 360) and ov.frame_count == 3
    over = read_frames(out, 0, 1)[0].astype(np.float32)
    src = cv2.resize(read_frames(seq.source_video(), s0, s0 + 1)[0], (640, 360),
                     interpolation=cv2.INTER_AREA).astype(np.float32)
    with seq.load_masks() as masks:
        person = cv2.resize(masks[0], (640, 360), interpolation=cv2.INTER_AREA) > 200
    blue_gain = (over[..., 2] - over[..., 0]) - (src[..., 2] - src[..., 0])
    assert person.mean() > 0.05 and np.median(blue_gain[person]) > 15
    assert np.abs(over[:50, :50] - src[:50, :50]).mean() < 3


def test_train_resume_and_loss_falls(trained, capsys):
    run = trained / "runs" / "default"
    assert (run / "config.yaml").is_file()
    ckpts = sorted((run / "checkpoints").glob("step_*.safetensors"))
    assert ckpts and ckpts[-1].name == "step_00000040.safetensors"
    assert any(run.rglob("events.out.tfevents.*")) and any(run.rglob("*.png"))
    # resume: 10 more steps continue from 40
    assert main(["train", str(trained), "--steps", "50", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["start_step"] == 40 and summary["step"] == 50


def test_export_parity_and_evaluate(trained, capsys):
    assert main(["export", str(trained)]) == 0
    report = json.loads((trained / "export" / "export.json").read_text())
    assert report["max_abs_diff"] < 1e-4
    assert [i["name"] for i in report["inputs"]] == ["uv", "body_mask", "hand", "face"]
    capsys.readouterr()
    assert main(["evaluate", str(trained), "--device", "cpu"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["frames"] == 6 and m["lpips"] is None
    assert 8.0 < m["psnr"] < 60 and 0.0 < m["ssim"] <= 1.0
    assert 0 < m["psnr_masked"] < 60 and m["temporal_stability"] >= 0
    assert json.loads((trained / "runs" / "default" / "metrics.json").read_text())["psnr"] == m["psnr"]


def test_drive_onnx_matches_torch(trained, basketball_video, tmp_path):
    from ram_avatar.capture.video import VideoWriter, iter_frames, probe_video
    from ram_avatar.drive import RendererBackend
    from ram_avatar.io.sequence import load_sequence
    from ram_avatar.training.data import maps_to_float, render_sequence_maps

    if not (trained / "export" / "avatar.onnx").is_file():
        assert main(["export", str(trained)]) == 0
    clip = tmp_path / "drive_clip.mp4"
    with VideoWriter(clip, 30, (1920, 1080)) as w:
        for i, f in enumerate(iter_frames(basketball_video, 40, 52)):
            w.write(f)
    out = tmp_path / "out.mp4"
    assert main(["drive", str(trained), "--source", str(clip), "-o", str(out), "--device", "cpu"]) == 0
    info = probe_video(out)
    assert info.frame_count == 12 and abs(info.fps - 30) < 1e-6 and info.height == 512
    # the avatar half of the output is not the empty background: something moved onto it
    frames = np.stack(list(iter_frames(out)))
    right = frames[:, :, info.width // 2 + 200:]
    assert right.std() > 5
    # ONNX Runtime and torch agree on real conditioning maps
    seq = load_sequence(trained)
    maps = maps_to_float(render_sequence_maps(seq, np.arange(2), 256))
    a = RendererBackend(trained, "onnx", "default", torch.device("cpu"))(maps).astype(int)
    b = RendererBackend(trained, "torch", "default", torch.device("cpu"))(maps).astype(int)
    assert np.abs(a - b).max() <= 1


@pytest.fixture(scope="module")
def trained_full(subject, tmp_path_factory):
    """The same capture trained a few steps with the full RAM-Avatar renderer (cpu-256:
    dual attention, face/hand branches, temporal discriminator), in its own subject folder
    so its export does not replace renderer v1's."""
    import shutil

    d = tmp_path_factory.mktemp("subject_full") / "taiji"
    shutil.copytree(subject / "sequence", d / "sequence")
    argv = ["train", str(d), "--preset", "cpu-256", "--steps", "6", "--device", "cpu",
            "--set", "checkpoint_interval=3", "--set", "val_interval=3"]
    assert main(argv) == 0
    return d


def test_full_renderer_export_evaluate_drive(trained_full, basketball_video, tmp_path, capsys):
    from ram_avatar.capture.video import VideoWriter, iter_frames, probe_video
    from ram_avatar.drive import RendererBackend
    from ram_avatar.io.sequence import load_sequence
    from ram_avatar.training.data import (add_previous_maps, map_render_options, maps_to_float,
                                          render_sequence_maps)

    capsys.readouterr()
    assert main(["export", str(trained_full)]) == 0
    report = json.loads((trained_full / "export" / "export.json").read_text())
    names = [i["name"] for i in report["inputs"]]
    assert names == ["uv", "body_mask", "hand", "face", "uv_expanded", "body_mask_expanded",
                     "prev_uv", "prev_body_mask"]
    assert report["variant"] == "full" and report["max_abs_diff"] < 1e-4
    capsys.readouterr()
    assert main(["evaluate", str(trained_full), "--device", "cpu"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["frames"] == 6 and 5.0 < m["psnr"] < 60 and 0.0 < m["ssim"] <= 1.0
    # drive: 6 frames of the basketball clip, ONNX Runtime; then onnx vs torch on its maps
    clip = tmp_path / "clip.mp4"
    with VideoWriter(clip, 30, (1920, 1080)) as w:
        for f in iter_frames(basketball_video, 40, 46):
            w.write(f)
    out = tmp_path / "out.mp4"
    assert main(["drive", str(trained_full), "--source", str(clip), "-o", str(out),
                 "--device", "cpu"]) == 0
    assert probe_video(out).frame_count == 6
    seq = load_sequence(trained_full)
    onnx = RendererBackend(trained_full, "onnx", "default", torch.device("cpu"))
    assert set(onnx.render_options()) == {"expand_offset"}
    maps = render_sequence_maps(seq, np.arange(10, 13), 256,
                                **map_render_options(onnx.input_names, onnx.expand_offset))
    maps = maps_to_float(add_previous_maps(maps))
    assert torch.equal(maps["prev_uv"][1], maps["uv"][0])
    a = onnx(maps).astype(int)
    b = RendererBackend(trained_full, "torch", "default", torch.device("cpu"))(maps).astype(int)
    assert np.abs(a - b).max() <= 1
