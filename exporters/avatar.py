"""Export a subject's trained renderer: ``<subject>/export/avatar.onnx`` + ``export.json``.

The exported graph is the one model definition (:class:`ram_avatar.models.renderer.AvatarRenderer`)
wrapped by :class:`RendererExport`, which fixes the export-time choices (mean style code,
RGB output only). Inputs are the renderer's own (``AvatarRenderer.input_names()``, the
contract of :mod:`ram_avatar.models.inputs`, checked against the exported graph): for
renderer v1 the conditioning maps ``uv (B,2,S,S)``, ``body_mask (B,1,S,S)``, ``hand (B,5,S,S)``,
``face (B,3,S,S)``; the full RAM-Avatar renderer adds the expanded-mesh maps
``uv_expanded``/``body_mask_expanded`` (spatial attention) and the previous frame's
``prev_uv``/``prev_body_mask`` (temporal attention), minus what its ablation switches remove.
Outputs ``rgb (B,3,S,S)`` in [0, 1] (first, composited over the learned background) and
``alpha (B,1,S,S)`` in [0, 1] (the renderer's alpha: ``drive``/``live`` re-composite over another
background or write it as transparency, :mod:`ram_avatar.render.composite`), dynamic batch.
Texture sampling, dual attention, branches, generator and background compositing are all in
the one graph. Parity is measured on real conditioning maps of the subject's held-out frames
(the run's split.json, io.split), for every output, against the trained model itself.

Input-independent work is done once here instead of in every frame (issue 13): the neural
texture's Laplacian pyramid is collapsed (``NeuralTexture.full_texture``) and the fixed RGB
texture (``model.texture_rgb``) concatenated to it into one constant, which the graph reads
with four row gathers (:class:`FrozenTexture`; ONNX Runtime's GridSample was half the render).
``export.json`` records it as ``texture: frozen`` with the constant's shape.

An export is all-or-nothing: ``avatar.onnx``, the TensorRT engine (``--tensorrt``) and
``export.json`` are written into a temporary folder ``<subject>/.export.<random>/`` and that
folder replaces ``export/`` only when everything succeeded, so a failed export or engine
build leaves the previous export exactly as it was. ``--tensorrt`` without TensorRT fails
before anything is computed or written. Exports of one subject hold its ``.export.lock``, and
an export removes the temporary folders of one that was killed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ram_avatar.errors import DiskFullError
from ram_avatar.io.disk import fmt_bytes, free_bytes, is_disk_full
from ram_avatar.io.lock import FolderLock
from ram_avatar.io.subject import Subject
from ram_avatar.models import inputs as contract
# the export wrapper and the one ONNX export path (FrozenTexture / freeze_texture re-exported)
from ram_avatar.models.export import FROZEN_TEXTURE_ATOL, FrozenTexture, RendererExport  # noqa: F401
from ram_avatar.models.export import export_onnx, freeze_texture  # noqa: F401
from ram_avatar.render.sequence import (add_previous_maps, map_render_options, maps_to_float,
                                        render_sequence_maps)
from ram_avatar.utils import atomic_write_text, sha256_file

log = logging.getLogger(__name__)



def export_avatar(subject_dir: str | Path, run_name: str = "default", opset: int = 17,
                  tensorrt: bool = False, parity_frames: int = 4) -> dict:
    """Export the latest checkpoint of ``run_name`` to ONNX and check it against torch.

    Returns:
        the export report (also written to ``<subject>/export/export.json``): inputs/outputs
        with shapes and dtypes, opset, ``max_abs_diff`` between onnxruntime and torch on
        ``parity_frames`` real held-out frames, sha256 of the ONNX file and of the checkpoint.
    Raises:
        CheckpointError: nothing trained yet; RamAvatarError: export or parity failure;
        TensorRT missing (checked first, before any work) or its build failed;
        RunLockedError: another export of this subject is running; DiskFullError.
        In every failure case the previous ``export/`` is left unchanged.
    """
    subject_dir = Path(subject_dir)
    subject = Subject(subject_dir)
    run = subject.run(run_name)
    if tensorrt:
        from exporters.tensorrt import import_tensorrt

        import_tensorrt()  # RamAvatarError now, not after the ONNX export
    model, info = run.load_renderer()
    seq = subject.load_sequence()
    S = model.config.resolution
    split = run.split(seq)  # the run's split.json
    val = split.val
    frames = (val if len(val) else np.arange(seq.num_frames))[:parity_frames]
    wrapper = RendererExport(model).eval()
    offset = model.config.expand_offset
    maps = render_sequence_maps(seq, frames, S, desc="parity maps",
                                **map_render_options(wrapper.names, offset))
    if contract.uses_previous(wrapper.names):
        add_previous_maps(maps)
    maps = maps_to_float(maps)
    contract.check_feed(maps, wrapper.names, S)
    texture_check = _check_frozen(model, wrapper, maps)
    final = subject.export_dir
    with FolderLock(subject_dir, what="subject (export)", name=".export.lock"):
        for stale in subject_dir.glob(".export.*"):
            if stale.is_dir():  # left by an export that was killed
                shutil.rmtree(stale, ignore_errors=True)
                log.info("removed %s, left by an interrupted export", stale)
        out_dir = Path(tempfile.mkdtemp(prefix=".export.", dir=subject_dir))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(out_dir, 0o777 & ~umask)  # mkdtemp makes 0700; export/ gets normal permissions
        try:
            report = _export_into(out_dir, subject, wrapper, maps, opset, tensorrt)
            _check_inputs(report, wrapper.names, S)
            report.update(_report_fields(run, S, info, offset, frames, split))
            report["texture"] = texture_check
            manifest = out_dir / subject.export_manifest_path.name
            atomic_write_text(manifest, json.dumps(report, indent=1, default=str))
            _swap_in(out_dir, final)
        except BaseException as e:
            shutil.rmtree(out_dir, ignore_errors=True)
            if is_disk_full(e):
                raise DiskFullError(
                    f"the disk is full: exporting into {subject_dir} failed ({e}); "
                    f"{fmt_bytes(free_bytes(subject_dir))} are free there. The previous export "
                    f"{'in ' + str(final) + ' is intact' if final.exists() else 'did not exist'}; "
                    "free some space and export again.") from None
            raise
    log.info("exported %s (max |onnxruntime - torch| = %.2e)", subject.export_onnx,
             report["max_abs_diff"])
    return report


def _export_into(out_dir: Path, subject: Subject, wrapper, maps, opset: int, tensorrt: bool) -> dict:
    """ONNX (+ engine) into the temporary ``out_dir`` (file names of :class:`Subject`); paths in
    the report name the final ``export/`` files."""
    onnx_path = out_dir / subject.export_onnx.name
    report = export_onnx(wrapper, {k: maps[k] for k in wrapper.names}, onnx_path,
                         output_names=list(wrapper.OUTPUTS), dynamic_batch=True, opset=opset)
    report["path"] = str(subject.export_onnx)
    if tensorrt:
        from exporters.tensorrt import build_engine

        trt = build_engine(onnx_path, out_dir / subject.export_engine.name, fp16=True)
        trt.update(engine_path=str(subject.export_engine), onnx_path=str(subject.export_onnx))
        report["tensorrt"] = trt
    return report


def _check_inputs(report: dict, names: tuple[str, ...], S: int) -> None:
    """The exported graph's inputs are the contract's (:func:`ram_avatar.models.inputs.onnx_inputs`):
    same names in the same order, ``(batch, C, S, S)`` with fixed C and S.

    Raises:
        RamAvatarError: they differ (an exporter bug; the export is not swapped in).
    """
    from ram_avatar.errors import RamAvatarError

    want = contract.onnx_inputs(names, S)
    got = report.get("inputs")
    if not isinstance(got, list):
        return  # an export report without input descriptions: nothing to compare
    got_names = [i.get("name") for i in got]
    got_fixed = [list(i.get("shape", []))[1:] for i in got]
    if got_names != [w["name"] for w in want] or got_fixed != [w["shape"][1:] for w in want]:
        raise RamAvatarError(f"export: the ONNX inputs {list(zip(got_names, got_fixed))} differ from "
                             f"the renderer-input contract {[(w['name'], w['shape'][1:]) for w in want]}; "
                             "please report this bug")


@torch.no_grad()
def _check_frozen(model: nn.Module, wrapper: RendererExport, maps: dict) -> dict:
    """Compare the export wrapper (frozen texture, folded style) with the trained model in torch on the
    parity maps, so the export's parity (ONNX vs wrapper) is parity against the model.

    Raises:
        RamAvatarError: they differ by more than :data:`FROZEN_TEXTURE_ATOL`.
    """
    from ram_avatar.errors import RamAvatarError

    feed = {k: maps[k] for k in wrapper.names}
    ref = model.forward_batch(feed, None)
    got = dict(zip(wrapper.OUTPUTS, wrapper(*feed.values())))
    diff = max(float((got[k] - ref[k]).abs().max()) for k in wrapper.OUTPUTS)
    if diff > FROZEN_TEXTURE_ATOL:
        raise RamAvatarError(f"export: the frozen texture and folded style change the "
                             f"renderer's output by {diff:.3g} (> {FROZEN_TEXTURE_ATOL:g}); "
                             "please report this bug")
    tex = getattr(wrapper.renderer, "texture", None)
    return {"mode": "frozen" if wrapper.frozen else "module",
            "shape": list(tex.texture.shape) if wrapper.frozen else None,
            "folded_style_layers": wrapper.folded,
            "max_abs_diff_vs_trained": diff}


def _swap_in(new: Path, final: Path) -> None:
    """Make the complete folder ``new`` the export ``final`` (two renames; the old one is
    removed afterwards)."""
    old = None
    if final.exists():
        old = final.with_name(f".export.old.{time.time_ns()}")
        final.rename(old)
    new.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _report_fields(run, S: int, info: dict, offset, frames, split) -> dict:
    return {
        "subject": str(run.subject.root), "run": run.name, "resolution": S,
        "variant": info["model_config"].variant, "expand_offset": offset,
        "checkpoint": str(info["checkpoint"]), "checkpoint_step": info["step"],
        "checkpoint_weights": info["weights"],
        "checkpoint_sha256": sha256_file(info["checkpoint"]),
        "parity_frames": [int(f) for f in frames], "split": split.method,
        # the capture the renderer was trained on (training.checkpoint.check_run_sequence)
        "sequence_sha256": sha256_file(run.subject.fitted_path),
    }
