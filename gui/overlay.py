"""Skeleton overlays of the live app (drawn with OpenCV on copies of RGB images)."""

from __future__ import annotations

import cv2
import numpy as np

#: MediaPipe pose-33 bones of the torso, limbs and feet (nose-to-shoulders for the head)
POSE_BONES = ((11, 12), (11, 13), (13, 15), (12, 14), (14, 16), (11, 23), (12, 24), (23, 24),
              (23, 25), (25, 27), (24, 26), (26, 28), (27, 29), (29, 31), (27, 31), (28, 30),
              (30, 32), (28, 32), (0, 11), (0, 12))
#: MediaPipe hand-21 bones
HAND_BONES = tuple((a, b) for chain in ((0, 1, 2, 3, 4), (0, 5, 6, 7, 8), (0, 9, 10, 11, 12),
                                        (0, 13, 14, 15, 16), (0, 17, 18, 19, 20))
                   for a, b in zip(chain[:-1], chain[1:]))

_BODY = (80, 255, 120)
_LEFT = (255, 170, 40)
_RIGHT = (60, 160, 255)


def _line(img, p, q, color, thick):
    if np.all(np.isfinite(p)) and np.all(np.isfinite(q)):
        cv2.line(img, (int(round(p[0])), int(round(p[1]))), (int(round(q[0])), int(round(q[1]))),
                 color, thick, cv2.LINE_AA)


def draw_skeleton(img: np.ndarray, pose_2d: np.ndarray | None, pose_mask: np.ndarray | None = None,
                  hands_2d: np.ndarray | None = None, hands_valid=(True, True),
                  scale: float = 1.0) -> np.ndarray:
    """Draw pose and hand skeletons on a copy of ``img``.

    Args:
        img: (H, W, 3) uint8 RGB.
        pose_2d: (33, 2 or 3) pixel coordinates (third column, if any, is ignored) or None.
        pose_mask: (33,) bool, landmarks to draw (None: all).
        hands_2d: (2, 21, 2+) [left, right] hand landmarks in pixels, or None.
        hands_valid: which hands to draw.
        scale: multiplies every coordinate (e.g. drawing on a downscaled image).
    Returns:
        the new (H, W, 3) uint8 image.
    """
    out = np.ascontiguousarray(img).copy()
    thick = max(1, round(out.shape[0] / 256))
    if pose_2d is not None:
        pts = np.asarray(pose_2d, np.float64)[:, :2] * scale
        ok = np.ones(len(pts), bool) if pose_mask is None else np.asarray(pose_mask, bool)
        for a, b in POSE_BONES:
            if ok[a] and ok[b]:
                _line(out, pts[a], pts[b], _BODY, thick)
        for i in np.nonzero(ok)[0]:
            if np.all(np.isfinite(pts[i])):
                cv2.circle(out, (int(round(pts[i, 0])), int(round(pts[i, 1]))), thick + 1, _BODY, -1,
                           cv2.LINE_AA)
    if hands_2d is not None:
        hands = np.asarray(hands_2d, np.float64)[..., :2] * scale
        for h, color in ((0, _LEFT), (1, _RIGHT)):
            if hands_valid[h]:
                for a, b in HAND_BONES:
                    _line(out, hands[h, a], hands[h, b], color, max(1, thick - 1) if thick > 1 else 1)
    return out


def draw_keypoints(img: np.ndarray, kp, scale: float = 1.0, min_visibility: float = 0.5) -> np.ndarray:
    """Draw a one-frame :class:`~ram_avatar.capture.keypoints.Keypoints2D` (the driver's
    MediaPipe detections) on a copy of ``img`` (coordinates times ``scale``)."""
    if kp is None or not kp.pose_valid[0]:
        return np.ascontiguousarray(img).copy()
    pose = kp.pose[0]
    mask = pose[:, 2] >= min_visibility
    hands = np.stack([kp.left_hand[0], kp.right_hand[0]])
    return draw_skeleton(img, pose, mask, hands, (bool(kp.left_hand_valid[0]), bool(kp.right_hand_valid[0])),
                         scale)
