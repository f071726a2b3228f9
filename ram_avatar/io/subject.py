"""Typed paths of a subject and of its training runs (the one owner of the folder layout).

Layout of a subject directory (``ram-avatar capture -o SUBJECT``)::

    SUBJECT/
      sequence/        FittedSequence (io.sequence): manifest.json, fitted.npz, masks.npz,
                       source.mp4, overlay.mp4; texture.png + texture_mask.png (texture
                       back-projected from the video, when built)
      runs/<run>/      one training run: config.yaml, checkpoints/step_N.safetensors,
                       split.json (the held-out split, io.split), sequence.json (the capture
                       it was trained on), refined_poses.npz, metrics.json, tb/, previews/
      export/          avatar.onnx (+ avatar.engine, avatar_<S>.onnx/.engine), export.json
      mda/             the fitted motion aligner (motion.mda)

This module knows the paths and reads the small JSON/YAML records and the trained renderer
(:meth:`Run.load_renderer`); it imports neither training nor capture, so every verb, the
runtime, exporters, the GUI and the benches use it (issue 11, item 1) and no other file spells
a subject path.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ram_avatar.errors import RamAvatarError
from ram_avatar.io.checkpoint import CHECKPOINT_DIR, SEQUENCE_RECORD, list_checkpoints
from ram_avatar.io.refined_poses import REFINED_POSES_FILE
from ram_avatar.io.sequence import FITTED, MANIFEST, SEQUENCE_DIR
from ram_avatar.io.split import Split, SplitError, read_split

log = logging.getLogger(__name__)

DEFAULT_RUN = "default"
#: ``val_fraction`` of a run whose config cannot be read (TrainConfig's default)
DEFAULT_VAL_FRACTION = 0.1


class RunConfigError(RamAvatarError, ValueError):
    """A run's ``config.yaml`` cannot be read as a renderer config (unknown keys, wrong types)."""


@dataclass(frozen=True)
class Subject:
    """A captured subject directory (module docstring).

    Attributes:
        root: the subject directory.
    """

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def sequence_dir(self) -> Path:
        return self.root / SEQUENCE_DIR

    @property
    def manifest_path(self) -> Path:
        return self.sequence_dir / MANIFEST

    @property
    def fitted_path(self) -> Path:
        """``fitted.npz``: the per-frame fit (its sha256 fingerprints the capture)."""
        return self.sequence_dir / FITTED

    def has_sequence(self) -> bool:
        """True when a capture was written (the manifest exists)."""
        return self.manifest_path.is_file()

    @property
    def source_video(self) -> Path:
        return self.sequence_dir / "source.mp4"

    @property
    def texture_path(self) -> Path:
        """Texture back-projected from the video (UV atlas RGB PNG)."""
        return self.sequence_dir / "texture.png"

    @property
    def texture_mask_path(self) -> Path:
        """Coverage mask of :attr:`texture_path` (PNG, 255 = seen in some frame)."""
        return self.sequence_dir / "texture_mask.png"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def export_onnx(self) -> Path:
        return self.export_dir / "avatar.onnx"

    @property
    def export_manifest_path(self) -> Path:
        return self.export_dir / "export.json"

    @property
    def export_engine(self) -> Path:
        """The TensorRT engine built by ``export --tensorrt`` (on a GPU machine)."""
        return self.export_dir / "avatar.engine"

    def export_model(self, kind: str = "onnx", resolution: int | None = None) -> Path:
        """The exported renderer file: ``avatar.onnx`` (``kind="onnx"``) or ``avatar.engine``
        (``"tensorrt"``); with ``resolution`` the per-size file ``avatar_<S>.onnx/.engine``
        when it exists (``bench gpu`` writes those), else the default one.

        Raises:
            ValueError: unknown ``kind``.
        """
        if kind not in ("onnx", "tensorrt"):
            raise ValueError(f"unknown export kind {kind!r}: onnx or tensorrt")
        ext = ".onnx" if kind == "onnx" else ".engine"
        if resolution is not None and (self.export_dir / f"avatar_{int(resolution)}{ext}").is_file():
            return self.export_dir / f"avatar_{int(resolution)}{ext}"
        return self.export_dir / f"avatar{ext}"

    def export_manifest(self) -> dict:
        """``export.json`` written by ``ram-avatar export`` (run, resolution, inputs, parity).

        Raises:
            RamAvatarError: no export (run ``ram-avatar export`` first) or an unreadable file.
        """
        path = self.export_manifest_path
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise RamAvatarError(f"{path} not found: run `ram-avatar export {self.root}` first") from None
        except (OSError, ValueError) as e:
            raise RamAvatarError(f"cannot read {path} ({e}): run `ram-avatar export {self.root}` "
                                 "again") from None

    def exported_run(self, default: str = DEFAULT_RUN) -> "Run":
        """The run the current export was made from (``export.json``'s ``run``), else
        ``default`` when there is no readable export manifest."""
        try:
            return self.run(self.export_manifest().get("run", default))
        except RamAvatarError:
            return self.run(default)

    @property
    def mda_dir(self) -> Path:
        """``mda/``: the fitted motion aligner and MDA measurements (motion.mda)."""
        return self.root / "mda"

    def manifest(self) -> dict:
        """The sequence manifest (JSON), without loading the arrays.

        Raises:
            SequenceFormatError: missing or unreadable manifest.
        """
        from ram_avatar.errors import SequenceFormatError

        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SequenceFormatError(f"cannot read {self.manifest_path} ({e}): run "
                                      f"`ram-avatar capture VIDEO -o {self.root}` first") from e

    def load_sequence(self):
        """The validated :class:`~ram_avatar.io.sequence.FittedSequence` (io.sequence.load_sequence)."""
        from ram_avatar.io.sequence import load_sequence

        return load_sequence(self.root)

    def run(self, name: str = DEFAULT_RUN) -> "Run":
        """The training run ``name`` (it need not exist yet)."""
        return Run(self, name)

    def runs(self) -> list["Run"]:
        """Existing runs (folders with a config.yaml), sorted by name."""
        if not self.runs_dir.is_dir():
            return []
        return [Run(self, p.name) for p in sorted(self.runs_dir.iterdir())
                if (p / "config.yaml").is_file()]


