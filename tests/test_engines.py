"""One engine loader and one TensorRT runner (issue 11, item 5)."""

from __future__ import annotations

import sys

import pytest
from live_fixture import live_subject  # noqa: F401 - session fixture

from ram_avatar.errors import RamAvatarError


def test_one_tensorrt_runner_and_import_check(tmp_path, monkeypatch):
    """exporters' runner is the runtime's (no second copy), with the same install hint."""
    import exporters
    import exporters.tensorrt as ex_trt
    from ram_avatar.runtime import trt

    assert ex_trt.TensorRTRunner is trt.TensorRTEngine is exporters.TensorRTRunner
    assert ex_trt.import_tensorrt is trt.import_tensorrt
    assert not hasattr(ex_trt, "_torch_dtype")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    for call in (lambda: ex_trt.build_engine(tmp_path / "a.onnx", tmp_path / "a.engine"),
                 lambda: trt.TensorRTEngine(tmp_path / "a.engine")):
        with pytest.raises(RamAvatarError) as err:
            call()
        assert str(err.value) == trt.INSTALL_HINT
    assert "pip install 'ram-avatar-studio[tensorrt]'" in trt.INSTALL_HINT


def test_tensorrt_dtype_table():
    """TensorRT tensor dtypes map onto torch dtypes; unknown ones are a clear error."""
    import types

    import torch

    from ram_avatar.runtime.trt import torch_dtype

    fake = types.SimpleNamespace(float32="f32", float16="f16", int32="i32", int8="i8",
                                 bool="b", int64="i64")
    assert torch_dtype(fake, "f16") is torch.float16
    assert torch_dtype(fake, "i64") is torch.int64
    with pytest.raises(RamAvatarError, match="unsupported TensorRT tensor dtype fp8"):
        torch_dtype(fake, "fp8")


# --------------------------------------------------------------------------------------------
# bench live --soak (issue 12, item 10)


def test_soak_summary_numbers():
    """Growth is measured from the end of the first interval; fps slope by least squares."""
    from ram_avatar.bench import soak_summary

    rows = [{"t_min": m, "fps": f, "rss_mib": r} for m, f, r in
            [(1, 5.0, 1000.0), (2, 10.0, 1010.0), (3, 9.0, 1020.0), (4, 8.0, 1030.0),
             (5, 7.0, 1050.0)]]
    s = soak_summary(rows)
    assert s["rss_after_first_mib"] == 1000.0 and s["rss_end_mib"] == 1050.0
    assert s["rss_growth_after_first_mib"] == 50.0 and s["rss_growth_after_first_pct"] == 5.0
    assert s["fps_slope_per_min"] == pytest.approx(-1.0)          # 10, 9, 8, 7 per minute
    assert s["fps_slope_pct_per_min"] == pytest.approx(-100 / 8.5, abs=1e-3)
    assert s["fps_last_over_first_third"] == pytest.approx(0.7)   # 7 / 10
    one = soak_summary(rows[:1])
    assert one["rss_growth_after_first_pct"] == 0.0 and one["fps_slope_per_min"] is None
    with pytest.raises(RamAvatarError, match="no intervals"):
        soak_summary([])


def test_resident_memory_tracks_an_allocation():
    import mmap

    import numpy as np

    from ram_avatar.bench import resident_memory_bytes

    # fresh anonymous pages (mmap), every page written: malloc could serve a numpy array from
    # memory an earlier test freed and left resident, and then the count would not move
    before, src = resident_memory_bytes()
    block = mmap.mmap(-1, 64 << 20)  # 64 MiB
    np.frombuffer(block, np.uint8)[:] = 1
    after, _ = resident_memory_bytes()
    assert before > 0 and src
    if src == "/proc/self/statm":
        assert after - before > 48 << 20
    block.close()


