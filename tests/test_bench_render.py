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
