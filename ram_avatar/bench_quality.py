"""``ram-avatar bench quality``: held-out image quality against training minutes (issue 10, item 5).

Each budget (e.g. 2, 5, 10, 20 minutes) is a run trained from scratch for that many minutes and
evaluated. Without a learning-rate schedule (``optim.lr_decay_start`` 1) one run does it all: it
is trained to the first mark, evaluated, resumed to the next mark, and so on. Training resumes
exactly (same step, weights, optimiser, RNG and data order: training.trainer) and nothing then
depends on the budget, so the model at each mark is the one a separate from-scratch run of that
many minutes would reach (up to the step count a wall-clock budget lands on). With the
schedule on (``--set optim.lr_decay_start=0.5``; off in every preset), the learning rates
anneal towards the end of the budget, so a resumed run is not a shorter run: each budget then
gets its own run (``<run>-<M>min``), from scratch, and the bench costs the sum of the budgets
instead of the largest. Evaluation and dataset building are
not counted in the training minutes.

Evaluation is ``ram-avatar evaluate``'s (:func:`ram_avatar.eval.evaluate.image_metrics`: PSNR,
SSIM, masked PSNR/SSIM, LPIPS/tLPIPS and FID when their weights exist, temporal stability) on the
run's own held-out split (``--holdout tail|segment``, written to the run's split.json before
training starts).

Outputs (``--out``, default ``<run>/quality``):

- ``quality.json``: per budget ``minutes``, ``run``, ``steps`` (global step reached),
  ``train_seconds`` (the run's time inside the training loop), ``eval_seconds`` and every
  metric; plus the (first) run, preset, overrides, split, device and machine (CPU count, torch
  threads, load average);
- ``quality.png``: masked PSNR and masked SSIM (whole-crop values dashed) against minutes;
- ``quality_contact.png``: a few fixed held-out frames (rows), columns ground truth | the render
  at each budget.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ram_avatar.errors import RamAvatarError
from ram_avatar.utils import atomic_write_text, resolve_device

log = logging.getLogger(__name__)

#: held-out frames shown in the contact sheet
SHEET_ROWS = 4
#: minimum cell height of the contact sheet (small renderers are upscaled to stay legible)
SHEET_MIN_CELL = 192
#: size of quality.png in pixels (width, height)
PLOT_SIZE = (960, 360)


def _machine(dev: torch.device) -> dict:
    return {"platform": platform.platform(), "processor": platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}


def _unique_run(subject_dir: Path, base: str) -> str:
    from ram_avatar.io.subject import Subject

    subject = Subject(subject_dir)
    name, k = base, 1
    while subject.run(name).dir.exists():
        k += 1
        name = f"{base}-{k}"
    return name


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N,3,H,W) float [0,1] -> (N,H,W,3) uint8."""
    return (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def plot_quality(results: list[dict], path: str | Path, title: str = "") -> Path | None:
    """Masked PSNR (dB) and masked SSIM against training minutes (whole-crop values dashed).

    Args:
        results: ``quality.json`` entries (``minutes``, ``psnr_masked``, ``ssim_masked``,
            ``psnr``, ``ssim``).
        path: PNG to write, :data:`PLOT_SIZE` pixels.
    Returns:
        the path, or None when matplotlib is not installed (``pip install ram-avatar[bench]``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'ram-avatar[bench]'): no quality.png")
        return None
    from ram_avatar.utils import atomic_path

    x = [r["minutes"] for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(PLOT_SIZE[0] / 100, PLOT_SIZE[1] / 100), dpi=100)
    for ax, key, label in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "ssim", "SSIM")):
        ax.plot(x, [r[f"{key}_masked"] for r in results], "o-", label=f"masked {key.upper()}")
        ax.plot(x, [r[key] for r in results], "s--", alpha=0.6, label=f"whole-crop {key.upper()}")
        for r in results:
            ax.annotate(f"{r['steps']}", (r["minutes"], r[f"{key}_masked"]), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=7)
        ax.set_xlabel("training minutes (labels: steps)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def bench_quality(subject_dir: str | Path, minutes=(2, 5, 10, 20), preset: str = "cpu-256",
                  overrides: list[str] | None = None, holdout: str = "tail",
                  out: str | Path | None = None, run_prefix: str = "bench-quality",
                  device: str = "auto", backend: str = "auto", sheet_rows: int = SHEET_ROWS,
                  lpips_weights: str | None = None, show_progress: bool = True) -> dict:
    """Train one run from scratch and evaluate it at each training budget (module docstring).

    Args:
        subject_dir: captured subject (the run is written under its ``runs/``).
        minutes: training budgets in minutes (sorted; each > 0).
        preset: training preset; overrides: ``key=value`` config overrides.
        holdout: held-out split of the run, ``tail`` | ``segment``.
        out: output folder (default ``<run>/quality``).
        run_prefix: the run is ``<prefix>-<preset>-<holdout>`` (``-2``, ``-3``... when taken).
        device: training / evaluation device; backend: rasterizer of the conditioning maps.
        sheet_rows: held-out frames in the contact sheet.
        lpips_weights: AlexNet weights for LPIPS (else searched as ``evaluate`` does).
    Returns:
        the ``quality.json`` dict with the paths of the files written.
    Raises:
        RamAvatarError: no budgets, a budget <= 0, or an empty held-out split; plus the errors
        of ``train`` (SequenceFormatError, ConfigError, SplitError, TrainingDivergedError).
    """
    from ram_avatar.eval import render_stats as rs
    from ram_avatar.eval.evaluate import image_metrics, predict
    from ram_avatar.eval.metrics import load_lpips
    from ram_avatar.training.run import load_renderer, prepare_training, split_summary
    from ram_avatar.training.trainer import train

    marks = sorted({float(m) for m in minutes})
    if not marks or marks[0] <= 0:
        raise RamAvatarError(f"--minutes needs one or more budgets > 0, got {list(minutes)}")
    t_wall = time.perf_counter()
    subject_dir = Path(subject_dir)
    dev = resolve_device(device)
    run_name = _unique_run(subject_dir, f"{run_prefix}-{preset}-{holdout}")
    setup = prepare_training(subject_dir, preset, run_name, overrides, holdout, backend)
    if setup.val_set is None or len(setup.val_set) == 0:
        raise RamAvatarError("the held-out split is empty: bench quality needs val_fraction > 0")
    out_dir = Path(out) if out is not None else setup.run.quality_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    lp = load_lpips("alex", backbone_path=lpips_weights, device="cpu")
    val = setup.split.val
    rows = rs.sample_indices(len(val), sheet_rows)
    report: dict = {
        "benchmark": "held-out quality against training minutes (one run, resumed at each budget)",
        "subject": str(subject_dir), "run": run_name, "run_dir": str(setup.run.dir),
        "preset": setup.config.preset, "overrides": list(overrides or []),
        "holdout": setup.split.method, "split": split_summary(setup.split),
        "val_frame_indices": [int(v) for v in val], "resolution": setup.config.model.resolution,
        "device": str(dev), "machine": _machine(dev), "results": [],
    }
    json_path = out_dir / "quality.json"
    renders: list[np.ndarray] = []
    train_s = 0.0
    done = 0.0
    # a budget-dependent schedule: every budget from scratch in its own run (module docstring)
    scheduled = setup.config.optim.lr_decay_start < 1.0
    if scheduled:
        report["benchmark"] = "held-out quality against training minutes (one run per budget)"
    for m in marks:
        name = run_name
        if scheduled and m != marks[0]:
            name = _unique_run(subject_dir, f"{run_name}-{m:g}min")
            setup = prepare_training(subject_dir, preset, name, overrides, holdout, backend)
        if scheduled:
            train_s = done = 0.0
        summary = train(setup.train_set, setup.val_set, setup.run.dir, setup.config,
                        minutes=m - done, device=dev, show_progress=show_progress,
                        init_texture=setup.texture)
        done = m
        train_s += float(summary["elapsed_s"])
        t0 = time.perf_counter()
        model, info = load_renderer(subject_dir, name, dev)
        pred, real, mask = predict(model, setup.val_set, dev)
        metrics = image_metrics(pred, real, mask, val, lp, dev)
        del model
        metrics.pop("frame_indices")
        entry = {"minutes": m, "run": name, "steps": int(summary["step"]),
                 "train_seconds": round(train_s, 1),
                 "steps_per_s": round(float(summary["steps_per_s"]), 3),
                 "eval_seconds": round(time.perf_counter() - t0, 1), **metrics}
        report["results"].append(entry)
        renders.append(_to_uint8(pred[torch.as_tensor(rows)]))
        log.info("bench quality %g min: step %d, masked PSNR %.2f dB, masked SSIM %.3f", m,
                 entry["steps"], entry["psnr_masked"], entry["ssim_masked"])
        atomic_write_text(json_path, json.dumps(report, indent=1))  # partial results survive
    gt = _to_uint8(real[torch.as_tensor(rows)])
    S = int(gt.shape[1])
    cell = max(S, SHEET_MIN_CELL)
    sheet_rows_img = [[gt[i]] + [r[i] for r in renders] for i in range(len(rows))]
    columns = ["ground truth"] + [f"{e['minutes']:g} min, {e['steps']} steps" for e in report["results"]]
    sheet = rs.contact_sheet(sheet_rows_img, columns, [f"frame {int(val[i])}" for i in rows], height=cell)
    sheet_path = out_dir / "quality_contact.png"
    rs.write_png(sheet_path, sheet)
    title = (f"{subject_dir.name}: {setup.config.preset}, {setup.split.method} split "
             f"({len(val)} held-out frames), {report['machine']['cpu_count']} CPUs / "
             f"{report['machine']['torch_threads']} torch threads")
    plot = plot_quality(report["results"], out_dir / "quality.png", title)
    report.update({"contact_sheet": str(sheet_path), "contact_frames": [int(val[i]) for i in rows],
                   "contact_sheet_cell": cell, "plot": str(plot) if plot else None,
                   "wall_seconds": round(time.perf_counter() - t_wall, 1), "quality_json": str(json_path)})
    atomic_write_text(json_path, json.dumps(report, indent=1))
    return report