def test_bench_soak_rows(live_subject, capsys):  # noqa: F811
    """Two short intervals through the live pipeline: one row each, memory and fps present."""
    import json

    from ram_avatar.bench import bench_soak
    from ram_avatar.cli import main

    seen = []
    rep = bench_soak(live_subject, minutes=4 / 60, interval_s=2.0, device="cpu", backend="onnx",
                     max_video_frames=8, on_row=seen.append)
    assert len(rep["rows"]) == 2 and seen == rep["rows"]
    assert [r["t_min"] for r in rep["rows"]] == pytest.approx([2 / 60, 4 / 60], abs=0.01)
    assert all(r["rss_mib"] > 50 and r["errors"] == 0 for r in rep["rows"])
    for r in rep["rows"]:  # a loaded machine may finish no frame in 2 s: no count asserted
        assert r["fps"] == pytest.approx(r["frames"] / 2.0, rel=0.05, abs=0.01)
    assert rep["summary"]["intervals"] == 2 and rep["looped_frames"] == 8
    json.dumps(rep)
    with pytest.raises(RamAvatarError, match="positive number of minutes"):
        bench_soak(live_subject, minutes=0)
    assert main(["bench", "live", str(live_subject), "--soak", "-1"]) != 0
    assert "positive number of minutes" in capsys.readouterr().err



# --------------------------------------------------------------------------------------------
# one engine loader, one ONNX export path (issue 11, item 5)


def test_one_onnx_export_path():
    """Only ram_avatar.models.export calls torch.onnx.export; exporters re-export it and the
    export wrapper instead of keeping copies."""
    from pathlib import Path

    import exporters.avatar
    import exporters.onnx_export
    from ram_avatar.models import export as mexport
    from ram_avatar.runtime import engines

    root = Path(__file__).resolve().parent.parent
    callers = sorted(str(p.relative_to(root)) for pkg in ("ram_avatar", "exporters", "gui")
                     for p in (root / pkg).rglob("*.py") if "torch.onnx.export(" in p.read_text())
    assert callers == ["ram_avatar/models/export.py"]
    assert exporters.onnx_export.export_onnx is mexport.export_onnx
    assert exporters.avatar.RendererExport is mexport.RendererExport
    assert exporters.avatar.FrozenTexture is mexport.FrozenTexture
    assert exporters.onnx_export.OnnxRunner is engines.OnnxRunner


def test_random_renderer_export_through_the_export_path(tmp_path):
    """bench live's timing-only renderer is exported like the subject's: rgb and alpha, dynamic
    batch, equal to the torch renderer."""
    import numpy as np
    import torch

    from ram_avatar.bench import export_random_onnx, random_renderer
    from ram_avatar.runtime.engines import OnnxRenderer

    path = export_random_onnx(32, tmp_path / "r.onnx")
    eng = OnnxRenderer(path, torch.device("cpu"))
    assert eng.resolution == 32 and eng.has_alpha and eng.input_names == ("uv", "body_mask", "hand", "face")
    assert eng.run_name is None and eng.expand_offset is None          # no export.json
    g = torch.Generator().manual_seed(3)
    maps = {"uv": torch.rand(2, 2, 32, 32, generator=g), "body_mask": torch.ones(2, 1, 32, 32),
            "hand": torch.rand(2, 5, 32, 32, generator=g), "face": torch.rand(2, 3, 32, 32, generator=g)}
    rgb, alpha = eng.render(maps)
    with torch.no_grad():
        ref = random_renderer(32).forward_batch(maps, None)
    assert rgb.shape == (2, 3, 32, 32) and alpha.shape == (2, 1, 32, 32)
    assert np.abs(rgb - ref["rgb"].numpy()).max() < 1e-4
    assert np.abs(alpha - ref["alpha"].numpy()).max() < 1e-4
    np.testing.assert_array_equal(eng(maps), rgb)


