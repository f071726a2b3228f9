"""Training checkpoints: tensors and plain values only, written atomically, resumable exactly.

One checkpoint is one ``.safetensors`` file:

* tensors ``model.<name>`` (the model's state dict), ``optim.<param index>.<name>`` (tensor
  entries of the optimiser state, e.g. Adam's ``exp_avg``/``exp_avg_sq``/``step``),
  ``rng.torch`` / ``rng.cuda.<i>`` / ``rng.numpy`` (generator states);
* a JSON document in the header metadata (key ``ram_avatar``) with the format version, step,
  training config, optimiser param groups and non-tensor state, numpy/python RNG state, AMP
  grad-scaler state and free-form plain ``extra`` values.

Nothing is unpickled on load (safetensors + ``json``), so loading a checkpoint cannot run code.
Files are written to a temporary name, fsynced and renamed, so a crash never leaves a torn
checkpoint under the final name. A run keeps its checkpoints in ``<run_dir>/checkpoints/`` as
``step_<8 digits>.safetensors`` and prunes all but the last K.

A full disk while saving raises one :class:`~ram_avatar.errors.DiskFullError` that says what was
being written, how much space it needs, how much is free and which checkpoint is intact; the
temporary file is removed, and so is the step's ``.aux`` file when the main checkpoint failed.
Temporary files of a process killed while saving are removed by the next save in that run.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ram_avatar.errors import CheckpointError, DiskFullError
# the read side (format, file names, the sequence record) lives in the I/O layer, so inference
# loads runs without importing training (issue 11); re-exported here
from ram_avatar.io.checkpoint import (CHECKPOINT_DIR, FORMAT, FORMAT_VERSION,  # noqa: F401
                                      SEQUENCE_RECORD, check_run_sequence, checkpoint_path,
                                      latest_checkpoint, list_checkpoints, load_model_state,
                                      read_checkpoint, read_metadata)
from ram_avatar.io.checkpoint import _NAME_RE  # noqa: F401  (file names of checkpoints)
from ram_avatar.io.disk import fmt_bytes, free_bytes, is_disk_full, remove_stale_temp_files
from ram_avatar.utils import atomic_path

log = logging.getLogger(__name__)



@dataclass
class CheckpointInfo:
    """What :func:`load_checkpoint` read besides the tensors it loaded into the objects."""

    path: Path
    step: int
    config: dict | None
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# save


def _cpu_tensor(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous().clone()


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    algo, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    plain = {
        "numpy": {"algo": algo, "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
    }
    return tensors, plain


def save_checkpoint(path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, step: int = 0,
                    config: dict | None = None, scaler=None, extra: dict | None = None,
                    save_rng: bool = True) -> Path:
    """Write a checkpoint file atomically (temp file + fsync + rename).

    Args:
        path: destination ``.safetensors`` file.
        model: its ``state_dict()`` is saved.
        optimizer: optional; tensor state entries saved as tensors, the rest as JSON.
        step: global step count (number of optimiser steps done).
        config: plain dict (e.g. ``TrainConfig.to_dict()``).
        scaler: optional ``torch.amp.GradScaler``; its (plain) state is saved.
        extra: plain JSON-serialisable values (losses, metrics, ...).
        save_rng: save torch/CUDA/numpy/python RNG states (for exact resume).

    Returns:
        The path written.

    Raises:
        DiskFullError: the disk filled up (nothing is left under ``path`` or its temp name).
        CheckpointError: metadata that is not plain JSON.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        tensors[f"model.{name}"] = _cpu_tensor(value)
    meta: dict = {"format": FORMAT, "version": FORMAT_VERSION, "step": int(step),
                  "config": config, "extra": extra or {}}
    if optimizer is not None:
        state = optimizer.state_dict()
        plain_state: dict[str, dict] = {}
        for idx, entry in state["state"].items():
            for key, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{idx}.{key}"] = _cpu_tensor(value)
                else:
                    plain_state.setdefault(str(idx), {})[key] = value
        meta["optimizer"] = {"class": type(optimizer).__name__,
                             "param_groups": state["param_groups"], "plain_state": plain_state}
    if scaler is not None and scaler.is_enabled():
        meta["scaler"] = scaler.state_dict()
    if save_rng:
        rng_tensors, rng_plain = _rng_state()
        tensors.update(rng_tensors)
        meta["rng"] = rng_plain
    try:
        header = {"ram_avatar": json.dumps(meta)}
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata is not plain JSON data: {exc}") from None
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=header)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
    except Exception as exc:  # safetensors raises SafetensorError, Python OSError(ENOSPC)
        if not is_disk_full(exc):
            raise
        need = sum(t.numel() * t.element_size() for t in tensors.values()) + len(header["ram_avatar"])
        raise DiskFullError(
            f"the disk is full: saving checkpoint {path.name} ({fmt_bytes(need)}) into "
            f"{path.parent} failed; {fmt_bytes(free_bytes(path.parent))} are free there. "
            f"{_intact(path)} Free at least {fmt_bytes(need)} (or lower keep_checkpoints) and "
            "run the same command again to resume.") from None
    return path


