"""Subject-level training entry points: ``ram-avatar train`` and loading trained renderers.

A run lives in ``<subject>/runs/<name>/`` with ``config.yaml``, ``checkpoints/``, TensorBoard
events and preview PNGs (see training.trainer). Training holds out the last ``val_fraction``
of the captured frames (default 10 %) for validation and evaluation.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ram_avatar.errors import CheckpointError
from ram_avatar.io.sequence import load_sequence
from ram_avatar.models.renderer import AvatarRenderer
from ram_avatar.training.checkpoint import latest_checkpoint, load_checkpoint
from ram_avatar.training.config import apply_overrides, get_preset, load_config
from ram_avatar.training.data import SubjectDataset, split_frames
from ram_avatar.training.trainer import required_extras, train

log = logging.getLogger(__name__)

DEFAULT_RUN = "default"


def run_dir(subject_dir: str | Path, name: str = DEFAULT_RUN) -> Path:
    return Path(subject_dir) / "runs" / name


def train_subject(subject_dir: str | Path, preset: str = "cpu-256", steps: int | None = None,
                  minutes: float | None = None, run_name: str = DEFAULT_RUN, device: str = "auto",
                  overrides: list[str] | None = None, backend: str = "auto") -> dict:
    """Train (or resume) the avatar renderer of a captured subject.

    Args:
        subject_dir: directory written by ``ram-avatar capture``.
        preset: training preset (``cpu-256``, ``cpu-256-v1``, ``paper-1024``); ignored when the run already has
            a config.yaml (resuming keeps the run's config).
        steps / minutes: stop after this many total steps / this many minutes of this call.
        run_name: run folder under ``<subject>/runs``.
        device: ``auto``, ``cpu`` or ``cuda``.
        overrides: ``key=value`` config overrides (e.g. ``batch_size=4``, ``model.base_channels=32``).
        backend: rasterizer backend for the conditioning maps.
    Returns:
        The trainer's summary dict (final step, losses, validation PSNR, steps/s).
    Raises:
        SequenceFormatError: no or damaged capture; ConfigError: bad preset/overrides.
    """
    seq = load_sequence(subject_dir)
    rd = run_dir(subject_dir, run_name)
    cfg_path = rd / "config.yaml"
    if cfg_path.is_file():
        config = load_config(cfg_path)
        log.info("resuming run %s (config from %s)", rd, cfg_path)
    else:
        config = get_preset(preset)
    if overrides:
        config = apply_overrides(config, overrides)
    tr, va = split_frames(seq, config.val_fraction)
    log.info("subject %s: %d training frames, %d held-out frames", subject_dir, len(tr), len(va))
    S = config.model.resolution
    extras = required_extras(config)
    offset = config.model.expand_offset
    train_set = SubjectDataset(seq, tr, S, backend=backend, extras=extras, expand_offset=offset)
    # validation renders without the discriminator's neighbour frames or hand boxes
    val_extras = config.model.data_extras()
    val_set = SubjectDataset(seq, va, S, backend=backend, extras=val_extras,
                             expand_offset=offset) if len(va) else None
    summary = train(train_set, val_set, rd, config, steps=steps, minutes=minutes, device=device)
    (rd / "split.json").write_text(json.dumps({"train": tr.tolist(), "val": va.tolist()}))
    return summary


def load_renderer(subject_dir: str | Path, run_name: str = DEFAULT_RUN,
                  device: str | torch.device = "cpu") -> tuple[AvatarRenderer, dict]:
    """Load the latest checkpoint of a run as an eval-mode :class:`AvatarRenderer`.

    Returns:
        (model, info) with info ``checkpoint`` (path), ``step``, ``config`` (TrainConfig).
    Raises:
        CheckpointError: no run or no checkpoint (train first), or a damaged checkpoint.
    """
    rd = run_dir(subject_dir, run_name)
    ckpt = latest_checkpoint(rd) if rd.is_dir() else None
    if ckpt is None or not (rd / "config.yaml").is_file():
        raise CheckpointError(f"no trained renderer in {rd}: run `ram-avatar train {subject_dir}` first")
    config = load_config(rd / "config.yaml")
    model = AvatarRenderer(config.model)
    info = load_checkpoint(ckpt, model=model)
    model.to(device).eval()
    step = info.step if hasattr(info, "step") else None
    return model, {"checkpoint": ckpt, "step": step, "config": config}