def test_drive_renders_through_the_engine_loader(live_subject):  # noqa: F811
    """drive's renderer is the runtime's engine (same loader, same frames) for onnx and torch,
    with the export's run and expand_offset."""
    import json

    import numpy as np
    import torch

    from ram_avatar.drive import RendererBackend
    from ram_avatar.runtime.engines import (OnnxRenderer, OpenVinoRenderer, TorchRenderer,
                                            load_renderer_engine, to_uint8)

    meta = json.loads((live_subject / "export" / "export.json").read_text())
    S = int(meta["resolution"])
    from ram_avatar.models.inputs import ALL_INPUTS, INPUTS

    g = torch.Generator().manual_seed(0)
    maps = {n: (torch.ones(2, 1, S, S) if "body_mask" in n else
                torch.rand(2, INPUTS[n].channels, S, S, generator=g)) for n in ALL_INPUTS}
    backends = [("onnx", OnnxRenderer), ("torch", TorchRenderer)]
    try:
        import openvino  # noqa: F401
    except ImportError:
        pass
    else:
        backends.append(("openvino", OpenVinoRenderer))
    for backend, cls in backends:
        d = RendererBackend(live_subject, backend, "default", torch.device("cpu"))
        assert isinstance(d.engine, cls) and d.resolution == S
        assert d.run.name == meta.get("run", "default")
        assert d.expand_offset == pytest.approx(float(meta.get("expand_offset", 0.01)))
        eng = load_renderer_engine(live_subject, backend, "cpu")
        rgb8, a8 = d.render({k: maps[k] for k in d.input_names})
        rgb, alpha = eng.render({k: maps[k] for k in eng.input_names})
        np.testing.assert_array_equal(rgb8, to_uint8(rgb).transpose(0, 2, 3, 1))
        if alpha is not None:
            np.testing.assert_array_equal(a8, to_uint8(alpha[:, 0]))
    with pytest.raises(RamAvatarError, match="unknown renderer backend 'jax'.*openvino"):
        RendererBackend(live_subject, "jax", "default", torch.device("cpu"))


def test_openvino_renderer_matches_onnx_runtime(tmp_path, monkeypatch):
    """The OpenVINO engine runs the same export as ONNX Runtime: float32 agrees to 1e-4,
    bfloat16 (where the CPU has it) to the precision of bfloat16; a batch equals its items;
    precision, device and file are checked with clear errors."""
    pytest.importorskip("openvino")
    import numpy as np
    import torch

    from ram_avatar.bench import export_random_onnx
    from ram_avatar.runtime import engines
    from ram_avatar.runtime.engines import OnnxRenderer, OpenVinoRenderer

    path = export_random_onnx(32, tmp_path / "r.onnx")
    cpu = torch.device("cpu")
    ref = OnnxRenderer(path, cpu)
    g = torch.Generator().manual_seed(5)
    maps = {"uv": torch.rand(2, 2, 32, 32, generator=g) * 2 - 1, "body_mask": torch.ones(2, 1, 32, 32),
            "hand": torch.rand(2, 5, 32, 32, generator=g), "face": torch.rand(2, 3, 32, 32, generator=g)}
    maps["body_mask"][:, :, :4] = 0.0
    rgb0, alpha0 = ref.render(maps)
    monkeypatch.delenv(engines.OV_PRECISION_ENV, raising=False)
    f32 = OpenVinoRenderer(path, cpu, precision="f32")
    assert f32.precision == "f32" and f32.threads == engines.DEFAULT_ORT_THREADS
    assert f32.resolution == 32 and f32.has_alpha and f32.input_names == ref.input_names
    assert f32.providers == ["openvino:CPU:f32"] and f32.run_name is None
    rgb, alpha = f32.render(maps)
    assert rgb.shape == (2, 3, 32, 32) and alpha.shape == (2, 1, 32, 32) and rgb.dtype == np.float32
    assert np.abs(rgb - rgb0).max() < 1e-4 and np.abs(alpha - alpha0).max() < 1e-4
    one = f32({k: v[1:] for k, v in maps.items()})           # batch 1: its own compiled model
    assert np.abs(one - rgb[1:]).max() < 1e-5 and sorted(f32.runner._requests) == [1, 2]
    import openvino as ov

    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        auto = OpenVinoRenderer(path, cpu)
        assert auto.precision == "bf16"
        rgb_b, _ = auto.render(maps)
        err = np.abs(rgb_b - rgb0)
        # bfloat16 keeps 8 mantissa bits: on this random-weight renderer with random maps the
        # error is mean 6e-3, max 5e-2 (~42 dB); a trained export on real maps gives 76 dB
        psnr = -10 * np.log10(float(np.mean(err.astype(np.float64) ** 2)))
        assert psnr > 35.0 and err.max() < 0.1
        assert err.max() > 1e-4                              # it really ran in bfloat16
        monkeypatch.setenv(engines.OV_PRECISION_ENV, "f32")
        assert OpenVinoRenderer(path, cpu).precision == "f32"
    monkeypatch.setenv(engines.OV_PRECISION_ENV, "int4")
    with pytest.raises(RamAvatarError, match="RAM_AVATAR_OV_PRECISION"):
        OpenVinoRenderer(path, cpu)
    monkeypatch.delenv(engines.OV_PRECISION_ENV)
    with pytest.raises(RamAvatarError, match="runs on the CPU"):
        OpenVinoRenderer(path, torch.device("cuda"))
    with pytest.raises(RamAvatarError, match="ram-avatar export"):
        OpenVinoRenderer(tmp_path / "missing.onnx", cpu)