def _intact(path: Path) -> str:
    """Which complete checkpoint stays next to ``path`` (for the disk-full message)."""
    others = sorted((int(m.group(1)), p) for p in path.parent.glob("step_*.safetensors")
                    if (m := _NAME_RE.match(p.name)) and p != path)
    if not others:
        return "No earlier checkpoint exists in this run."
    step, p = others[-1]
    return f"The latest complete checkpoint, {p} (step {step}), is intact; training resumes from it."


def save_run_checkpoint(run_dir: str | os.PathLike, model: nn.Module,
                        optimizer: torch.optim.Optimizer | None, step: int,
                        config: dict | None = None, scaler=None, extra: dict | None = None,
                        keep: int = 3) -> Path:
    """Save ``step_<step>.safetensors`` in the run's checkpoint folder and keep only the last ``keep``.

    Temporary files left by a process killed while writing (checkpoints, ``config.yaml``,
    ``split.json``, ``sequence.json``, previews) are removed first (the caller holds the run's
    lock, :func:`ram_avatar.io.lock.run_lock`; only ``train`` writes these files). When the save fails, the
    step's auxiliary file ``step_<step>.aux.safetensors`` (written just before it) is removed,
    so no checkpoint is left without its main file.

    Raises:
        DiskFullError: see :func:`save_checkpoint`.
    """
    target = checkpoint_path(run_dir, step)
    stale = (remove_stale_temp_files(target.parent, ("step_",))
             + remove_stale_temp_files(run_dir, ("config.", "split.", "sequence."))
             + remove_stale_temp_files(Path(run_dir) / "previews", ("step_",)))
    for p in stale:
        log.info("removed %s, left by an interrupted write", p)
    try:
        path = save_checkpoint(target, model, optimizer, step, config, scaler, extra)
    except BaseException:
        if not target.exists():  # no main checkpoint of this step: its aux would be an orphan
            target.with_name(target.stem + ".aux.safetensors").unlink(missing_ok=True)
        raise
    ckpts = list_checkpoints(run_dir)
    for old in ckpts[:-keep] if keep > 0 else []:
        try:
            old.unlink()
        except OSError as exc:  # pragma: no cover - best effort
            log.warning("could not remove old checkpoint %s: %s", old, exc)
    return path


# ---------------------------------------------------------------------------------------------
# load


def _load_optimizer(path: Path, optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    saved = meta.get("optimizer")
    if saved is None:
        raise CheckpointError(f"checkpoint {path} has no optimiser state")
    if saved.get("class") != type(optimizer).__name__:
        raise CheckpointError(f"checkpoint {path} holds {saved.get('class')} state, "
                              f"not {type(optimizer).__name__}")
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, entries in saved.get("plain_state", {}).items():
        state.setdefault(int(idx), {}).update(entries)
    groups = saved["param_groups"]
    if len(groups) != len(optimizer.param_groups) or any(
            len(g["params"]) != len(cur["params"]) for g, cur in zip(groups, optimizer.param_groups)):
        raise CheckpointError(f"checkpoint {path}: optimiser parameter groups do not match the model")
    index_to_param = {}
    for g, cur in zip(groups, optimizer.param_groups):
        for idx, p in zip(g["params"], cur["params"]):
            index_to_param[int(idx)] = p
    for idx, entries in state.items():
        p = index_to_param.get(idx)
        if p is None:
            raise CheckpointError(f"checkpoint {path}: optimiser state for unknown parameter {idx}")
        for name, value in entries.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != p.shape:
                raise CheckpointError(f"checkpoint {path}: optimiser state {name} of parameter "
                                      f"{idx} has shape {tuple(value.shape)}, parameter has "
                                      f"{tuple(p.shape)}")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path}: cannot restore optimiser state: {exc}") from None


def _restore_rng(tensors: dict, meta: dict) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda_states = sorted((int(k.rsplit(".", 1)[1]), v) for k, v in tensors.items()
                         if k.startswith("rng.cuda."))
    if cuda_states and torch.cuda.is_available():
        n = min(len(cuda_states), torch.cuda.device_count())
        for i, state in cuda_states[:n]:
            torch.cuda.set_rng_state(state, i)
    rng = meta.get("rng") or {}
    if "numpy" in rng and "rng.numpy" in tensors:
        n = rng["numpy"]
        keys = tensors["rng.numpy"].numpy().astype(np.uint32)
        np.random.set_state((n["algo"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "python" in rng:
        p = rng["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, scaler=None,
                    restore_rng: bool = False) -> CheckpointInfo:
    """Load a checkpoint into ``model`` / ``optimizer`` / ``scaler`` (each optional).

    Tensors are loaded on CPU and copied into the model's / optimiser's device by
    ``load_state_dict``. With ``restore_rng`` the torch, CUDA, numpy and python RNG states are
    restored too (exact resume).

    Raises:
        CheckpointError: missing/corrupt file, or the file does not match the model/optimiser.
    """
    path = Path(path)
    tensors, meta = read_checkpoint(path)
    if model is not None:
        load_model_state(path, model, tensors)
    if optimizer is not None:
        _load_optimizer(path, optimizer, tensors, meta)
    if scaler is not None and scaler.is_enabled() and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    if restore_rng:
        _restore_rng(tensors, meta)
    return CheckpointInfo(path=path, step=int(meta.get("step", 0)), config=meta.get("config"),
                          extra=meta.get("extra") or {})
