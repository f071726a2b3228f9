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
    import numpy as np

    from ram_avatar.bench import resident_memory_bytes

    before, src = resident_memory_bytes()
    block = np.ones(64 << 20, np.uint8)  # 64 MiB, touched
    after, _ = resident_memory_bytes()
    assert before > 0 and src
    if src == "/proc/self/statm":
        assert after - before > 48 << 20
    del block


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
    assert sum(r["frames"] for r in rep["rows"]) >= 1
    assert rep["summary"]["intervals"] == 2 and rep["looped_frames"] == 8
    json.dumps(rep)
    with pytest.raises(RamAvatarError, match="positive number of minutes"):
        bench_soak(live_subject, minutes=0)
    assert main(["bench", "live", str(live_subject), "--soak", "-1"]) != 0
    assert "positive number of minutes" in capsys.readouterr().err