def test_auto_backend_is_openvino_on_the_cpu_when_installed(monkeypatch):
    """``--backend auto`` (the command line's default): OpenVINO on the CPU when it is
    installed, ONNX Runtime without it and on a GPU; named backends pass through."""
    import importlib.util

    import torch

    from ram_avatar.runtime.engines import resolve_backend

    real = importlib.util.find_spec
    have = real("openvino") is not None
    assert resolve_backend("auto", "cpu") == ("openvino" if have else "onnx")
    assert resolve_backend("auto", torch.device("cuda")) == "onnx"
    for name in ("onnx", "openvino", "torch", "tensorrt"):
        assert resolve_backend(name, "cpu") == name
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == "openvino" else real(n, *a))
    assert resolve_backend("auto", "cpu") == "onnx"


def test_ort_session_options_measured_defaults_and_override(tmp_path, monkeypatch):
    """OnnxRunner's session options: the measured defaults, RAM_AVATAR_ORT_THREADS, explicit
    arguments, and clear refusals."""
    import onnxruntime as ort
    import torch

    from ram_avatar.models.export import export_onnx
    from ram_avatar.runtime import engines
    from ram_avatar.runtime.engines import OnnxRunner, ort_session_options

    monkeypatch.delenv(engines.ORT_THREADS_ENV, raising=False)
    opts = ort_session_options()
    assert opts.intra_op_num_threads == engines.DEFAULT_ORT_THREADS
    assert opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    assert opts.graph_optimization_level == levels[engines.DEFAULT_ORT_GRAPH_LEVEL]
    assert ort_session_options("basic", 2).graph_optimization_level == levels["basic"]
    assert ort_session_options(threads=2).intra_op_num_threads == 2
    monkeypatch.setenv(engines.ORT_THREADS_ENV, "3")
    assert ort_session_options().intra_op_num_threads == 3
    assert ort_session_options(threads=1).intra_op_num_threads == 1  # argument beats env
    monkeypatch.setenv(engines.ORT_THREADS_ENV, "many")
    with pytest.raises(RamAvatarError, match="RAM_AVATAR_ORT_THREADS"):
        ort_session_options()
    monkeypatch.delenv(engines.ORT_THREADS_ENV)
    with pytest.raises(RamAvatarError, match="graph level"):
        ort_session_options("fastest")
    with pytest.raises(RamAvatarError, match=">= 0"):
        ort_session_options(threads=-1)
    # the runner uses them and still computes the same thing
    net = torch.nn.Conv2d(2, 3, 3, padding=1)
    x = torch.rand(1, 2, 8, 8)
    export_onnx(net, {"x": x}, tmp_path / "c.onnx", ["y"], opset=17, exporter="legacy")
    runner = OnnxRunner(tmp_path / "c.onnx", providers=["CPUExecutionProvider"], threads=1,
                        graph_level="basic")
    with torch.no_grad():
        ref = net(x).numpy()
    assert abs(runner({"x": x})["y"] - ref).max() < 1e-5
