"""Typed paths of a subject and of its training runs (the one owner of the folder layout).

Layout of a subject directory (``ram-avatar capture -o SUBJECT``)::

    SUBJECT/
      sequence/        FittedSequence (io.sequence): manifest.json, fitted.npz, masks.npz,
                       source.mp4, overlay.mp4; texture.png + texture_mask.png (texture
                       back-projected from the video, when built)
      runs/<run>/      one training run: config.yaml, checkpoints/step_N.safetensors,
                       split.json (the held-out split, io.split), metrics.json, tb/, previews/
      export/          avatar.onnx (+ avatar.engine), export.json

This module only knows paths and small JSON/YAML records; it imports neither training nor
capture, so the runtime, exporters, the GUI and the benches can all use it (issue 11, item 1).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ram_avatar.io.split import Split, SplitError, read_split

log = logging.getLogger(__name__)

DEFAULT_RUN = "default"
#: ``val_fraction`` of a run whose config cannot be read (TrainConfig's default)
DEFAULT_VAL_FRACTION = 0.1
_CKPT = re.compile(r"step_(\d+)\.safetensors")


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
        return self.root / "sequence"

    @property
    def manifest_path(self) -> Path:
        return self.sequence_dir / "manifest.json"

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
        return self.dir / "checkpoints"

    @property
    def split_path(self) -> Path:
        """``split.json``: the run's record of its held-out split (io.split)."""
        return self.dir / "split.json"

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.json"

    def checkpoints(self) -> list[Path]:
        """Main checkpoints ``step_N.safetensors`` (no ``.aux`` files), ascending step."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoints_dir.glob("step_*.safetensors")
                 if (m := _CKPT.fullmatch(p.name))]
        return [p for _, p in sorted(found)]

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
        fraction = self.config_dict().get("val_fraction", DEFAULT_VAL_FRACTION)
        return read_split(self.split_path, seq.num_frames, seq.valid, float(fraction))

    def write_split(self, split: Split) -> Path:
        """Record ``split`` as the run's ``split.json`` (atomic)."""
        return split.write(self.split_path)
