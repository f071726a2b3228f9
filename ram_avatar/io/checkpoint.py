"""The read side of training checkpoints and run records, below every verb that loads a run.

Format (written by :mod:`ram_avatar.training.checkpoint`, which re-exports these names): one
``.safetensors`` file per checkpoint, ``<run>/checkpoints/step_<8 digits>.safetensors``, with
the model's state dict as tensors ``model.<name>`` and a JSON document in the header metadata
(key ``ram_avatar``: format name and version, step, config, ...). Nothing is unpickled.
``<run>/sequence.json`` records the sha256 of the capture a run was trained on
(:func:`check_run_sequence`).

Loading a trained renderer for inference (``Run.load_renderer``: export, drive, evaluate, the
live runtime, the benches) needs only this module, :mod:`ram_avatar.io.subject` and
:mod:`ram_avatar.models`, not ``ram_avatar.training`` (issue 11).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from ram_avatar.errors import CheckpointError
from ram_avatar.io.sequence import FITTED
from ram_avatar.utils import atomic_write_text, sha256_file

__all__ = ["FORMAT", "FORMAT_VERSION", "CHECKPOINT_DIR", "SEQUENCE_RECORD", "checkpoint_path",
           "list_checkpoints", "latest_checkpoint", "check_run_sequence", "read_metadata",
           "read_checkpoint", "load_model_state", "aux_checkpoint_path", "load_ema_weights"]

FORMAT = "ram-avatar-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
_NAME_RE = re.compile(r"^step_(\d{8,})\.safetensors$")


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    """``<run_dir>/checkpoints/step_<step:08d>.safetensors``."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{int(step):08d}.safetensors"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint files of a run, oldest (lowest step) first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint of a run (highest step), or None when it has none."""
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None



# ---------------------------------------------------------------------------------------------
# which sequence a run was trained on

#: file in a run directory recording the sequence it was trained on
SEQUENCE_RECORD = "sequence.json"


def check_run_sequence(run_dir: str | os.PathLike, sequence_dir: str | os.PathLike,
                       record: bool = False) -> str | None:
    """Make sure a run belongs to the subject's current sequence.

    The fingerprint is the sha256 of the sequence's ``fitted.npz`` (the fit, keypoints and
    validity of every frame: a new capture changes it). ``train`` records it in
    ``<run>/sequence.json`` (``record=True``); every later use of the run checks it, so a run
    moved or left over from another capture is refused instead of resumed, exported, driven or
    evaluated on frames it was not trained on. Runs written before this record are accepted.

    Args:
        run_dir: ``<subject>/runs/<name>``.
        sequence_dir: the subject's ``sequence/`` folder.
        record: write the record when the run has none yet (rank 0 only under torchrun).
    Returns:
        the fingerprint (None when the sequence has no ``fitted.npz``: loading it fails later
        with its own error).
    Raises:
        CheckpointError: the run was trained on another sequence.
    """
    fitted = Path(sequence_dir) / FITTED
    if not fitted.is_file():
        return None
    fp = sha256_file(fitted)
    path = Path(run_dir) / SEQUENCE_RECORD
    if path.is_file():
        try:
            saved = json.loads(path.read_text()).get("sha256")
        except (ValueError, AttributeError):
            saved = None
        if saved and saved != fp:
            raise CheckpointError(
                f"run {run_dir} was trained on another sequence (fitted.npz sha256 {saved[:12]}..., "
                f"the subject's sequence is now {fp[:12]}...): the subject was captured again, or "
                "the run was copied from another subject. Train a new run (--run NAME), or capture "
                "into a new folder (capture --overwrite moves old runs aside).")
    elif record and int(os.environ.get("RANK", "0") or 0) == 0:  # under torchrun rank 0 writes
        atomic_write_text(path, json.dumps({"sha256": fp, "file": "sequence/fitted.npz"}))
    return fp


# ---------------------------------------------------------------------------------------------
# read


def _open_error(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} is corrupt or not a safetensors file ({exc}); delete it to resume "
        "from an earlier checkpoint, or start a new run directory")


def _parse_metadata(path: Path, header: dict | None) -> dict:
    header = header or {}
    if "ram_avatar" not in header:
        raise CheckpointError(f"{path} is a safetensors file but not a RAM-Avatar checkpoint "
                              "(no 'ram_avatar' metadata)")
    try:
        meta = json.loads(header["ram_avatar"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"checkpoint {path} has corrupt metadata: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a RAM-Avatar checkpoint (format "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    if int(meta.get("version", -1)) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer RAM-Avatar (checkpoint format "
                              f"{meta.get('version')} > {FORMAT_VERSION}); upgrade ram-avatar")
    return meta


def read_metadata(path: str | os.PathLike) -> dict:
    """Only the JSON metadata of a checkpoint (step, config, ...), without reading tensors.

    Raises:
        CheckpointError: missing, unreadable or not a RAM-Avatar checkpoint.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            header = fh.metadata()
    except Exception as exc:  # safetensors raises SafetensorError / OSError / ValueError ...
        raise _open_error(path, exc) from None
    return _parse_metadata(path, header)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint file: ``(tensors on CPU, metadata dict)``.

    Raises:
        CheckpointError: missing, unreadable, corrupt or not a RAM-Avatar checkpoint.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            header = fh.metadata()
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
    except Exception as exc:  # safetensors raises SafetensorError / OSError / ValueError ...
        raise _open_error(path, exc) from None
    return tensors, _parse_metadata(path, header)


def load_model_state(path: Path, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load the ``model.*`` tensors of a checkpoint into ``model`` (strict).

    Raises:
        CheckpointError: missing, unexpected or mis-shaped tensors (the message names some).
    """
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state)
                   if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: checkpoint "
                         f"{tuple(state[k].shape)} vs model {tuple(expected[k].shape)})")
        raise CheckpointError(
            f"checkpoint {path} does not match the model: {'; '.join(parts)}. It was trained "
            "with a different model config; use the run's own config.yaml or a new run directory")
    model.load_state_dict(state, strict=True)


def aux_checkpoint_path(main_checkpoint: str | os.PathLike) -> Path:
    """``step_N.aux.safetensors`` next to ``step_N.safetensors`` (discriminator, EMA)."""
    p = Path(main_checkpoint)
    return p.with_name(p.stem + ".aux.safetensors")


def load_ema_weights(checkpoint: str | os.PathLike, model: nn.Module) -> bool:
    """Load the EMA renderer weights saved with ``checkpoint`` into ``model``.

    Returns:
        True when the checkpoint has EMA weights (loaded), False when it has none.
    Raises:
        CheckpointError: corrupt aux file or weights that do not match ``model``.
    """
    aux = aux_checkpoint_path(checkpoint)
    if not aux.is_file():
        return False
    tensors, _ = read_checkpoint(aux)
    state = {k[len("model.ema."):]: v for k, v in tensors.items() if k.startswith("model.ema.")}
    if not state:
        return False
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"EMA weights in {aux} do not match the model: {exc}") from None
    return True
