"""FittedSequence: the versioned on-disk result of ``ram-avatar capture``.

Layout of ``<subject>/sequence/``::

    manifest.json   version, source video (name, sha256), fps, size, frame range, camera,
                    body model, per-frame validity and reprojection errors, training crop
    fitted.npz      smplx-named parameters with a leading frame axis T:
                      betas (1, n_betas), global_orient (T, 3), body_pose (T, J_body, 3),
                      left_hand_pose / right_hand_pose (T, 15, 3), jaw_pose (T, 3),
                      expression (T, n_expr), transl (T, 3)
                    plus keypoints ``kp_*`` (see capture.keypoints.Keypoints2D), ``valid`` (T,),
                    ``face_local`` (T, 478, 3) face-mesh landmarks in head-local metres
    masks.npz       (T, H, W) uint8 person masks 0..255, in chunks of frames (io.masks; older
                    captures: one ``masks`` array), read frame by frame through
                    :class:`~ram_avatar.io.masks.PersonMasks`
    source.mp4      copy of the captured video (the subject folder is self-contained)
    overlay.mp4     fitted mesh drawn over the frames, for judging the fit

Loading validates every key and shape and raises :class:`SequenceFormatError` with what was
wrong, so a hand-edited or truncated file never reaches training.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ram_avatar.body.base import PARAM_NAMES, BodyParams
from ram_avatar.io.keypoints import Keypoints2D
from ram_avatar.io.masks import PersonMasks, write_person_masks
from ram_avatar.errors import SequenceFormatError
from ram_avatar.utils import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

SEQUENCE_VERSION = 1
#: a subject's capture folder (``<subject>/sequence``); the file names below live in it
SEQUENCE_DIR = "sequence"
MANIFEST = "manifest.json"
FITTED = "fitted.npz"
MASKS = "masks.npz"
SOURCE = "source.mp4"
OVERLAY = "overlay.mp4"


@dataclass
class FittedSequence:
    """A captured subject: per-frame body parameters, keypoints, masks and metadata.

    Attributes:
        params: BodyParams, betas (1, n_betas), other fields with batch T.
        keypoints: Keypoints2D of the T frames.
        valid: (T,) bool, frames whose fit is trusted (used for training).
        face_local: (T, 478, 3) face landmarks in the head's local frame, metres.
        manifest: the JSON manifest as a dict (fps, width, height, camera K, body_model, ...).
        root: the ``sequence`` directory this was loaded from (None if not saved yet).
    """

    params: BodyParams
    keypoints: Keypoints2D
    valid: np.ndarray
    face_local: np.ndarray
    manifest: dict = field(default_factory=dict)
    root: Path | None = None

    @property
    def num_frames(self) -> int:
        return int(self.params.global_orient.shape[0])

    @property
    def K(self) -> np.ndarray:
        """(3, 3) camera intrinsics in pixels."""
        return np.asarray(self.manifest["camera"]["K"], dtype=np.float64)

    @property
    def fps(self) -> float:
        return float(self.manifest["fps"])

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of the frames in pixels."""
        return int(self.manifest["width"]), int(self.manifest["height"])

    def source_video(self) -> Path:
        assert self.root is not None
        return self.root / SOURCE

    def load_masks(self) -> PersonMasks:
        """The (T, H, W) uint8 person masks, read frame by frame on access (a long video's
        masks do not fit in memory: :mod:`ram_avatar.io.masks`). Close it when done.

        Raises:
            SequenceFormatError: masks.npz missing, unreadable or of the wrong shape.
        """
        assert self.root is not None
        path = self.root / MASKS
        try:
            masks = PersonMasks(path)
            shape = masks.shape
        except Exception as e:  # noqa: BLE001
            raise SequenceFormatError(f"cannot read person masks {path}: {e}; re-run ram-avatar capture") from e
        W, H = self.size
        if shape != (self.num_frames, H, W):
            masks.close()
            raise SequenceFormatError(f"{path}: masks have shape {shape}, expected {(self.num_frames, H, W)}")
        return masks

    def save(self, root: str | Path, masks: np.ndarray | PersonMasks | None = None) -> None:
        """Write fitted.npz, manifest.json (and masks.npz when given: a (T, H, W) uint8 array or
        a :class:`~ram_avatar.io.masks.PersonMasks`, written in chunks) atomically into ``root``."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        arrays = {k: v.astype(np.float32) for k, v in self.params.as_numpy().items()}
        arrays.update(self.keypoints.to_npz_dict())
        arrays["valid"] = self.valid.astype(bool)
        arrays["face_local"] = self.face_local.astype(np.float32)
        if masks is not None:
            with atomic_path(root / MASKS) as tmp:
                write_person_masks(tmp, masks)
        with atomic_path(root / FITTED) as tmp:
            np.savez(tmp, **arrays)
        manifest = dict(self.manifest)
        manifest["version"] = SEQUENCE_VERSION
        atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1))
        self.root = root
        self.manifest = manifest


def _check_shape(name: str, arr: np.ndarray, shape: tuple, path: Path) -> None:
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
        raise SequenceFormatError(
            f"{path}: {name!r} has shape {arr.shape}, expected {tuple('*' if s is None else s for s in shape)}; "
            "the file is damaged or not a FittedSequence: re-run ram-avatar capture")


def sequence_root(subject_or_sequence_dir: str | Path) -> Path:
    """The capture folder of a subject folder (``<subject>/sequence`` when it exists), else the
    path itself (taken as the capture folder)."""
    p = Path(subject_or_sequence_dir)
    return p / SEQUENCE_DIR if (p / SEQUENCE_DIR).is_dir() else p


def load_sequence(subject_or_sequence_dir: str | Path) -> FittedSequence:
    """Load and validate a FittedSequence.

    Args:
        subject_or_sequence_dir: the subject directory (containing ``sequence/``) or the
            ``sequence`` directory itself.
    Raises:
        SequenceFormatError: missing files, unsupported version, missing keys, wrong shapes or
            non-finite values; the message names the problem and says to re-run capture.
    """
    root = sequence_root(subject_or_sequence_dir)
    mpath, fpath = root / MANIFEST, root / FITTED
    if not mpath.is_file() or not fpath.is_file():
        raise SequenceFormatError(
            f"no FittedSequence in {subject_or_sequence_dir}: expected {mpath} and {fpath}. "
            "Run `ram-avatar capture VIDEO -o SUBJECT_DIR` first.")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise SequenceFormatError(f"{mpath} is not valid JSON ({e}); re-run ram-avatar capture") from e
    version = manifest.get("version")
    if version != SEQUENCE_VERSION:
        raise SequenceFormatError(f"{mpath}: sequence version {version!r} is not supported "
                                  f"(this release reads version {SEQUENCE_VERSION}); re-run capture")
    for key in ("fps", "width", "height", "camera", "body_model", "frames"):
        if key not in manifest:
            raise SequenceFormatError(f"{mpath}: manifest lacks {key!r}; re-run ram-avatar capture")
    try:
        data = dict(np.load(fpath))
    except Exception as e:  # noqa: BLE001
        raise SequenceFormatError(f"cannot read {fpath}: {e}; re-run ram-avatar capture") from e
    missing = [k for k in PARAM_NAMES + ["valid", "face_local"] if k not in data]
    if missing:
        raise SequenceFormatError(f"{fpath} lacks keys {missing}; re-run ram-avatar capture")
    T = int(manifest["frames"])
    bm = manifest["body_model"]
    nb, jb, ne = int(bm["num_betas"]), int(bm["num_body_joints"]), int(bm.get("num_expression", 0))
    shapes = {"betas": (1, nb), "global_orient": (T, 3), "body_pose": (T, jb, 3),
              "left_hand_pose": (T, 15, 3), "right_hand_pose": (T, 15, 3), "jaw_pose": (T, 3),
              "expression": (T, ne), "transl": (T, 3), "valid": (T,), "face_local": (T, 478, 3)}
    for k, s in shapes.items():
        _check_shape(k, data[k], s, fpath)
        if data[k].dtype != bool and not np.isfinite(data[k]).all():
            raise SequenceFormatError(f"{fpath}: {k!r} contains NaN or Inf; re-run ram-avatar capture")
    kp = Keypoints2D.from_npz_dict(data)
    if kp.num_frames != T:
        raise SequenceFormatError(f"{fpath}: keypoints have {kp.num_frames} frames, manifest says {T}")
    K = np.asarray(manifest["camera"].get("K"))
    if K.shape != (3, 3):
        raise SequenceFormatError(f"{mpath}: camera K must be 3x3, got shape {K.shape}")
    params = BodyParams.from_numpy({k: data[k] for k in PARAM_NAMES})
    return FittedSequence(params=params, keypoints=kp, valid=data["valid"].astype(bool),
                          face_local=data["face_local"], manifest=manifest, root=root)
