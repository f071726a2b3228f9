"""Export a subject's trained renderer: ``<subject>/export/avatar.onnx`` + ``export.json``.

The exported graph is the one model definition (:class:`ram_avatar.models.renderer.AvatarRenderer`)
wrapped by :class:`RendererExport`, which fixes the export-time choices (mean style code,
RGB output only): conditioning maps ``uv (B,2,S,S)``, ``body_mask (B,1,S,S)``,
``hand (B,5,S,S)``, ``face (B,3,S,S)`` in; ``rgb (B,3,S,S)`` in [0, 1] out, dynamic batch.
Parity is measured on real conditioning maps of the subject's held-out frames.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from exporters.onnx_export import export_onnx
from ram_avatar.io.sequence import load_sequence
from ram_avatar.training.data import maps_to_float, render_sequence_maps, split_frames
from ram_avatar.training.run import load_renderer
from ram_avatar.utils import atomic_write_text, sha256_file

log = logging.getLogger(__name__)

INPUT_NAMES = ("uv", "body_mask", "hand", "face")


class RendererExport(nn.Module):
    """Export wrapper: maps in, composited RGB out, with the mean per-frame style code."""

    def __init__(self, renderer: nn.Module):
        super().__init__()
        self.renderer = renderer

    def forward(self, uv, body_mask, hand, face):
        return self.renderer(uv, body_mask, hand, face, frame_index=None)["rgb"]


def export_avatar(subject_dir: str | Path, run_name: str = "default", opset: int = 17,
                  tensorrt: bool = False, parity_frames: int = 4) -> dict:
    """Export the latest checkpoint of ``run_name`` to ONNX and check it against torch.

    Returns:
        the export report (also written to ``<subject>/export/export.json``): inputs/outputs
        with shapes and dtypes, opset, ``max_abs_diff`` between onnxruntime and torch on
        ``parity_frames`` real held-out frames, sha256 of the ONNX file and of the checkpoint.
    Raises:
        CheckpointError: nothing trained yet; RamAvatarError: export or parity failure;
        TensorRT errors when ``tensorrt`` is asked for without TensorRT.
    """
    subject_dir = Path(subject_dir)
    model, info = load_renderer(subject_dir, run_name)
    seq = load_sequence(subject_dir)
    S = info["config"].model.resolution
    _, val = split_frames(seq, info["config"].val_fraction)
    frames = (val if len(val) else np.arange(seq.num_frames))[:parity_frames]
    maps = maps_to_float(render_sequence_maps(seq, frames, S, desc="parity maps"))
    out_dir = subject_dir / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapper = RendererExport(model).eval()
    report = export_onnx(wrapper, {k: maps[k] for k in INPUT_NAMES}, out_dir / "avatar.onnx",
                         output_names=["rgb"], dynamic_batch=True, opset=opset)
    report.update({
        "subject": str(subject_dir), "run": run_name, "resolution": S,
        "checkpoint": str(info["checkpoint"]), "checkpoint_step": info["step"],
        "checkpoint_sha256": sha256_file(info["checkpoint"]),
        "parity_frames": [int(f) for f in frames],
    })
    if tensorrt:
        from exporters.tensorrt import build_engine

        engine = out_dir / "avatar.engine"
        report["tensorrt"] = build_engine(out_dir / "avatar.onnx", engine, fp16=True)
    atomic_write_text(out_dir / "export.json", json.dumps(report, indent=1, default=str))
    log.info("exported %s (max |onnxruntime - torch| = %.2e)", out_dir / "avatar.onnx", report["max_abs_diff"])
    return report
