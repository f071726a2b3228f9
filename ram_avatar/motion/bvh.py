"""BVH motion-capture reader with vectorised forward kinematics (RAM-Avatar Sec. 3.3 data).

The motion prior of Sec. 3.3 is trained on large mocap corpora. This module reads Biovision
Hierarchy files (the Bandai-Namco-Research-Motiondataset shipped in ``../shared/data/mocap``,
CMU BVH conversions, exports of most DCC tools) into numpy arrays. It is a small dedicated
parser rather than a dependency: BVH is a simple text format, and a vectorised reader
(``np.fromstring`` on the MOTION block, one batched Euler->matrix conversion per joint, one
matrix product per joint for FK over all frames) is ~100x faster than per-frame object parsers,
which matters for the ~417k frames of the shared corpus.

Conventions of the returned :class:`BVHMotion`:

* joints are the file's ``ROOT``/``JOINT`` entries in file order (parents before children);
  ``End Site`` entries are kept separately (:attr:`BVHMotion.end_sites`);
* Euler channels are applied in the order listed in the file (``Zrotation Xrotation
  Yrotation`` means ``R = Rz @ Rx @ Ry``, column vectors, degrees), the standard BVH reading;
* a joint's local translation is its ``OFFSET``, or its position channels when it has them;
* lengths are multiplied by :attr:`BVHMotion.scale` to give metres (auto-detected from the
  skeleton's height unless given);
* the world frame is the file's (usually y up); no axis change happens here (retargeting does
  that, :mod:`ram_avatar.motion.retarget`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ram_avatar.errors import RamAvatarError

log = logging.getLogger(__name__)


class MocapFormatError(RamAvatarError):
    """A mocap file (BVH / AMASS npz) is missing, malformed or of an unsupported layout."""


_AXES = {"X": 0, "Y": 1, "Z": 2}
_TOKEN = re.compile(r"\S+")


@dataclass
class BVHMotion:
    """A parsed BVH clip.

    Attributes:
        path: source file (or ``None``).
        names: (J,) joint names in file order (parents before children).
        parents: (J,) int, parent index per joint, -1 for the root.
        offsets: (J, 3) rest offsets from the parent joint, metres (after :attr:`scale`).
        channels: per joint, the list of channel names (``Xposition``, ``Zrotation``, ...).
        rotations: (T, J, 3, 3) float64 local rotation matrices (parent-from-joint).
        translations: (T, J, 3) float64 local translations in metres (offset or position
            channels).
        end_sites: joint name -> (3,) End Site offset in metres (joints that have one).
        frame_time: seconds per frame.
        scale: the factor applied to file lengths to get metres.
    """

    path: Path | None
    names: list[str]
    parents: np.ndarray
    offsets: np.ndarray
    channels: list[list[str]]
    rotations: np.ndarray
    translations: np.ndarray
    end_sites: dict[str, np.ndarray] = field(default_factory=dict)
    frame_time: float = 1 / 30
    scale: float = 1.0

    @property
    def num_frames(self) -> int:
        return int(self.rotations.shape[0])

    @property
    def num_joints(self) -> int:
        return len(self.names)

    @property
    def fps(self) -> float:
        return 1.0 / self.frame_time

    def index(self, name: str) -> int:
        """Index of joint ``name``; raises :class:`MocapFormatError` when absent."""
        try:
            return self.names.index(name)
        except ValueError as e:
            raise MocapFormatError(f"{self.path}: joint {name!r} not in skeleton {self.names}") from e

    def world(self) -> tuple[np.ndarray, np.ndarray]:
        """Forward kinematics over all frames.

        Returns:
            (rot (T, J, 3, 3) world-from-joint rotations, pos (T, J, 3) joint positions in
            metres), in the file's world axes.
        """
        T, J = self.num_frames, self.num_joints
        rot = np.empty((T, J, 3, 3))
        pos = np.empty((T, J, 3))
        for j, p in enumerate(self.parents):
            if p < 0:
                rot[:, j] = self.rotations[:, j]
                pos[:, j] = self.translations[:, j]
            else:
                rot[:, j] = rot[:, p] @ self.rotations[:, j]
                pos[:, j] = pos[:, p] + np.einsum("tij,tj->ti", rot[:, p], self.translations[:, j])
        return rot, pos

    def subsample(self, step: int) -> "BVHMotion":
        """Every ``step``-th frame (frame time multiplied by ``step``)."""
        return BVHMotion(self.path, self.names, self.parents, self.offsets, self.channels,
                         self.rotations[::step], self.translations[::step], self.end_sites,
                         self.frame_time * step, self.scale)


def euler_to_matrix(angles_deg: np.ndarray, order: str) -> np.ndarray:
    """Intrinsic Euler angles -> rotation matrices, BVH style.

    Args:
        angles_deg: (..., 3) angles in degrees, one per axis letter of ``order``.
        order: e.g. ``"ZXY"``: ``R = Rz(a0) @ Rx(a1) @ Ry(a2)``.
    Returns:
        (..., 3, 3) float64 rotation matrices.
    """
    a = np.radians(np.asarray(angles_deg, dtype=np.float64))
    out = np.broadcast_to(np.eye(3), a.shape[:-1] + (3, 3)).copy()
    for k, axis in enumerate(order):
        c, s = np.cos(a[..., k]), np.sin(a[..., k])
        R = np.zeros(a.shape[:-1] + (3, 3))
        i = _AXES[axis]
        j, l = (i + 1) % 3, (i + 2) % 3
        R[..., i, i] = 1.0
        R[..., j, j] = c
        R[..., l, l] = c
        R[..., j, l] = -s
        R[..., l, j] = s
        out = out @ R
    return out


def _guess_scale(extent: float) -> float:
    """Metres per file unit from the largest extent of the first frame's joints (file units):
    a person spans 1-2.5 m in at least one axis; candidates are m, cm, mm and inches."""
    for unit in (1.0, 0.01, 0.001, 0.0254):
        if 1.0 <= extent * unit <= 2.5:
            return unit
    log.warning("cannot tell the BVH length unit from a %.3g extent: assuming centimetres", extent)
    return 0.01


def read_bvh(path: str | Path, scale: float | None = None, max_frames: int | None = None) -> BVHMotion:
    """Read a BVH file.

    Args:
        path: ``.bvh`` file.
        scale: metres per file unit; ``None`` guesses among m / cm / mm / inches from the
            skeleton's size (Bandai-Namco and most BVH exports are centimetres).
        max_frames: read at most this many frames (tests, previews).
    Returns:
        :class:`BVHMotion` with T frames.
    Raises:
        MocapFormatError: missing file, malformed hierarchy, channel count mismatch.
    """
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise MocapFormatError(f"cannot read BVH file {path}: {e}") from e
    head, sep, motion = text.partition("MOTION")
    if not sep or "HIERARCHY" not in head:
        raise MocapFormatError(f"{path} is not a BVH file (no HIERARCHY/MOTION sections)")
    toks = _TOKEN.findall(head)
    names: list[str] = []
    parents: list[int] = []
    offsets: list[list[float]] = []
    channels: list[list[str]] = []
    end_sites: dict[str, list[float]] = {}
    stack: list[int] = []
    pending_end = False
    i = toks.index("HIERARCHY") + 1
    try:
        while i < len(toks):
            t = toks[i]
            if t in ("ROOT", "JOINT"):
                names.append(toks[i + 1])
                parents.append(stack[-1] if stack else -1)
                offsets.append([0.0, 0.0, 0.0])
                channels.append([])
                i += 2
            elif t == "End":
                pending_end = True
                i += 2
            elif t == "{":
                stack.append(-2 if pending_end else len(names) - 1)
                i += 1
            elif t == "}":
                stack.pop()
                pending_end = False
                i += 1
            elif t == "OFFSET":
                v = [float(x) for x in toks[i + 1:i + 4]]
                if stack and stack[-1] == -2:
                    end_sites[names[_last_open(stack)]] = v
                else:
                    offsets[-1] = v
                i += 4
            elif t == "CHANNELS":
                n = int(toks[i + 1])
                channels[-1] = toks[i + 2:i + 2 + n]
                i += 2 + n
            else:
                i += 1
    except (ValueError, IndexError) as e:
        raise MocapFormatError(f"{path}: malformed BVH hierarchy near token {i}: {e}") from e
    if not names:
        raise MocapFormatError(f"{path}: BVH hierarchy has no joints")
    m = re.search(r"Frames:\s*(\d+)\s*Frame Time:\s*([0-9.eE+-]+)", motion)
    if not m:
        raise MocapFormatError(f"{path}: BVH MOTION section lacks 'Frames:' / 'Frame Time:'")
    n_frames, frame_time = int(m.group(1)), float(m.group(2))
    body = motion[m.end():]
    n_ch = sum(len(c) for c in channels)
    data = np.array(body.split(), dtype=np.float64)
    if n_ch == 0 or data.size < n_ch:
        raise MocapFormatError(f"{path}: no motion data")
    if data.size % n_ch:
        log.warning("%s: %d trailing values ignored", path, data.size % n_ch)
    data = data[: data.size // n_ch * n_ch].reshape(-1, n_ch)
    if data.shape[0] != n_frames:
        log.debug("%s: header says %d frames, found %d", path, n_frames, data.shape[0])
    if max_frames is not None:
        data = data[:max_frames]
    if frame_time <= 0:
        raise MocapFormatError(f"{path}: Frame Time must be positive, got {frame_time}")

    par = np.array(parents)
    off = np.array(offsets, dtype=np.float64)
    T, J = data.shape[0], len(names)
    rots = np.empty((T, J, 3, 3))
    trans = np.broadcast_to(off, (T, J, 3)).copy()
    col = 0
    for j, ch in enumerate(channels):
        rot_axes = "".join(c[0].upper() for c in ch if c.lower().endswith("rotation"))
        rot_cols = [col + k for k, c in enumerate(ch) if c.lower().endswith("rotation")]
        pos_cols = {c[0].upper(): col + k for k, c in enumerate(ch) if c.lower().endswith("position")}
        if rot_axes:
            rots[:, j] = euler_to_matrix(data[:, rot_cols], rot_axes)
        else:
            rots[:, j] = np.eye(3)
        if len(pos_cols) == 3:
            trans[:, j] = data[:, [pos_cols["X"], pos_cols["Y"], pos_cols["Z"]]]
        col += len(ch)
    motion_ = BVHMotion(path=path, names=names, parents=par, offsets=off, channels=channels,
                        rotations=rots, translations=trans)
    if scale is None:
        p0 = motion_.subsample(max(T, 1))  # first frame only
        _, pos0 = p0.world()
        body = pos0[0]
        if int((par == 0).sum()) == 1 and J > 2:  # a ground-level root above the hips: skip it
            body = body[1:]
        scale = _guess_scale(float(np.ptp(body, axis=0).max()))
    return BVHMotion(path=path, names=names, parents=par, offsets=off * scale, channels=channels,
                     rotations=rots, translations=trans * scale,
                     end_sites={k: np.array(v) * scale for k, v in end_sites.items()},
                     frame_time=frame_time, scale=float(scale))


def _last_open(stack: list[int]) -> int:
    for s in reversed(stack):
        if s >= 0:
            return s
    raise ValueError("End Site outside a joint")
