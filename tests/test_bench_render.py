"""``bench render`` (ram_avatar.bench_render): per-component cost and one training step."""

from __future__ import annotations

import torch

from ram_avatar.models import AvatarRenderer


def test_bench_render_train_step_reports_time_and_memory(full_config, full_maps):
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


def _tiny_conv_onnx(path):
    """A 2-layer conv net (conv-relu-conv, 3->4->2 channels) exported by the one export path."""
    from torch import nn

    from ram_avatar.models.export import export_onnx

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    x = torch.rand(1, 3, 32, 32)
    export_onnx(net, {"x": x}, path, ["y"], opset=17, exporter="legacy")
    return {"x": x}


def test_ort_profile_table_of_a_tiny_conv_net(tmp_path):
    """``bench render --ort-profile``: the per-op table of a conv-relu-conv graph has exactly
    its op types with their node counts per frame, and the percentages sum to 100."""
    from ram_avatar.bench_render import format_ort_profile, profile_onnx

    feed = _tiny_conv_onnx(tmp_path / "tiny.onnx")
    # basic: constant folding only, so Conv and Relu stay separate nodes (no FusedConv)
    table = profile_onnx(tmp_path / "tiny.onnx", feed, runs=4, warmup=1, graph_level="basic",
                         threads=1, trace_dir=tmp_path / "trace")
    assert table["runs"] == 4 and table["threads"] == 1 and table["graph_level"] == "basic"
    assert {r["op_type"]: r["count"] for r in table["rows"]} == {"Conv": 2, "Relu": 1}
    assert abs(sum(r["percent"] for r in table["rows"]) - 100.0) < 0.1
    assert table["kernel_ms_per_frame"] > 0 and table["run_ms_per_frame"] > 0
    assert abs(sum(r["ms_per_frame"] for r in table["rows"]) - table["kernel_ms_per_frame"]) < 0.01
    assert (tmp_path / "trace").is_dir() and table["trace"].endswith(".json")
    # all: the Relu is fused into the first conv (NCHWc layout: Conv + Reorder* nodes); the
    # table follows the optimised graph
    fused = {r["op_type"]: r["count"] for r in profile_onnx(
        tmp_path / "tiny.onnx", feed, runs=2, graph_level="all", threads=1)["rows"]}
    assert "Relu" not in fused and fused["Conv"] == 2
    md = format_ort_profile(table, "tiny")
    assert md.startswith("### tiny") and "| Conv |" in md and "| Relu |" in md


def test_parse_ort_profile_skips_warmup_and_cuts_to_top():
    """Kernel events of the warm-up run are dropped; per-run means, % of all kernels, top-N."""
    import pytest

    from ram_avatar.bench_render import parse_ort_profile
    from ram_avatar.errors import RamAvatarError

    def node(op, ts, dur):
        return {"cat": "Node", "name": f"{op}_node_kernel_time", "ts": ts, "dur": dur,
                "args": {"op_name": op}}

    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},  # warm-up
              node("Conv", 10, 90),
              {"cat": "Session", "name": "model_run", "ts": 200, "dur": 40},
              node("Conv", 205, 30), node("Add", 236, 10),
              {"cat": "Node", "name": "Conv_node_fence_before", "ts": 205, "dur": 0},
              {"cat": "Session", "name": "model_run", "ts": 300, "dur": 60},
              node("Conv", 305, 50), node("Add", 356, 10)]
    t = parse_ort_profile(events, skip_runs=1, top=None)
    assert t["runs"] == 2 and t["kernel_ms_per_frame"] == 0.05 and t["run_ms_per_frame"] == 0.05
    assert [(r["op_type"], r["ms_per_frame"], r["percent"], r["count"]) for r in t["rows"]] == \
        [("Conv", 0.04, 80.0, 1), ("Add", 0.01, 20.0, 1)]
    assert [r["op_type"] for r in parse_ort_profile(events, top=1)["rows"]] == ["Conv"]
    assert parse_ort_profile(events, skip_runs=0)["rows"][0]["count"] == 1  # 3 Conv / 3 runs
    with pytest.raises(RamAvatarError, match="model_run"):
        parse_ort_profile(events, skip_runs=3)
    with pytest.raises(RamAvatarError, match="kernel"):
        parse_ort_profile([e for e in events if e["cat"] == "Session"])


def test_bench_render_times_the_exported_components_in_openvino():
    """``bench render`` on the CPU times each exported component in ONNX Runtime and in
    OpenVINO (the ``--backend openvino`` runtime), and names OpenVINO's precision."""
    import pytest

    pytest.importorskip("openvino")
    from ram_avatar.bench_render import bench_render

    report = bench_render(resolutions=(32,), preset="cpu-256-v1", repeats=1, warmup=0, onnx=True)
    assert report["openvino_version"]
    comps = report["results"]["32"]["components"]
    assert set(comps) == {"body_sampling", "generator", "total"}
    for name, c in comps.items():
        assert c["onnxruntime_ms"] > 0 and c["openvino_ms"] > 0, (name, c)
        assert c["openvino_precision"] in ("f32", "bf16")


def test_openvino_profile_table_of_a_tiny_conv_net(tmp_path):
    """``bench render --ort-profile`` also tabulates the export in OpenVINO: the conv-relu-conv
    graph runs as its two convolutions (OpenVINO fuses the ReLU into the first), the
    percentages sum to 100 and the rows to the kernel time."""
    import pytest

    pytest.importorskip("openvino")
    from ram_avatar.bench_render import format_ort_profile, profile_openvino

    feed = _tiny_conv_onnx(tmp_path / "tiny.onnx")
    table = profile_openvino(tmp_path / "tiny.onnx", feed, runs=3, precision="f32", threads=1,
                             top=None)
    assert table["runs"] == 3 and table["precision"] == "f32" and table["threads"] == 1
    counts = {r["op_type"]: r["count"] for r in table["rows"]}
    assert counts.get("Convolution") == 2 and "Relu" not in counts, counts
    assert abs(sum(r["percent"] for r in table["rows"]) - 100.0) < 0.1
    assert abs(sum(r["ms_per_frame"] for r in table["rows"]) - table["kernel_ms_per_frame"]) < 0.01
    assert table["kernel_ms_per_frame"] > 0 and table["run_ms_per_frame"] > 0
    md = format_ort_profile(table, "tiny ov")
    assert "infer median" in md and "| Convolution |" in md
