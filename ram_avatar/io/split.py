"""The held-out split of a training run: decided once by ``ram-avatar train``, read by everything.

Two ways to hold frames out of training (issue 10, "evaluation that tests generalisation"):

- ``tail``: the last ``val_fraction`` of the captured frames (the temporal split the paper
  evaluates "unseen poses" with, Sec. 4.2; the studio's original rule). No guard band.
- ``segment``: the contiguous block of ``round(T * val_fraction)`` frames whose poses lie
  farthest from the rest of the capture. For a block ``[s, s+n)`` with a guard band of ``g``
  frames on each side, every valid frame ``t`` of the block gets its nearest-neighbour pose
  distance to the valid frames *outside* ``[s-g, s+n+g)``; the block's score is the mean of these
  distances and the block with the largest score is held out. Training excludes the block and
  its guard band (temporal neighbours of held-out frames look almost the same, so training on
  them would leak the held-out poses).

Pose distance (:func:`pose_joints`, :func:`pairwise_pose_distance`): the body model's joints for
the fitted parameters (body and head pose landmarks plus wrist and three finger tips per hand,
29 points), made root-relative by subtracting the hip midpoint but keeping the global rotation
in the camera frame (a person seen from behind is a different appearance); the distance of two
frames is the mean over joints of the Euclidean distance, metres.

Only valid frames (``FittedSequence.valid``) are ever trained on or evaluated.

A :class:`Split` is stored as ``runs/<run>/split.json`` (:meth:`Split.to_json`): that file is the
run's manifest of the split (the sequence manifest is never rewritten). Runs written by older
versions have either no ``split.json`` or one with only ``train``/``val`` lists; they are read as
the ``tail`` split (:func:`read_split`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ram_avatar.errors import RamAvatarError

log = logging.getLogger(__name__)

#: split methods (``train --holdout``, ``evaluate --split``)
SPLIT_METHODS = ("tail", "segment")
#: version of the split.json layout written by :meth:`Split.to_json`
SPLIT_VERSION = 2
#: guard band of the ``segment`` split, seconds on each side of the block (at most one block)
GUARD_SECONDS = 0.5
#: pose landmarks (MediaPipe pose-33 indices) of :func:`pose_joints`: shoulders, elbows, wrists,
#: hips, knees, ankles, heels, toes (body.base.BODY_LANDMARKS) and nose, eyes, ears (HEAD_LANDMARKS)
_HIPS = (23, 24)
#: hand landmarks (MediaPipe hand-21 indices) of :func:`pose_joints`: wrist, thumb/index/pinky tips
_HAND_POINTS = (0, 4, 8, 20)


class SplitError(RamAvatarError):
    """A run's split is damaged, does not match the subject, or conflicts with what was asked."""


