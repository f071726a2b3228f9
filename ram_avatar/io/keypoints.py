"""The 2D keypoint record of a capture (:class:`Keypoints2D`), kept in the I/O layer because
sequences store it (:mod:`ram_avatar.io.sequence`); detection lives in
:mod:`ram_avatar.capture.keypoints`, which re-exports these names.

2D keypoints (MediaPipe Holistic); the person masks are stored beside them (``masks.npz``).

Per frame we keep, in pixels of the original frame (x right, y down, origin at the top-left
corner of the top-left pixel, as MediaPipe's normalised coordinates times W and H):

- ``pose``  (T, 33, 3): [x, y, visibility in 0..1], MediaPipe BlazePose-33 order
  (11/12 left/right shoulder, 15/16 left/right wrist, 23/24 left/right hip, ...).
- ``left_hand`` / ``right_hand`` (T, 21, 3): [x, y, conf], MediaPipe hand-21 order (0 = wrist).
  MediaPipe gives no per-landmark confidence for hands: conf is 1.0 for a detected hand.
- ``face`` (T, 478, 3): [x, y, z] face mesh with irises (refine_face_landmarks=True); z is
  MediaPipe's relative depth times the image width W, i.e. pixel units (smaller = nearer).
- ``pose_world`` (T, 33, 3): MediaPipe's ``pose_world_landmarks``, metres, origin at the
  midpoint of the hips, axes those of the camera (x right, y down, z away from the camera);
  all zeros where the detector gave none (older files, or ``pose_valid`` False).

Left/right are the SUBJECT's own (anatomical) sides. Verified on all 412 frames of
examples/taiji.mp4 (a subject facing the camera: pose landmark 11, the left shoulder, is on
the image's right in every frame): each of the 168 wrists of Holistic's
``left_hand_landmarks`` is nearer to pose landmark 15 (left wrist) than to 16 (right wrist),
median 0.04 torso heights from 15 vs 0.85 from 16, and each of the 160 wrists of
``right_hand_landmarks`` is nearer to landmark 16 (median 0.04 vs 0.84). So Holistic's
outputs are used as is, ``left_hand_landmarks`` -> :attr:`Keypoints2D.left_hand`, with no
mirroring (unlike the stand-alone Hands solution, whose "handedness" label assumes a mirrored
selfie image).

Invalid entries (nothing detected in that frame) are all zeros with the matching ``*_valid``
flag False; arrays never hold NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from ram_avatar.errors import SequenceFormatError

__all__ = ["Keypoints2D", "POSE_LEFT_SHOULDER", "POSE_RIGHT_SHOULDER", "POSE_LEFT_WRIST",
           "POSE_RIGHT_WRIST", "POSE_LEFT_HIP", "POSE_RIGHT_HIP", "NUM_POSE", "NUM_HAND", "NUM_FACE"]

NUM_POSE, NUM_HAND, NUM_FACE = 33, 21, 478
POSE_LEFT_SHOULDER, POSE_RIGHT_SHOULDER = 11, 12
POSE_LEFT_WRIST, POSE_RIGHT_WRIST = 15, 16
POSE_LEFT_HIP, POSE_RIGHT_HIP = 23, 24

_ARRAYS = {"pose": NUM_POSE, "left_hand": NUM_HAND, "right_hand": NUM_HAND, "face": NUM_FACE}
_FLAGS = ("pose_valid", "left_hand_valid", "right_hand_valid", "face_valid")
_OPTIONAL = ("pose_world",)   # files written before it was kept load with zeros


@dataclass
class Keypoints2D:
    """Per-frame 2D keypoints of one subject, in pixels of the original frame.

    Attributes:
        pose: (T, 33, 3) float32 [x px, y px, visibility 0..1].
        left_hand: (T, 21, 3) float32 [x px, y px, conf] of the subject's own left hand.
        right_hand: (T, 21, 3) float32 [x px, y px, conf] of the subject's own right hand.
        face: (T, 478, 3) float32 [x px, y px, z px] (z = MediaPipe z times image width).
        pose_valid, left_hand_valid, right_hand_valid, face_valid: (T,) bool, True where the
            part was detected; the matching rows are all zero where False.
        pose_world: (T, 33, 3) float32 metres, MediaPipe's 3D pose (module docstring), or
            None on construction for all zeros (no 3D pose; :attr:`has_world` is False).

    Arrays are converted to float32/bool on construction; wrong shapes or non-finite values
    raise ValueError.
    """

    pose: np.ndarray
    left_hand: np.ndarray
    right_hand: np.ndarray
    face: np.ndarray
    pose_valid: np.ndarray
    left_hand_valid: np.ndarray
    right_hand_valid: np.ndarray
    face_valid: np.ndarray
    pose_world: np.ndarray | None = None

    def __post_init__(self) -> None:
        t = None
        for name, n in _ARRAYS.items():
            arr = np.asarray(getattr(self, name), dtype=np.float32)
            if arr.ndim != 3 or arr.shape[1:] != (n, 3):
                raise ValueError(f"Keypoints2D.{name} must be (T, {n}, 3), got {arr.shape}")
            if not np.isfinite(arr).all():
                raise ValueError(f"Keypoints2D.{name} contains NaN/Inf; use zeros and a False "
                                 f"validity flag for missing detections")
            t = arr.shape[0] if t is None else t
            if arr.shape[0] != t:
                raise ValueError(f"Keypoints2D arrays disagree on T: {name} has {arr.shape[0]}, "
                                 f"expected {t}")
            setattr(self, name, arr)
        for name in _FLAGS:
            flag = np.asarray(getattr(self, name)).astype(bool)
            if flag.shape != (t,):
                raise ValueError(f"Keypoints2D.{name} must be ({t},), got {flag.shape}")
            setattr(self, name, flag)
        world = (np.zeros((t, NUM_POSE, 3), np.float32) if self.pose_world is None
                 else np.asarray(self.pose_world, dtype=np.float32))
        if world.shape != (t, NUM_POSE, 3):
            raise ValueError(f"Keypoints2D.pose_world must be ({t}, {NUM_POSE}, 3), got {world.shape}")
        if not np.isfinite(world).all():
            raise ValueError("Keypoints2D.pose_world contains NaN/Inf; use zeros where no 3D pose "
                             "was detected")
        self.pose_world = world

    @property
    def has_world(self) -> np.ndarray:
        """(T,) bool: frames with a detected pose and a 3D pose (:attr:`pose_world`)."""
        return self.pose_valid & (np.abs(self.pose_world).sum(axis=(1, 2)) > 0)

    @property
    def num_frames(self) -> int:
        """T, the number of frames."""
        return int(self.pose.shape[0])

    def __len__(self) -> int:
        return self.num_frames

    @classmethod
    def empty(cls, num_frames: int) -> "Keypoints2D":
        """All-zero keypoints for ``num_frames`` frames with every validity flag False."""
        arrays = {name: np.zeros((num_frames, n, 3), np.float32) for name, n in _ARRAYS.items()}
        return cls(**arrays, **{name: np.zeros(num_frames, bool) for name in _FLAGS})

    def subset(self, index) -> "Keypoints2D":
        """Frames selected by ``index`` (a slice, an integer array or a boolean (T,) mask)."""
        return Keypoints2D(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to_npz_dict(self, prefix: str = "kp_") -> dict[str, np.ndarray]:
        """Flat ``{prefix + field: array}`` dict, e.g. for ``np.savez`` alongside other data."""
        return {prefix + f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_npz_dict(cls, data, prefix: str = "kp_") -> "Keypoints2D":
        """Inverse of :meth:`to_npz_dict`; ``data`` is a mapping such as an ``np.load`` result.

        Raises:
            SequenceFormatError: a key is missing or an array has the wrong shape.
        """
        missing = [prefix + f.name for f in fields(cls)
                   if prefix + f.name not in data and f.name not in _OPTIONAL]
        if missing:
            raise SequenceFormatError(
                f"keypoint data lacks {', '.join(missing)}; the file was not written by this "
                f"version of ram-avatar (re-run `ram-avatar capture`).")
        try:
            return cls(**{f.name: np.asarray(data[prefix + f.name]) for f in fields(cls)
                          if prefix + f.name in data})
        except ValueError as e:
            raise SequenceFormatError(
                f"invalid keypoint data: {e}; re-run `ram-avatar capture`.") from e
