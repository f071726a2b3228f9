"""Per-frame tracking for the live runtime: MediaPipe Holistic in video mode + warm-started fit.

The offline capture (``ram_avatar.capture.pipeline``) sees the whole clip at once: it detects
keypoints on every frame, then fits all frames jointly with temporal terms. Live, a frame is
tracked as soon as it arrives:

* :class:`HolisticTracker` runs MediaPipe Holistic in tracking mode (``static_image_mode=False``,
  ``model_complexity=1``, ``smooth_landmarks=True``, 478-point face mesh) on one RGB frame and
  returns a one-frame :class:`~ram_avatar.capture.keypoints.Keypoints2D` in the same
  conventions as capture (pixels of the frame, the subject's own left/right, hands far from
  the pose wrist dropped).
* :class:`BodyTracker` fits the body model to those keypoints with the capture's fitting energy
  (:func:`ram_avatar.capture.fitting.fit_sequence`, batch 1): the first frame (and the first
  after the person was lost for a while) gets a full fit (global + body + hands stages); every
  other frame starts from the previous frame's parameters and runs a few Adam iterations of the
  full stage (body, orientation, translation and fingers together). The body shape is held
  fixed to the avatar's ``betas`` (:class:`FixedShapeBody`), so the driver is tracked with the
  avatar's bone lengths: live there is no clip to estimate a driver shape from, a per-frame
  shape would jitter, and retargeting then needs no bone-length rescaling.

Imports: ``ram_avatar.capture.keypoints`` (the :class:`Keypoints2D` record and hand filter) and
``ram_avatar.capture.fitting`` (the fitting energy) are pure functions of the capture package,
not its pipeline; the runtime never imports ``capture.pipeline`` or ``training``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch

from ram_avatar.body.base import BodyModel, BodyOutput, BodyParams
from ram_avatar.capture.fitting import FitConfig, fit_sequence
from ram_avatar.capture.keypoints import (NUM_FACE, NUM_HAND, NUM_POSE, Keypoints2D,
                                          filter_hands_by_pose_wrist, landmarks_to_pixels)

log = logging.getLogger(__name__)

__all__ = ["HolisticTracker", "BodyTracker", "FixedShapeBody", "LiveFitConfig"]


class HolisticTracker:
    """MediaPipe Holistic on a live stream, one frame per call (module docstring).

    Args:
        hand_max_torso_fraction: drop hands whose wrist lies further than this many torso
            heights from the pose wrist (as capture does); None keeps Holistic's raw hands.

    Call: ``tracker(frame_rgb (H, W, 3) uint8) -> Keypoints2D`` with T = 1. A frame of a
    different size than the previous one restarts the tracking graph (e.g. a webcam that came
    back in another mode). Use as a context manager or call :meth:`close`.

    Raises:
        ValueError: a frame that is not (H, W, 3) uint8.
    """

    def __init__(self, hand_max_torso_fraction: float | None = 0.5):
        self.hand_max_torso_fraction = hand_max_torso_fraction
        self._holistic = None
        self._size: tuple[int, int] | None = None

    def _open(self) -> None:
        import mediapipe as mp  # heavy import, only when tracking starts

        self.close()
        self._holistic = mp.solutions.holistic.Holistic(
            static_image_mode=False, model_complexity=1, smooth_landmarks=True,
            refine_face_landmarks=True, enable_segmentation=False)

    def reset(self) -> None:
        """Forget the tracking state (next frame is detected from scratch)."""
        self.close()

    def close(self) -> None:
        if self._holistic is not None:
            self._holistic.close()
            self._holistic = None

    def __enter__(self) -> "HolisticTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self, frame: np.ndarray) -> Keypoints2D:
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {frame.shape} {frame.dtype}")
        if self._holistic is None or frame.shape[:2] != self._size:
            self._open()
            self._size = frame.shape[:2]
        h, w = frame.shape[:2]
        res = self._holistic.process(np.ascontiguousarray(frame))
        parts = {
            "pose": (landmarks_to_pixels(res.pose_landmarks, NUM_POSE, w, h, "visibility"), NUM_POSE),
            "left_hand": (landmarks_to_pixels(res.left_hand_landmarks, NUM_HAND, w, h, "one"), NUM_HAND),
            "right_hand": (landmarks_to_pixels(res.right_hand_landmarks, NUM_HAND, w, h, "one"), NUM_HAND),
            "face": (landmarks_to_pixels(res.face_landmarks, NUM_FACE, w, h, "z"), NUM_FACE),
        }
        data = {}
        for name, (arr, n) in parts.items():
            data[name] = (arr if arr is not None else np.zeros((n, 3), np.float32))[None]
            data[name + "_valid"] = np.array([arr is not None])
        kp = Keypoints2D(**data)
        if self.hand_max_torso_fraction is not None:
            kp = filter_hands_by_pose_wrist(kp, self.hand_max_torso_fraction)
        return kp


class FixedShapeBody:
    """A body model view whose shape is pinned to ``betas`` (1, n_betas), whatever it is given.

    Every attribute is the wrapped model's; calling it replaces ``params.betas``. Passed to the
    fitting function, the betas it optimises have no effect on the energy's data terms, so the
    fit changes only pose, orientation and translation.
    """

    def __init__(self, body: BodyModel, betas: torch.Tensor):
        self._body = body
        self._betas = betas.reshape(1, -1).to(body.device)

    def __getattr__(self, name):
        return getattr(self._body, name)

    def __call__(self, params: BodyParams, return_vertices: bool = True) -> BodyOutput:
        return self._body(replace(params, betas=self._betas.to(params.global_orient.device)),
                          return_vertices=return_vertices)


@dataclass
class LiveFitConfig:
    """Schedule of the per-frame fit (:class:`BodyTracker`).

    Attributes:
        iters: Adam iterations per frame, warm-started from the previous frame (full stage:
            orientation, translation, body and finger poses).
        lr: Adam learning rate of the per-frame iterations (radians / metres per step scale).
        init_global, init_body, init_hands: iterations of the full fit of a first frame.
        reinit_after: frames without a person after which the next detection is fitted from
            scratch (the person may have come back elsewhere).
        extrapolate: the warm start is the previous fit plus this fraction of the last
            frame-to-frame change (constant-velocity prediction; 0 = previous fit).
    """

    iters: int = 12
    lr: float = 0.02
    init_global: int = 30
    init_body: int = 80
    init_hands: int = 30
    reinit_after: int = 15
    extrapolate: float = 0.5


class BodyTracker:
    """Fits the body to one frame of keypoints at a time, warm-started (module docstring).

    Args:
        body: the avatar's body model.
        betas: (1, n_betas) the avatar's shape, held fixed.
        config: :class:`LiveFitConfig`.
        device: fitting device (CPU is usually faster: the fit is many tiny ops).

    Call: ``tracker(kp, K) -> BodyParams`` (batch 1, on CPU, betas = the avatar's) or None when
    the frame has no person (the caller keeps showing the last pose).
    """

    def __init__(self, body: BodyModel, betas: torch.Tensor, config: LiveFitConfig | None = None,
                 device: str | torch.device = "cpu"):
        self.body = FixedShapeBody(body, betas)
        self.betas = betas.reshape(1, -1).detach().cpu()
        self.config = config or LiveFitConfig()
        self.device = torch.device(device)
        self.prev: BodyParams | None = None
        self.prev2: BodyParams | None = None
        self.lost = 0
        self.last_was_init = False

    def reset(self) -> None:
        self.prev = self.prev2 = None
        self.lost = 0

    def _predict(self) -> BodyParams:
        """Warm start: previous fit + ``extrapolate`` x its last change (axis-angle deltas are
        small between frames, so they are extrapolated component-wise)."""
        a = self.config.extrapolate
        if self.prev2 is None or a <= 0:
            return self.prev
        p, q = self.prev, self.prev2
        fields = ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "transl")
        return replace(p, **{f: getattr(p, f) + a * (getattr(p, f) - getattr(q, f)) for f in fields})

    def __call__(self, kp: Keypoints2D, K: np.ndarray) -> BodyParams | None:
        c = self.config
        if kp.num_frames != 1:
            raise ValueError(f"BodyTracker fits one frame at a time, got {kp.num_frames}")
        if not kp.pose_valid[0]:
            self.lost += 1
            if self.lost > c.reinit_after:
                self.prev = None
            self.prev2 = None  # no velocity across a gap
            return None
        self.lost = 0
        if self.prev is None:
            cfg = FitConfig(iters_global=c.init_global, iters_body=c.init_body, iters_hands=c.init_hands)
            init = None
        else:
            cfg = FitConfig(iters_global=0, iters_body=0, iters_hands=c.iters, lr=c.lr)
            init = self._predict()
        self.last_was_init = init is None
        p = fit_sequence(self.body, kp, K, cfg, device=self.device, init=init, show_progress=False)
        p = replace(p, betas=self.betas.clone())
        self.prev2, self.prev = (None if init is None else self.prev), p
        return p
