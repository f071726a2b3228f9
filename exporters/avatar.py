"""Export a subject's trained renderer: ``<subject>/export/avatar.onnx`` + ``export.json``.

The exported graph is the one model definition (:class:`ram_avatar.models.renderer.AvatarRenderer`)
wrapped by :class:`RendererExport`, which fixes the export-time choices (mean style code,
RGB output only). Inputs are the renderer's own (``AvatarRenderer.input_names()``): for
renderer v1 the conditioning maps ``uv (B,2,S,S)``, ``body_mask (B,1,S,S)``, ``hand (B,5,S,S)``,
``face (B,3,S,S)``; the full RAM-Avatar renderer adds the expanded-mesh maps
``uv_expanded``/``body_mask_expanded`` (spatial attention) and the previous frame's
``prev_uv``/``prev_body_mask`` (temporal attention), minus what its ablation switches remove.
Output ``rgb (B,3,S,S)`` in [0, 1], dynamic batch. Texture sampling, dual attention, branches,
generator and background compositing are all in the one graph. Parity is measured on real
conditioning maps of the subject's held-out frames (the run's split.json, io.split).
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
from ram_avatar.io.subject import Subject
from ram_avatar.training.data import (add_previous_maps, map_render_options, maps_to_float,
                                      render_sequence_maps)
from ram_avatar.training.run import load_renderer
from ram_avatar.utils import atomic_write_text, sha256_file

log = logging.getLogger(__name__)



class RendererExport(nn.Module):
    """Export wrapper: maps in (positional, in ``renderer.input_names()`` order), composited
    RGB ``(B,3,S,S)`` out, with the mean per-frame style code."""

    def __init__(self, renderer: nn.Module):
        super().__init__()
        self.renderer = renderer
        self.names = tuple(renderer.input_names())

    def forward(self, *maps):
        return self.renderer.forward_batch(dict(zip(self.names, maps)), None)["rgb"]


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
    split = Subject(subject_dir).run(run_name).split(seq)  # the run's split.json
    val = split.val
    frames = (val if len(val) else np.arange(seq.num_frames))[:parity_frames]
    wrapper = RendererExport(model).eval()
    offset = info["config"].model.expand_offset
    maps = render_sequence_maps(seq, frames, S, desc="parity maps",
                                **map_render_options(wrapper.names, offset))
    if any(n.startswith("prev_") for n in wrapper.names):
        add_previous_maps(maps)
    maps = maps_to_float(maps)
    out_dir = subject_dir / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = export_onnx(wrapper, {k: maps[k] for k in wrapper.names}, out_dir / "avatar.onnx",
                         output_names=["rgb"], dynamic_batch=True, opset=opset)
    report.update({
        "subject": str(subject_dir), "run": run_name, "resolution": S,
        "variant": info["config"].model.variant, "expand_offset": offset,
        "checkpoint": str(info["checkpoint"]), "checkpoint_step": info["step"],
        "checkpoint_sha256": sha256_file(info["checkpoint"]),
        "parity_frames": [int(f) for f in frames], "split": split.method,
    })
    if tensorrt:
        from exporters.tensorrt import build_engine

        engine = out_dir / "avatar.engine"
        report["tensorrt"] = build_engine(out_dir / "avatar.onnx", engine, fp16=True)
    atomic_write_text(out_dir / "export.json", json.dumps(report, indent=1, default=str))
    log.info("exported %s (max |onnxruntime - torch| = %.2e)", out_dir / "avatar.onnx", report["max_abs_diff"])
    return report