@dataclass(frozen=True)
class Run:
    """One training run ``<subject>/runs/<name>`` (module docstring).

    Attributes:
        subject: the :class:`Subject`.
        name: run folder name.
    """

    subject: Subject
    name: str = DEFAULT_RUN

    @property
    def dir(self) -> Path:
        return self.subject.runs_dir / self.name

    @property
    def config_path(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def checkpoints_dir(self) -> Path:
        return self.dir / CHECKPOINT_DIR

    @property
    def sequence_record_path(self) -> Path:
        """``sequence.json``: sha256 of the capture the run was trained on (io.checkpoint)."""
        return self.dir / SEQUENCE_RECORD

    @property
    def refined_poses_path(self) -> Path:
        """``refined_poses.npz``: body parameters refined in training (io.refined_poses)."""
        return self.dir / REFINED_POSES_FILE

    @property
    def previews_dir(self) -> Path:
        return self.dir / "previews"

    @property
    def tensorboard_dir(self) -> Path:
        return self.dir / "tb"

    @property
    def quality_dir(self) -> Path:
        """``quality/``: default output folder of ``bench quality`` for this run."""
        return self.dir / "quality"

    @property
    def split_path(self) -> Path:
        """``split.json``: the run's record of its held-out split (io.split)."""
        return self.dir / "split.json"

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.json"

    def checkpoints(self) -> list[Path]:
        """Main checkpoints ``step_N.safetensors`` (no ``.aux`` files), ascending step
        (:func:`ram_avatar.io.checkpoint.list_checkpoints`)."""
        return list_checkpoints(self.dir)

    def latest_checkpoint(self) -> Path | None:
        """The newest main checkpoint (highest step), or None."""
        ckpts = self.checkpoints()
        return ckpts[-1] if ckpts else None

    def is_trained(self) -> bool:
        """True when the run has a config.yaml and at least one checkpoint."""
        return self.config_path.is_file() and self.latest_checkpoint() is not None

    def config_dict(self) -> dict:
        """The run's resolved config as a plain dict (YAML, safe loader); ``{}`` when absent.

        Raises:
            SplitError: config.yaml exists but cannot be parsed.
        """
        import yaml

        if not self.config_path.is_file():
            return {}
        try:
            data = yaml.safe_load(self.config_path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise SplitError(f"cannot read {self.config_path} ({e})") from e
        return data if isinstance(data, dict) else {}

    def has_split(self) -> bool:
        """True when the run recorded its split in the current layout (with a method)."""
        try:
            return "method" in json.loads(self.split_path.read_text())
        except (OSError, ValueError, TypeError):
            return False

    def split(self, seq=None) -> Split:
        """The held-out split this run trains on: read from ``split.json``, the one place it is
        recorded. Runs written by older versions fall back to the ``tail`` split with the run's
        ``val_fraction`` (io.split.read_split).

        Args:
            seq: the subject's FittedSequence (loaded when None; only T and validity are used).
        Raises:
            SplitError: damaged split.json, or one that does not fit the subject's sequence.
        """
        if seq is None:
            seq = self.subject.load_sequence()
        data = self.config_dict()  # flat (before issue 11) or sectioned (data.val_fraction)
        fraction = data.get("val_fraction", (data.get("data") or {}).get("val_fraction",
                                                                          DEFAULT_VAL_FRACTION))
        return read_split(self.split_path, seq.num_frames, seq.valid, float(fraction))

    def write_split(self, split: Split) -> Path:
        """Record ``split`` as the run's ``split.json`` (atomic)."""
        return split.write(self.split_path)

    def renderer_config(self):
        """The run's renderer architecture: ``config.yaml``'s ``model`` section as a
        :class:`~ram_avatar.models.renderer.RendererConfig`, strictly (unknown keys and wrong
        types are refused, as the training config loader does).

        Raises:
            CheckpointError: no config.yaml (train first).
            RunConfigError: unreadable YAML, no ``model`` mapping, unknown keys, wrong types
                or an invalid combination.
        """
        from ram_avatar.errors import CheckpointError

        if not self.config_path.is_file():
            raise CheckpointError(f"no trained renderer in {self.dir}: run `ram-avatar train "
                                  f"{self.subject.root}` first")
        try:
            data = self.config_dict()
        except SplitError as e:
            raise RunConfigError(str(e)) from None
        model = data.get("model")
        if not isinstance(model, dict):
            raise RunConfigError(f"{self.config_path} has no 'model' mapping (renderer config)")
        return renderer_config_from_dict(model, where=str(self.config_path))

    def load_renderer(self, device="cpu", weights: str = "auto"):
        """The latest checkpoint of this run as an eval-mode
        :class:`~ram_avatar.models.renderer.AvatarRenderer` (the one loader of trained
        renderers: export, drive, evaluate, the live runtime and the benches).

        Args:
            device: torch device (or name) to move the model to.
            weights: ``auto``: the EMA of the renderer's weights when the run was trained with
                ``optim.ema_warmup`` (its EMA is the run's renderer, see
                :class:`~ram_avatar.training.config.OptimConfig`) and saved one, else the raw
                weights; ``raw``: the optimised weights; ``ema``: the saved EMA (raises when
                there is none).
        Returns:
            (model, info) with info ``checkpoint`` (Path), ``step`` (int), ``model_config``
            (RendererConfig, also ``model.config``), ``preset`` (the run's preset name or None),
            ``weights`` (``ema`` or ``raw``: which were loaded) and ``run`` (this Run).
        Raises:
            CheckpointError: no config or no checkpoint (train first), a damaged checkpoint, a
                checkpoint that does not match the config, or a run trained on another capture
                of the subject (``sequence.json``, :func:`ram_avatar.io.checkpoint.check_run_sequence`).
            RunConfigError: a bad config.yaml.
        """
        from ram_avatar.errors import CheckpointError
        from ram_avatar.io.checkpoint import (check_run_sequence, load_ema_weights,
                                              load_model_state, read_checkpoint)
        from ram_avatar.models.renderer import AvatarRenderer

        ckpt = self.latest_checkpoint()
        if ckpt is None or not self.config_path.is_file():
            raise CheckpointError(f"no trained renderer in {self.dir}: run `ram-avatar train "
                                  f"{self.subject.root}` first")
        config = self.renderer_config()
        check_run_sequence(self.dir, self.subject.sequence_dir)  # trained on this capture?
        try:
            model = AvatarRenderer(config)
        except ValueError as e:
            raise RunConfigError(f"{self.config_path}: {e}") from None
        if weights not in ("auto", "raw", "ema"):
            raise ValueError(f"weights must be auto, raw or ema, got {weights!r}")
        tensors, meta = read_checkpoint(ckpt)
        load_model_state(ckpt, model, tensors)
        del tensors
        data = self.config_dict()
        optim = data.get("optim") or {}
        loaded = "raw"
        if weights == "ema" or (weights == "auto" and optim.get("ema_warmup")
                                and float(optim.get("ema_decay") or 0) > 0):
            if load_ema_weights(ckpt, model):
                loaded = "ema"
            elif weights == "ema":
                raise CheckpointError(f"{ckpt} has no EMA weights beside it (train with "
                                      "optim.ema_decay > 0, or load the raw weights)")
        model.to(device).eval()
        return model, {"checkpoint": ckpt, "step": int(meta.get("step", 0)),
                       "model_config": config, "preset": data.get("preset"),
                       "weights": loaded, "run": self}


def load_renderer(subject_dir: str | Path, run_name: str = DEFAULT_RUN, device="cpu"):
    """``Subject(subject_dir).run(run_name).load_renderer(device)`` (:meth:`Run.load_renderer`)."""
    return Subject(subject_dir).run(run_name).load_renderer(device)


def renderer_config_from_dict(data: dict, where: str = "model"):
    """A :class:`~ram_avatar.models.renderer.RendererConfig` from the plain mapping a run's
    config.yaml holds under ``model``, through the one loader of the model section,
    :meth:`RendererConfig.from_dict <ram_avatar.models.renderer.RendererConfig.from_dict>`
    (every key a field, every value of the field's type; the training config reads its
    ``model`` section through it too).

    Raises:
        RunConfigError: unknown keys, wrong types or an invalid combination (the message starts
            with ``where``).
    """
    from ram_avatar.models.renderer import RendererConfig

    try:
        return RendererConfig.from_dict(data, where=where)
    except ValueError as e:
        raise RunConfigError(str(e)) from None
