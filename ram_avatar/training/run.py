"""Subject-level training entry points: ``ram-avatar train`` and loading trained renderers.

A run lives in ``<subject>/runs/<name>/`` (:class:`ram_avatar.io.subject.Run`) with
``config.yaml``, ``checkpoints/``, ``split.json``, TensorBoard events and preview PNGs (see
training.trainer). The held-out split is decided once, at the first ``train`` of a run
(``--holdout tail|segment``, io.split), and written to ``split.json`` before training starts;
every later command (resume, evaluate, export, drive, the live runtime, the benches) reads it
back with :meth:`Run.split`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ram_avatar.io.lock import run_lock
from ram_avatar.io.sequence import FittedSequence, load_sequence
from ram_avatar.io.split import Split, SplitError, decide_split
from ram_avatar.io.subject import DEFAULT_RUN, Run, Subject
from ram_avatar.io.subject import load_renderer  # noqa: F401  (moved to io.subject: Run.load_renderer)
from ram_avatar.training.checkpoint import check_run_sequence
from ram_avatar.training.config import TrainConfig, apply_overrides, get_preset, load_config
from ram_avatar.training.data import SubjectDataset
from ram_avatar.training.trainer import required_extras, train

log = logging.getLogger(__name__)


def run_dir(subject_dir: str | Path, name: str = DEFAULT_RUN) -> Path:
    """``<subject>/runs/<name>`` (:attr:`ram_avatar.io.subject.Run.dir`)."""
    return Subject(subject_dir).run(name).dir


def resolve_config(run: Run, preset: str = "cpu-256", overrides: list[str] | None = None) -> TrainConfig:
    """The run's config.yaml when it exists (resuming keeps the run's config), else ``preset``;
    then ``overrides`` (``key=value``).

    Raises:
        ConfigError: unknown preset, bad config.yaml or bad overrides.
    """
    if run.config_path.is_file():
        config = load_config(run.config_path)
        log.info("resuming run %s (config from %s)", run.dir, run.config_path)
    else:
        config = get_preset(preset)
    if overrides:
        config = apply_overrides(config, overrides)
    return config


def resolve_split(run: Run, seq: FittedSequence, config: TrainConfig, holdout: str | None = None,
                  body=None) -> Split:
    """The run's held-out split: decided and written to ``split.json`` at the run's first
    ``train``, read back on every later one.

    Args:
        run: the training run.
        seq: the subject's sequence.
        config: the resolved config (its ``data.val_fraction`` decides a new split).
        holdout: ``tail`` | ``segment`` | None (None: the run's own split, ``tail`` for a new run).
        body: body model for the ``segment`` split (loaded when None).
    Returns:
        the :class:`Split` training uses. A run written by an older version (no split.json, or
        one without a method) is read as the ``tail`` split and its split.json is rewritten in
        the current layout (same frames).
    Raises:
        SplitError: ``holdout`` or ``config.data.val_fraction`` conflicts with the run's recorded split.
    """
    if run.split_path.is_file() or run.latest_checkpoint() is not None:
        split = run.split(seq)
        if holdout is not None and holdout != split.method:
            raise SplitError(
                f"run {run.dir} holds out frames with the {split.method!r} split (its split.json); "
                f"--holdout {holdout} conflicts with it. Train a new run (--run NAME) to use "
                f"the {holdout!r} split")
        if abs(float(config.data.val_fraction) - split.val_fraction) > 1e-9:
            raise SplitError(
                f"run {run.dir} was split with val_fraction {split.val_fraction:g}; "
                f"val_fraction={config.data.val_fraction:g} conflicts with it. Train a new run "
                "(--run NAME) for another fraction")
        if not run.has_split() and _rank0():
            run.write_split(split)
            log.info("%s: recorded the run's split in the current layout", run.split_path)
        return split
    split = decide_split(seq, holdout or "tail", config.data.val_fraction, body=body)
    if _rank0():  # every rank decides the same split; one writes it
        run.write_split(split)
    log.info("%s: %s", run.split_path, split.describe())
    return split


def _rank0() -> bool:
    """True outside torchrun and on its rank 0 (``RANK`` environment variable)."""
    import os

    return int(os.environ.get("RANK", "0") or 0) == 0


#: bounds of a measured expand offset (metres): at least the renderer's default, at most a
#: hand's width (a larger gap is a segmentation error or a person beside the subject)
EXPAND_OFFSET_RANGE = (0.01, 0.08)
#: training frames the expand offset is measured on (spread evenly)
EXPAND_FRAMES = 32


def expand_offset_from_masks(body_masks, person_masks, depth, focal: float,
                             quantile: float = 0.75) -> dict:
    """The distance (metres) by which the person extends beyond the fitted template, from
    silhouettes: the core of :func:`measure_expand_offset`.

    Every person pixel outside the template's silhouette contributes its distance to the
    silhouette (OpenCV L2 distance transform, pixels) times ``depth / focal`` (pinhole: pixels
    to metres at the body's distance); the result is the ``quantile`` of those distances,
    clipped to :data:`EXPAND_OFFSET_RANGE`.

    Args:
        body_masks, person_masks: (N,H,W) bool (or 0/1) silhouettes of the template and of the
            person (segmentation).
        depth: (N,) distance of the body from the camera, metres (``transl_z``).
        focal: focal length of the images, pixels.
        quantile: in (0, 1).
    Returns:
        dict ``offset`` (metres, clipped), ``raw`` (before clipping; 0 when no person pixel lies
        outside the template), ``quantile``, ``frames`` (N), ``outside_fraction`` (person pixels
        outside the template).
    Raises:
        RamAvatarError: no person pixels at all (check the capture's masks).
    """
    import cv2
    import numpy as np

    from ram_avatar.errors import RamAvatarError

    metres, person, outside = [], 0, 0
    for mesh, pm, z in zip(body_masks, person_masks, depth):
        mesh = np.asarray(mesh).astype(bool)
        pm = np.asarray(pm).astype(bool)
        gap = pm & ~mesh
        person += int(pm.sum())
        outside += int(gap.sum())
        if gap.any():
            d = cv2.distanceTransform((~mesh).astype(np.uint8), cv2.DIST_L2, 5)[gap]
            metres.append(d * abs(float(z)) / float(focal))
    if person == 0:
        raise RamAvatarError("no person pixels in the training frames' masks: the expand offset "
                             "cannot be measured; check the capture (sequence/masks.npz)")
    raw = float(np.quantile(np.concatenate(metres), quantile)) if metres else 0.0
    return {"offset": float(np.clip(raw, *EXPAND_OFFSET_RANGE)), "raw": raw,
            "quantile": quantile, "frames": len(body_masks), "outside_fraction": outside / person}


def measure_expand_offset(seq: FittedSequence, frames, size: int, body, quantile: float = 0.75,
                          backend: str = "auto") -> dict:
    """The expanded mesh's offset that covers the person beyond the fitted template, measured
    on the subject's own frames (``data.expand_offset_from_masks``): the RAM-Avatar expanded
    mesh (Sec. 3.2) sized to the subject's loose clothes and hair instead of a fixed 1 cm.

    Up to :data:`EXPAND_FRAMES` of ``frames`` (spread evenly) are rendered in the S x S
    training crop; :func:`expand_offset_from_masks` compares their template silhouettes
    (``body_mask``) with the person masks at each frame's depth (``transl_z``) and the crop's
    focal length.

    Args:
        seq: the subject's sequence; frames: training frame indices; size: crop side S.
        body: the body model; quantile: in (0, 1); backend: rasterizer backend.
    Returns:
        the dict of :func:`expand_offset_from_masks`.
    Raises:
        RamAvatarError: no frame has person pixels.
    """
    import numpy as np

    frames = np.asarray(frames)
    pick = frames[np.unique(np.linspace(0, len(frames) - 1, min(EXPAND_FRAMES, len(frames)))
                            .round().astype(int))]
    ds = SubjectDataset(seq, pick, size, backend=backend, body=body)
    items = [ds[row] for row in range(len(pick))]
    return expand_offset_from_masks([it["body_mask"][0].numpy() > 0.5 for it in items],
                                    [it["person_mask"][0].numpy() > 0.5 for it in items],
                                    np.asarray(ds.params.transl)[pick, 2],
                                    float(ds.K_crop[0, 0]), quantile)


def build_datasets(seq: FittedSequence, split: Split, config: TrainConfig, backend: str = "auto",
                   body=None) -> tuple[SubjectDataset, SubjectDataset | None]:
    """Training and validation datasets of a split, with the maps ``config`` needs.

    Args:
        seq: the subject's sequence; split: its held-out split; config: the training config.
        backend: rasterizer backend; body: the body model (loaded once when None).
    Returns:
        (train_set over ``split.train`` with :func:`required_extras`, val_set over ``split.val``
        with the renderer's own inputs only (no discriminator neighbours or hand boxes), or
        None when nothing is held out).
    """
    if body is None:
        from ram_avatar.body import load_body_model

        bm = seq.manifest["body_model"]
        body = load_body_model(bm["name"], model_path=bm.get("model_path"))
    S = config.model.resolution
    offset = config.model.expand_offset
    train_set = SubjectDataset(seq, split.train, S, backend=backend, body=body,
                               extras=required_extras(config), expand_offset=offset)
    val_set = SubjectDataset(seq, split.val, S, backend=backend, body=body,
                             extras=config.model.data_extras(),
                             expand_offset=offset) if len(split.val) else None
    return train_set, val_set


@dataclass
class TrainingSetup:
    """Everything :func:`train` needs for one subject's run (see :func:`prepare_training`)."""

    seq: FittedSequence
    run: Run
    config: TrainConfig
    split: Split
    train_set: SubjectDataset
    val_set: SubjectDataset | None
    #: (1,3,T,T) RGB texture baked from the training frames, for a new run of a renderer with
    #: ``model.texture_rgb`` (None otherwise, and when resuming: the checkpoint holds it)
    texture: torch.Tensor | None = None


def prepare_training(subject_dir: str | Path, preset: str = "cpu-256", run_name: str = DEFAULT_RUN,
                     overrides: list[str] | None = None, holdout: str | None = None,
                     backend: str = "auto") -> TrainingSetup:
    """Load the subject, resolve the run's config and split (written before any training) and
    build the datasets (:func:`resolve_config`, :func:`resolve_split`, :func:`build_datasets`).

    Raises:
        SequenceFormatError, ConfigError, SplitError (see :func:`train_subject`).
    """
    from ram_avatar.body import load_body_model

    seq = load_sequence(subject_dir)
    run = Subject(subject_dir).run(run_name)
    config = resolve_config(run, preset, overrides)
    bm = seq.manifest["body_model"]
    body = load_body_model(bm["name"], model_path=bm.get("model_path"))
    split = resolve_split(run, seq, config, holdout, body=body)
    log.info("subject %s: %s", subject_dir, split.describe())
    if "masks" not in seq.manifest:
        log.warning("the person masks of %s come from an older capture (MediaPipe Selfie "
                    "Segmentation), which misses legs and lower bodies in full-body videos (on "
                    "taiji it covered 62%% of the legs): the texture bake skips what they miss, "
                    "and what they miss outside the fitted body is learned as background. Re-run "
                    "`ram-avatar capture VIDEO -o SUBJECT --overwrite` for Holistic's masks, then "
                    "train a new run", subject_dir)
    if config.data.expand_offset_from_masks and not run.config_path.is_file():
        # a new run: the expanded mesh sized from its own frames (a resumed run keeps the
        # offset its config.yaml recorded)
        m = measure_expand_offset(seq, split.train, config.model.resolution, body,
                                  config.data.expand_quantile, backend)
        log.info("expand offset %.3f m measured on %d training frames (quantile %.2f of the "
                 "person beyond the template: %.3f m; %.0f%% of person pixels lie outside it)",
                 m["offset"], m["frames"], m["quantile"], m["raw"], 100 * m["outside_fraction"])
        config.model = replace(config.model, expand_offset=m["offset"])
    train_set, val_set = build_datasets(seq, split, config, backend=backend, body=body)
    texture = None
    if getattr(config.model, "texture_rgb", False) and run.latest_checkpoint() is None:
        from ram_avatar.render.texture_bake import ensure_texture

        # baked from this run's training frames only (held-out frames never leak in)
        texture = ensure_texture(seq, frames=split.train, size=config.model.texture_size,
                                 body=body)
    return TrainingSetup(seq, run, config, split, train_set, val_set, texture)


def split_summary(split: Split) -> dict:
    """Short JSON-able description of a split (method, fraction, frame counts, block)."""
    out = {"method": split.method, "val_fraction": split.val_fraction, "guard": split.guard,
           "train_frames": int(len(split.train)), "val_frames": int(len(split.val))}
    if "block" in split.info:
        out["block"] = split.info["block"]
    return out


def train_subject(subject_dir: str | Path, preset: str = "cpu-256", steps: int | None = None,
                  minutes: float | None = None, run_name: str = DEFAULT_RUN, device: str = "auto",
                  overrides: list[str] | None = None, backend: str = "auto",
                  holdout: str | None = None) -> dict:
    """Train (or resume) the avatar renderer of a captured subject.

    Args:
        subject_dir: directory written by ``ram-avatar capture``.
        preset: training preset (``cpu-256``, ``cpu-256-v1``, ``paper-1024``); ignored when the run already has
            a config.yaml (resuming keeps the run's config).
        steps / minutes: stop after this many total steps / this many minutes of this call.
        run_name: run folder under ``<subject>/runs``.
        device: ``auto``, ``cpu`` or ``cuda``.
        overrides: ``key=value`` config overrides (e.g. ``data.batch_size=4`` or the flat
            ``batch_size=4``, ``model.base_channels=32``; training.config.apply_overrides).
        backend: rasterizer backend for the conditioning maps.
        holdout: held-out split of a new run, ``tail`` (default) or ``segment`` (io.split);
            a resumed run keeps its own and refuses a different one.
    Returns:
        The trainer's summary dict (final step, losses, validation PSNR, steps/s) plus ``split``
        (:func:`split_summary`).
    Raises:
        SequenceFormatError: no or damaged capture; ConfigError: bad preset/overrides;
        SplitError: ``holdout`` / ``val_fraction`` conflicting with the run's recorded split.
        RunLockedError: another ``train`` is using the same run (the message names its PID).
    """
    with run_lock(run_dir(subject_dir, run_name)):  # one `train` per run (io.lock)
        setup = prepare_training(subject_dir, preset, run_name, overrides, holdout, backend)
        check_run_sequence(setup.run.dir, setup.seq.root, record=True)  # same capture only
        summary = train(setup.train_set, setup.val_set, setup.run.dir, setup.config, steps=steps,
                        minutes=minutes, device=device, init_texture=setup.texture)
    summary["split"] = split_summary(setup.split)
    return summary
