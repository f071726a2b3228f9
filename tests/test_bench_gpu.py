"""``ram-avatar bench gpu`` and the ``gpu-512`` preset, on the CPU.

The benchmark's code path runs here with the device as a parameter (``allow_cpu``) at tiny
sizes, TensorRT replaced by ONNX Runtime behind the same builder/loader seam; only the CUDA
calls themselves (events, memory statistics, TensorRT, the CUDA provider) stay unrun.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from live_fixture import live_subject  # noqa: F401  (session fixture)
from ram_avatar import bench_gpu as BG
from ram_avatar.cli import main
from ram_avatar.runtime.engines import OnnxRunner
from ram_avatar.training.config import get_preset, load_config, save_config

TINY = ["model.texture_size=32", "model.texture_levels=2", "model.base_channels=4",
        "model.max_channels=8", "model.style_dim=8", "model.latent_dim=8",
        "model.attention_channels=8", "model.branch_channels=4", "model.branch_hidden=4",
        "disc_base_channels=4", "disc_max_channels=8", "vgg_weight=0.0", "hand_weight=0.0"]


def _tiny(res=32):
    return TINY + [f"model.resolution={res}"]


def _fake_trt():
    """TensorRT stand-ins: the 'engine' is the ONNX file, run by ONNX Runtime on the CPU."""
    built = []

    def builder(onnx_path, engine_path):
        shutil.copyfile(onnx_path, engine_path)
        built.append(engine_path)
        return {"build_seconds": 0.5, "fp16": False}

    def loader(path, dev):
        runner = OnnxRunner(path, providers=["CPUExecutionProvider"])
        return lambda feed: {k: torch.from_numpy(v) for k, v in runner(feed).items()}

    return builder, loader, built


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cpu_only_machine_exits_2_with_the_plan(tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["bench", "gpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err
    for name in BG.MEASUREMENTS:
        assert f"- {name}: {BG.MEASUREMENTS[name]}" in err
    assert not out.exists()  # nothing measured, nothing written
    with pytest.raises(BG.GpuRequiredError):
        BG.bench_gpu(out, device="cpu")


@pytest.mark.slow
def test_bench_gpu_code_path_on_cpu(tmp_path):
    builder, loader, built = _fake_trt()
    verts = torch.tensor([[[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.0, 0.6, 2.5],
                           [0.6, 0.6, 3.0]]])
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    rep = BG.bench_gpu(tmp_path / "rep", device="cpu", allow_cpu=True,
                       presets=("cpu-256", "gpu-512"), sizes=(32,), overrides=_tiny(),
                       renderer_preset="gpu-512", train_steps=2, warmup_steps=1, repeats=2,
                       warmup=1, engine_builder=builder, engine_loader=loader,
                       raster_mesh=(verts, faces), estimate=False)
    js = json.loads((tmp_path / "rep" / "bench_gpu.json").read_text())
    md = (tmp_path / "rep" / "bench_gpu.md").read_text()
    assert js["device"] == "cpu" and "not GPU figures" in js["note"]
    sec = js["sections"]
    assert set(sec) == {"train", "export", "render", "live", "raster"}
    for preset in ("cpu-256", "gpu-512"):
        t = sec["train"][preset]
        assert "error" not in t, t
        assert t["resolution"] == 32 and t["batch_size"] == 2 and t["steps"] == 2
        assert t["steps_per_s"] > 0 and t["amp"] == "float32" and t["peak_memory_gib"] is None
        assert np.isfinite(t["loss"]) and t["num_parameters"] > 0
        assert t["renderer_step_amp"]["dtype"] == "bfloat16" and t["renderer_step_amp"]["ms"] > 0
        assert "memory_estimate" not in t  # estimate=False (tested on its own below)
    ex, rd = sec["export"]["32"], sec["render"]["32"]
    assert "error" not in ex, ex
    assert ex["renderer"].startswith("random-init gpu-512") and ex["onnx_mb"] > 0
    assert ex["tensorrt_build_s"] == 0.5 and len(built) == 1
    assert ex["max_abs_grey_levels"]["onnxruntime"] < 0.05
    assert ex["max_abs_grey_levels"]["tensorrt"] < 0.05
    for key in ("torch_ms", "torch_autocast_ms", "onnxruntime_ms", "tensorrt_ms"):
        assert rd[key] > 0, key
    assert rd["onnxruntime_provider"] == "CPUExecutionProvider"
    assert "SUBJECT" in sec["live"]["skipped"]
    ras = sec["raster"]["32"]
    assert ras["torch"]["ms"] > 0 and 0 < ras["torch"]["coverage"] < 1
    assert sec["raster"]["auto"] in ("moderngl", "torch", "nvdiffrast")
    # targets: nothing at 1024 or paper-1024 was measured here
    assert [t["ok"] for t in js["targets"]] == [None, None, True, None]
    assert js["targets"][2]["value"] == ex["max_abs_grey_levels"]["tensorrt"]
    assert "## Training" in md and "| gpu-512 | 32 | 2 |" in md and "## Rasterizer" in md
    assert rep["json"].endswith("bench_gpu.json")


def test_bench_gpu_records_section_errors_and_goes_on(tmp_path):
    rep = BG.bench_gpu(tmp_path, device="cpu", allow_cpu=True, sections=("train", "raster"),
                       presets=("no-such-preset",), sizes=(16,), overrides=_tiny(16),
                       repeats=1, warmup=1,
                       raster_mesh=(torch.tensor([[[0.0, 0.0, 1.0], [0.3, 0.0, 1.0],
                                                   [0.0, 0.3, 1.0]]]), torch.tensor([[0, 1, 2]])))
    assert "unknown training preset" in rep["sections"]["train"]["no-such-preset"]["error"]
    assert rep["sections"]["raster"]["16"]["torch"]["ms"] > 0
    with pytest.raises(BG.RamAvatarError, match="sections"):
        BG.bench_gpu(tmp_path, device="cpu", allow_cpu=True, sections=("bogus",))


def test_targets_and_markdown():
    report = {"date": "2026-12-02", "device": "cuda:0",
              "machine": {"gpu": "H200", "torch": "2.13", "cuda": "12.8", "platform": "Linux",
                          "onnxruntime": "1.22", "tensorrt": "10.9"},
              "sections": {"render": {"1024": {"tensorrt_ms": 7.5}},
                           "live": {"onnx@1024": {"fps": 21.0}, "tensorrt@1024": {"fps": 33.0},
                                    "tensorrt@512": {"fps": 90.0}},
                           "export": {"512": {"max_abs_grey_levels": {"tensorrt": 1.2}},
                                      "1024": {"max_abs_grey_levels": {"tensorrt": 2.6}}},
                           "train": {"paper-1024": {"steps_per_s": 3.1}}}}
    rows = BG.check_targets(report)
    assert [r["ok"] for r in rows] == [True, True, False, False]
    assert [r["value"] for r in rows] == [7.5, 33.0, 2.6, 3.1]
    report["targets"] = rows
    md = BG.render_markdown(report)
    assert "| TensorRT fp16 renderer at 1024^2 <= 8 ms | 7.5 | yes |" in md
    assert "| paper-1024 training >= 4 steps/s at batch 2 | 3.1 | NO |" in md
    assert BG.check_targets({"sections": {}})[0]["ok"] is None


def test_live_bytes_counts_storages():
    tracker = BG._LiveBytes()
    with tracker.mode():
        a = torch.empty(1000)
        b = a.view(10, 100)  # a view: no new storage
        c = torch.empty(500, dtype=torch.float64)
        assert tracker.current == 8000
        del a, b
        assert tracker.current == 4000
        d = torch.empty(250)
    assert tracker.peak == 8000 and tracker.current == 5000
    del c, d
    assert tracker.current == 0


@pytest.mark.slow
def test_memory_estimate_fake_equals_real():
    """Fake tensors count exactly the bytes real CPU tensors would use."""
    from ram_avatar.training.config import apply_overrides

    cfg = apply_overrides(get_preset("gpu-512"), _tiny(32) + ["hand_weight=0.1"])
    fake = BG.estimate_train_memory(cfg, fake=True)
    real = BG.estimate_train_memory(cfg, fake=False)
    assert fake == real
    bf16 = BG.estimate_train_memory(cfg, amp_dtype=torch.bfloat16)
    assert bf16["amp"] == "bfloat16" and bf16["weights"] == fake["weights"]
    assert 0 < fake["weights"] < fake["after_step"] < fake["peak"]
    assert fake["batch"] == 2 and fake["resolution"] == 32
    half = BG.estimate_train_memory(cfg, batch=1)
    assert half["peak"] < fake["peak"] and half["weights"] <= fake["weights"]


def test_gpu_512_preset(tmp_path):
    cfg = get_preset("gpu-512")
    cpu, paper = get_preset("cpu-256").model, get_preset("paper-1024").model
    m = cfg.model
    assert m.resolution == 512 and m.texture_size == 512 and m.texture_channels == 32
    assert m.variant == "full" and cfg.batch_size == 2
    for key in ("base_channels", "max_channels", "style_dim", "attention_channels"):
        assert getattr(cpu, key) < getattr(m, key) < getattr(paper, key), key
    assert cfg.vgg_weight == 0.03 and cfg.hand_weight == 0.1 and cfg.gan_weight_max == 0.02
    save_config(cfg, tmp_path / "c.yaml")
    assert isinstance(yaml.safe_load((tmp_path / "c.yaml").read_text()), dict)
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.slow
def test_preset_memory_estimates():
    """The sizing claims of the README: gpu-512 at batch 2 leaves room on a 12 GB card (its
    tensors below 8 GiB, estimated on the CPU), paper-1024 at batch 2 fits in 80 GB."""
    gpu = BG.estimate_train_memory(get_preset("gpu-512"), steps=1)
    paper = BG.estimate_train_memory(get_preset("paper-1024"), steps=1)
    assert gpu["batch"] == paper["batch"] == 2
    assert gpu["peak"] < 8.0 and paper["peak"] < 60.0 and gpu["peak"] < paper["peak"]
    half = BG.estimate_train_memory(get_preset("gpu-512"), amp_dtype=torch.bfloat16, steps=1)
    assert half["weights"] == gpu["weights"] and half["peak"] < 0.9 * gpu["peak"]


@pytest.mark.slow
def test_bench_gpu_with_subject_on_cpu(live_subject, tmp_path):  # noqa: F811
    """Parity on the subject's own renderer and real held-out maps, and the live section."""
    rep = BG.bench_gpu(tmp_path, live_subject, device="cpu", allow_cpu=True,
                       sections=("export", "live"), sizes=(256,), live_sizes=(256,),
                       live_backends=("onnx",), frames=2, repeats=1, warmup=1)
    ex = rep["sections"]["export"]["256"]
    assert "error" not in ex, ex
    assert ex["renderer"] == "subject" and len(ex["held_out_frames"]) >= 1
    assert ex["max_abs_grey_levels"]["onnxruntime"] < 0.5
    assert ex["tensorrt"].startswith("skipped")
    live = rep["sections"]["live"]["onnx@256"]
    assert "error" not in live, live
    assert live["fps"] > 0 and live["renderer"] == "subject"