@dataclass
class Split:
    """Held-out split of a capture.

    Attributes:
        method: ``tail`` or ``segment`` (module docstring).
        val_fraction: fraction of the T frames held out (before removing invalid frames).
        train: (N_train,) int64 frame indices trained on (valid frames only, ascending).
        val: (N_val,) int64 held-out frame indices (valid frames only, ascending).
        guard: frames excluded from training on each side of the held-out block (``segment``;
            0 for ``tail``).
        num_frames: T, frames of the sequence the split was decided on (None: unknown, old run).
        info: method details, e.g. for ``segment``: ``block`` [start, end), ``nn_distance_m``
            (the block's score), ``candidates_median_nn_distance_m``.
    """

    method: str
    val_fraction: float
    train: np.ndarray
    val: np.ndarray
    guard: int = 0
    num_frames: int | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.train = np.asarray(self.train, dtype=np.int64).reshape(-1)
        self.val = np.asarray(self.val, dtype=np.int64).reshape(-1)

    def to_json(self) -> dict:
        """JSON-able dict (the layout of ``split.json``)."""
        return {"version": SPLIT_VERSION, "method": self.method, "val_fraction": self.val_fraction,
                "guard": int(self.guard), "num_frames": self.num_frames,
                "train": [int(v) for v in self.train], "val": [int(v) for v in self.val],
                **({"info": self.info} if self.info else {})}

    @classmethod
    def from_json(cls, data: dict) -> "Split":
        """Inverse of :meth:`to_json`.

        Raises:
            SplitError: missing keys or an unknown method.
        """
        try:
            method = str(data["method"])
            split = cls(method=method, val_fraction=float(data["val_fraction"]),
                        train=data["train"], val=data["val"], guard=int(data.get("guard", 0)),
                        num_frames=None if data.get("num_frames") is None else int(data["num_frames"]),
                        info=dict(data.get("info") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise SplitError(f"split record is damaged ({e!r})") from e
        if method not in SPLIT_METHODS:
            raise SplitError(f"unknown split method {method!r} (known: {', '.join(SPLIT_METHODS)})")
        return split

    def write(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path`` atomically; returns the path."""
        from ram_avatar.utils import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_json()  # one key per line, lists inline
        atomic_write_text(path, "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}"
                                                    for k, v in data.items()) + "\n}\n")
        return path

    def check_sequence(self, num_frames: int, where: str = "the run") -> None:
        """Raise :class:`SplitError` when the split does not fit a sequence of ``num_frames``."""
        if self.num_frames is not None and self.num_frames != num_frames:
            raise SplitError(f"{where}'s split was decided on {self.num_frames} frames but the subject "
                             f"now has {num_frames}: the subject was re-captured; train a new run")
        for name, idx in (("train", self.train), ("val", self.val)):
            if len(idx) and (idx.min() < 0 or idx.max() >= num_frames):
                raise SplitError(f"{where}'s split has {name} frames outside 0..{num_frames - 1}: "
                                 "the subject was re-captured; train a new run")

    def describe(self) -> str:
        """One line for logs."""
        extra = (f", frames {self.info['block'][0]}-{self.info['block'][1] - 1} held out, guard "
                 f"{self.guard}") if "block" in self.info else ""
        return (f"{self.method} split (val_fraction {self.val_fraction:g}): {len(self.train)} "
                f"training frames, {len(self.val)} held-out frames{extra}")


def tail_split(valid: np.ndarray, val_fraction: float = 0.1) -> Split:
    """The ``tail`` split: hold out the last ``val_fraction`` of the T frames (at least one frame
    when ``val_fraction > 0``); only valid frames are kept. The one definition of the rule:
    training, the texture bake's default and the motion aligner read it from here.

    Args:
        valid: (T,) bool frame validity.
    """
    valid = np.asarray(valid, bool)
    T = len(valid)
    n_val = max(1, int(round(T * val_fraction))) if val_fraction > 0 else 0
    cut = T - n_val
    frames = np.arange(T)
    return Split("tail", float(val_fraction), frames[:cut][valid[:cut]], frames[cut:][valid[cut:]],
                 guard=0, num_frames=T)


def pairwise_pose_distance(joints: np.ndarray | torch.Tensor, chunk: int = 64) -> np.ndarray:
    """Mean per-joint Euclidean distance between every pair of frames.

    Args:
        joints: (T, J, 3) joint positions, metres.
    Returns:
        (T, T) float64 distances, metres.
    """
    x = torch.as_tensor(np.asarray(joints), dtype=torch.float64)
    T = x.shape[0]
    out = torch.empty(T, T, dtype=torch.float64)
    for s in range(0, T, chunk):
        out[s:s + chunk] = (x[s:s + chunk, None] - x[None]).norm(dim=-1).mean(-1)
    return out.numpy()


def segment_scores(dist: np.ndarray, valid: np.ndarray, block: int, guard: int) -> np.ndarray:
    """Score of every candidate held-out block (module docstring), vectorised.

    Args:
        dist: (T, T) pose distances between frames (:func:`pairwise_pose_distance`).
        valid: (T,) bool.
        block: n, frames per block (1 <= n <= T).
        guard: g, frames on each side of a block that count neither as held out nor as "rest".
    Returns:
        (T - n + 1,) mean nearest-neighbour distance from the block's valid frames to the valid
        frames outside ``[s-g, s+n+g)``; ``-inf`` for blocks without a valid frame, ``inf`` for
        blocks that leave no valid frame outside.
    """
    valid = np.asarray(valid, bool)
    T = len(valid)
    d = np.where(valid[None, :], np.asarray(dist, np.float64), np.inf)
    # prefix[t, a] = min_{u < a} d[t, u]; suffix[t, b] = min_{u >= b} d[t, u]  (a, b in 0..T)
    prefix = np.concatenate([np.full((T, 1), np.inf), np.minimum.accumulate(d, axis=1)], axis=1)
    suffix = np.concatenate([np.minimum.accumulate(d[:, ::-1], axis=1)[:, ::-1],
                             np.full((T, 1), np.inf)], axis=1)
    starts = np.arange(T - block + 1)
    lo = np.maximum(starts - guard, 0)
    hi = np.minimum(starts + block + guard, T)
    nn = np.minimum(prefix[:, lo], suffix[:, hi])                 # (T, S): frame t vs rest of block s
    t = np.arange(T)[:, None]
    inside = (t >= starts[None]) & (t < starts[None] + block) & valid[:, None]
    count = inside.sum(0)
    with np.errstate(invalid="ignore"):
        total = np.where(inside, nn, 0.0).sum(0)
        score = total / np.maximum(count, 1)
    return np.where(count > 0, score, -np.inf)


def segment_block(joints: np.ndarray | torch.Tensor, valid: np.ndarray, val_fraction: float,
                  guard: int) -> tuple[int, int, np.ndarray]:
    """The held-out block of the ``segment`` split.

    Args:
        joints: (T, J, 3) root-relative joint positions (metres), e.g. :func:`pose_joints`.
        valid: (T,) bool.
        val_fraction: held-out fraction; n = max(1, round(T * val_fraction)).
        guard: frames on each side excluded from the "rest" (and from training).
    Returns:
        (start, end, scores): block ``[start, end)`` and the (T - n + 1,) candidate scores
        (metres, :func:`segment_scores`). Ties go to the earliest block.
    Raises:
        SplitError: no valid frame, or nothing left to train on.
    """
    valid = np.asarray(valid, bool)
    T = len(valid)
    n = max(1, int(round(T * val_fraction)))
    if not valid.any() or n >= T:
        raise SplitError(f"cannot hold out {n} of {T} frames ({int(valid.sum())} valid): capture a "
                         "longer video or lower val_fraction")
    scores = segment_scores(pairwise_pose_distance(joints), valid, n, guard)
    usable = np.isfinite(scores)  # a valid frame inside and at least one valid frame outside
    if not usable.any():
        raise SplitError(f"holding out {n} of {T} frames with a guard band of {guard} leaves no "
                         "valid training frame: capture a longer video or lower val_fraction")
    start = int(np.argmax(np.where(usable, scores, -np.inf)))
    return start, start + n, scores


@torch.no_grad()
def pose_joints(seq, body=None, chunk: int = 256) -> np.ndarray:
    """Root-relative joint positions of every frame of a capture, for pose distances.

    Args:
        seq: :class:`~ram_avatar.io.sequence.FittedSequence`.
        body: its body model (default: loaded from the sequence manifest).
    Returns:
        (T, 29, 3) float64 metres, camera axes: 16 body + 5 head pose landmarks
        (body.base.BODY_LANDMARKS, HEAD_LANDMARKS) and the wrist, thumb, index and pinky tips
        of each hand, minus the hip midpoint.
    """
    from ram_avatar.body import BODY_LANDMARKS, HEAD_LANDMARKS, load_body_model

    if body is None:
        bm = seq.manifest["body_model"]
        body = load_body_model(bm["name"], model_path=bm.get("model_path"))
    out = []
    for s in range(0, seq.num_frames, chunk):
        p = seq.params.index(torch.arange(s, min(seq.num_frames, s + chunk))).expand_betas()
        o = body(p.to(body.device), return_vertices=False)
        lm, hands = o.pose_landmarks.double().cpu(), o.hand_landmarks.double().cpu()
        root = lm[:, list(_HIPS)].mean(1, keepdim=True)
        pts = torch.cat([lm[:, list(BODY_LANDMARKS) + list(HEAD_LANDMARKS)],
                         hands[:, :, list(_HAND_POINTS)].flatten(1, 2)], 1)
        out.append(pts - root)
    return torch.cat(out).numpy()


def guard_frames(fps: float, block: int, seconds: float = GUARD_SECONDS) -> int:
    """Guard band of the ``segment`` split: ``seconds`` of video, at most one block length."""
    return int(min(block, max(1, round(seconds * float(fps)))))


def decide_split(seq, method: str = "tail", val_fraction: float = 0.1, body=None,
                 guard: int | None = None) -> Split:
    """Decide the held-out split of a capture (module docstring).

    Args:
        seq: :class:`~ram_avatar.io.sequence.FittedSequence` (T frames).
        method: ``tail`` | ``segment``.
        val_fraction: held-out fraction of the T frames, in [0, 1).
        body: body model for ``segment`` (default: loaded from the manifest).
        guard: ``segment`` guard band in frames (default :func:`guard_frames` of the fps).
    Returns:
        :class:`Split`.
    Raises:
        SplitError: unknown method, fraction outside [0, 1), or nothing left to train on.
    """
    if method not in SPLIT_METHODS:
        raise SplitError(f"unknown split {method!r}: use one of {', '.join(SPLIT_METHODS)}")
    if not 0 <= val_fraction < 1:
        raise SplitError(f"val_fraction must be in [0, 1), got {val_fraction}")
    valid = np.asarray(seq.valid, bool)
    if method == "tail" or val_fraction == 0:
        split = tail_split(valid, val_fraction)
        split.method = method
        return split
    T = len(valid)
    n = max(1, int(round(T * val_fraction)))
    g = guard_frames(seq.fps, n) if guard is None else int(guard)
    joints = pose_joints(seq, body)
    start, end, scores = segment_block(joints, valid, val_fraction, g)
    frames = np.arange(T)
    held = (frames >= start) & (frames < end)
    excluded = (frames >= start - g) & (frames < end + g)
    finite = scores[np.isfinite(scores)]
    info = {"block": [int(start), int(end)], "nn_distance_m": float(scores[start]),
            "candidates_median_nn_distance_m": float(np.median(finite)) if len(finite) else None,
            "joints": int(joints.shape[1])}
    split = Split("segment", float(val_fraction), frames[valid & ~excluded], frames[valid & held],
                  guard=g, num_frames=T, info=info)
    log.info("segment split: frames %d-%d held out (mean nearest-pose distance %.0f mm, median "
             "block %.0f mm), guard %d frames", start, end - 1, info["nn_distance_m"] * 1000,
             (info["candidates_median_nn_distance_m"] or 0) * 1000, g)
    return split


def read_split(path: str | Path, num_frames: int, valid: np.ndarray | None = None,
               fallback_fraction: float = 0.1) -> Split:
    """Read a run's ``split.json``; runs written by older versions still load.

    Args:
        path: ``runs/<run>/split.json``.
        num_frames: T of the subject's sequence (checked against the record).
        valid: (T,) bool validity, needed only when ``path`` does not exist.
        fallback_fraction: ``val_fraction`` of the run's config, for a run without split.json.
    Returns:
        the recorded :class:`Split`; for a split.json with only ``train``/``val`` lists (older
        versions, which always split by ``tail``) those lists as a ``tail`` split; without
        split.json the ``tail`` split of ``fallback_fraction`` (both cases are logged).
    Raises:
        SplitError: damaged file or a split that does not fit the sequence.
    """
    path = Path(path)
    if not path.is_file():
        if valid is None:
            raise SplitError(f"{path} does not exist and no frame validity was given")
        log.info("%s not found (run written by an older version): using the tail split with "
                 "val_fraction %g", path, fallback_fraction)
        return tail_split(valid, fallback_fraction)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SplitError(f"cannot read {path} ({e}); delete it to fall back to the tail split") from e
    if "method" in data:
        split = Split.from_json(data)
    else:
        try:
            split = Split("tail", float(fallback_fraction), data["train"], data["val"], guard=0)
        except (KeyError, TypeError, ValueError) as e:
            raise SplitError(f"{path} is damaged ({e!r}); delete it to fall back to the tail split") from e
        log.info("%s has no method (written by an older version): its train/val lists are the "
                 "tail split", path)
    split.check_sequence(num_frames, str(path.parent))
    return split
