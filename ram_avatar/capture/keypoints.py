"""2D keypoints and person masks (MediaPipe Holistic), masks of everyone (Selfie Segmentation).

Detection only: the per-frame record it fills, :class:`~ram_avatar.io.keypoints.Keypoints2D`
(re-exported here), is defined in :mod:`ram_avatar.io.keypoints` with its conventions (pixel
coordinates of the original frame, BlazePose-33 / hand-21 / face-478 orders, the subject's own
left and right, as verified on all 412 frames of taiji.mp4; zeros and ``*_valid`` False where
nothing was detected, never NaN).
"""

from __future__ import annotations

import logging
import time
from dataclasses import fields
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ram_avatar.errors import NoPersonError
from ram_avatar.io.keypoints import (NUM_FACE, NUM_HAND, NUM_POSE, POSE_LEFT_HIP,  # noqa: F401
                                     POSE_LEFT_SHOULDER, POSE_LEFT_WRIST, POSE_RIGHT_HIP,
                                     POSE_RIGHT_SHOULDER, POSE_RIGHT_WRIST, Keypoints2D,
                                     _ARRAYS)
from ram_avatar.io.masks import PersonMasks, PersonMaskWriter
from ram_avatar.utils import progress

log = logging.getLogger(__name__)

__all__ = [
    "Keypoints2D", "PERSON_MASK_SOURCE", "detect_keypoints", "check_person_found",
    "filter_hands_by_pose_wrist", "landmarks_to_pixels", "world_landmarks",
    "POSE_LEFT_SHOULDER", "POSE_RIGHT_SHOULDER", "POSE_LEFT_WRIST", "POSE_RIGHT_WRIST",
    "POSE_LEFT_HIP", "POSE_RIGHT_HIP", "NUM_POSE", "NUM_HAND", "NUM_FACE",
]


def filter_hands_by_pose_wrist(kp: Keypoints2D, max_torso_fraction: float = 0.5) -> Keypoints2D:
    """Drop hand detections whose wrist is far from the pose wrist of the same side.

    Holistic sometimes attaches a hand to the wrong wrist or detects a hand in the background.
    A hand is dropped (zeroed, valid=False) in a frame where the pose is valid and the distance
    between the hand's wrist (hand landmark 0) and the pose wrist (landmark 15 for the left
    hand, 16 for the right) exceeds ``max_torso_fraction`` times the torso height (distance
    between the shoulder midpoint and the hip midpoint, px). Frames without a valid pose keep
    their hands, since nothing can be checked there.

    Args:
        kp: keypoints (not modified).
        max_torso_fraction: distance threshold in torso heights.

    Returns:
        A new :class:`Keypoints2D` with the outlying hands removed.
    """
    pose = kp.pose[..., :2]
    mid_shoulder = 0.5 * (pose[:, POSE_LEFT_SHOULDER] + pose[:, POSE_RIGHT_SHOULDER])
    mid_hip = 0.5 * (pose[:, POSE_LEFT_HIP] + pose[:, POSE_RIGHT_HIP])
    torso = np.linalg.norm(mid_shoulder - mid_hip, axis=-1)                      # (T,) px
    out = {f.name: getattr(kp, f.name).copy() for f in fields(kp)}
    for side, wrist in (("left_hand", POSE_LEFT_WRIST), ("right_hand", POSE_RIGHT_WRIST)):
        dist = np.linalg.norm(getattr(kp, side)[:, 0, :2] - pose[:, wrist], axis=-1)  # (T,) px
        drop = getattr(kp, side + "_valid") & kp.pose_valid & (dist > max_torso_fraction * torso)
        if drop.any():
            log.debug("dropping %d %s detections far from the pose wrist", int(drop.sum()), side)
        out[side][drop] = 0.0
        out[side + "_valid"][drop] = False
    return Keypoints2D(**out)


def landmarks_to_pixels(landmark_list, count: int, width: int, height: int, third: str) -> np.ndarray | None:
    """MediaPipe NormalizedLandmarkList -> (count, 3) float32 in pixels, or None if unusable.

    ``third`` picks the third column: "visibility", "one" (1.0) or "z" (z * width).
    """
    if landmark_list is None:
        return None
    lms = landmark_list.landmark
    if len(lms) != count:
        log.warning("expected %d landmarks, MediaPipe returned %d; treating as not detected",
                    count, len(lms))
        return None
    if third == "visibility":
        arr = np.array([(p.x * width, p.y * height, p.visibility) for p in lms], np.float32)
    elif third == "z":
        arr = np.array([(p.x * width, p.y * height, p.z * width) for p in lms], np.float32)
    else:
        arr = np.array([(p.x * width, p.y * height, 1.0) for p in lms], np.float32)
    return arr if np.isfinite(arr).all() else None


def world_landmarks(landmark_list) -> np.ndarray | None:
    """MediaPipe ``pose_world_landmarks`` -> (33, 3) float32 metres (origin at the hips'
    midpoint, camera axes: x right, y down, z away from the camera), or None if unusable
    (:attr:`Keypoints2D.pose_world`)."""
    return landmarks_to_pixels(landmark_list, NUM_POSE, 1, 1, "z")


def _stack_detections(rows: dict[str, list], num: int) -> dict[str, np.ndarray]:
    """Per-frame detections ((n, 3) arrays or None, ``num`` frames per part) -> the
    :class:`Keypoints2D` fields: zeros and a False flag where a part was not detected, and
    ``pose_world`` zeros where no 3D pose was."""
    data = {}
    for name, n in (*_ARRAYS.items(), ("pose_world", NUM_POSE)):
        valid = np.array([a is not None for a in rows[name]], bool)
        arr = np.zeros((num, n, 3), np.float32)
        if valid.any():
            arr[valid] = np.stack([a for a in rows[name] if a is not None])
        data[name] = arr
        if name in _ARRAYS:
            data[name + "_valid"] = valid
    return data


#: what made the person masks of a capture (``manifest.json`` ``masks.source``)
PERSON_MASK_SOURCE = "mediapipe_holistic_segmentation"


def _probability_to_uint8(prob) -> np.ndarray:
    """A MediaPipe segmentation mask ``(H, W)`` float probability (NaN as 0) -> uint8 0..255."""
    p = np.clip(np.nan_to_num(np.asarray(prob, np.float32), nan=0.0), 0.0, 1.0)
    return (p * 255.0 + 0.5).astype(np.uint8)


def detect_keypoints(frames: Iterable[np.ndarray], total: int | None = None,
                     progress_desc: str = "keypoints",
                     hand_max_torso_fraction: float | None = 0.5,
                     everyone: dict[int, np.ndarray] | None = None, everyone_every: int = 1,
                     masks_path: str | Path | None = None,
                     ) -> tuple[Keypoints2D, PersonMasks]:
    """Run MediaPipe Holistic (with its segmentation) on a sequence of frames.

    Holistic runs in tracking mode (static_image_mode=False, smooth_landmarks=True,
    model_complexity=1, refine_face_landmarks=True for 478 face points,
    enable_segmentation=True), so ``frames`` must be consecutive frames of one video, in order.

    The person mask is Holistic's own segmentation (BlazePose's mask head, in the tracked
    person's region). It replaced ``SelfieSegmentation(model_selection=0)``, a model for
    close-range selfies: on the full-body taiji video it missed the khaki trousers in most
    frames (the texture bake then sampled the legs from few frames, and what it missed outside
    the fitted body was learned as background), and it also marks bystanders and objects held
    near the body
    (a red bottle in the head-to-waist crop of taiji). Frames where Holistic finds no pose get
    an empty mask. Because the Selfie model marks *everyone*, it still runs on every
    ``everyone_every``-th frame when ``everyone`` is given, for the other-people check of
    capture (:func:`ram_avatar.capture.pipeline.other_people`). CPU cost on taiji.mp4
    (1280x720, 2 cores): Holistic with segmentation 83 ms per frame, the Selfie model 14 ms.

    Args:
        frames: iterable of (H, W, 3) uint8 RGB frames, all the same size (e.g.
            :func:`ram_avatar.capture.video.iter_frames`).
        total: number of frames, for the progress bar only (None: unknown).
        progress_desc: progress bar label.
        hand_max_torso_fraction: drop hands whose wrist is further than this many torso heights
            from the pose wrist (see :func:`filter_hands_by_pose_wrist`); None keeps Holistic's
            raw hands.
        everyone: when given, filled with {frame index: (H, W) uint8 Selfie Segmentation mask}
            of every ``everyone_every``-th frame (everyone in view, 0..255).
        everyone_every: the stride of those frames (>= 1).
        masks_path: where the person masks are written, frame by frame
            (:class:`~ram_avatar.io.masks.PersonMaskWriter`: a long video's masks do not fit
            in memory); None: a temporary file, removed when the returned masks are closed.

    Returns:
        (keypoints, masks): :class:`Keypoints2D` with T frames, and the person masks (T, H, W)
        uint8, 0 = background .. 255 = person (segmentation probability times 255), as a
        :class:`~ram_avatar.io.masks.PersonMasks` reader of ``masks_path``.

    Raises:
        ValueError: no frames, or a frame that is not (H, W, 3) uint8 of the first frame's size.
    """
    import mediapipe as mp  # heavy import, only needed here

    holistic_api = mp.solutions.holistic
    seg_api = mp.solutions.selfie_segmentation
    rows: dict[str, list] = {name: [] for name in (*_ARRAYS, "pose_world")}
    masks = PersonMaskWriter(masks_path)
    num = 0
    size: tuple[int, int] | None = None
    n_pose = 0
    t_holistic = t_seg = 0.0
    with masks, \
            holistic_api.Holistic(static_image_mode=False, model_complexity=1,
                                  smooth_landmarks=True, refine_face_landmarks=True,
                                  enable_segmentation=True, smooth_segmentation=True) as holistic, \
            seg_api.SelfieSegmentation(model_selection=0) as segmenter, \
            progress() as bar:
        task = bar.add_task(progress_desc, total=total, info="")
        for index, frame in enumerate(frames):
            frame = np.asarray(frame)
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"frame {index}: expected (H, W, 3) uint8 RGB, got "
                                 f"{frame.shape} {frame.dtype}")
            if size is None:
                size = frame.shape[:2]
            elif frame.shape[:2] != size:
                raise ValueError(f"frame {index} is {frame.shape[:2]}, the first frame was {size}")
            height, width = size
            frame = np.ascontiguousarray(frame)

            t0 = time.perf_counter()
            result = holistic.process(frame)
            t1 = time.perf_counter()
            if everyone is not None and index % max(1, everyone_every) == 0:
                everyone[index] = _probability_to_uint8(segmenter.process(frame).segmentation_mask)
            seg = result.segmentation_mask                                        # (H, W) or None
            t_holistic += t1 - t0
            t_seg += time.perf_counter() - t1

            size_wh = (width, height)
            parts = {
                "pose": landmarks_to_pixels(result.pose_landmarks, NUM_POSE, *size_wh, "visibility"),
                "left_hand": landmarks_to_pixels(result.left_hand_landmarks, NUM_HAND, *size_wh, "one"),
                "right_hand": landmarks_to_pixels(result.right_hand_landmarks, NUM_HAND, *size_wh, "one"),
                "face": landmarks_to_pixels(result.face_landmarks, NUM_FACE, *size_wh, "z"),
            }
            for name, arr in parts.items():
                rows[name].append(arr)
            rows["pose_world"].append(world_landmarks(result.pose_world_landmarks)
                                      if parts["pose"] is not None else None)
            n_pose += parts["pose"] is not None
            masks.add(np.zeros(size, np.uint8) if seg is None else _probability_to_uint8(seg))
            num = index + 1
            bar.update(task, advance=1, info=f"person in {n_pose}/{index + 1}")

    if num == 0:
        masks.abort()
        raise ValueError("detect_keypoints got no frames")
    log.info("keypoints: %d frames, %.1f ms/frame (holistic %.1f, everyone's masks %.1f), "
             "person in %d", num, 1000 * (t_holistic + t_seg) / num, 1000 * t_holistic / num,
             1000 * t_seg / num, n_pose)

    kp = Keypoints2D(**_stack_detections(rows, num))
    if hand_max_torso_fraction is not None:
        kp = filter_hands_by_pose_wrist(kp, hand_max_torso_fraction)
    return kp, masks.close()


def find_small_person(frames: Sequence[np.ndarray], grid: tuple[int, int] = (3, 5)
                      ) -> dict | None:
    """Look for a person too small for the whole-frame pose detector, in zoomed-in crops.

    MediaPipe's pose detector sees the whole frame shrunk to 256 x 256, so a person far from the
    camera is missed. This runs MediaPipe Pose (static images, model_complexity=1) on a
    ``grid`` (rows, columns) of overlapping square crops, each half the frame's shorter side,
    of every given frame (about 0.5 s per 720p frame on a CPU). Only used to explain a failed
    capture.

    Args:
        frames: a few (H, W, 3) uint8 RGB frames of the video.
        grid: crop rows x columns.
    Returns:
        None when no crop of any frame shows a person; else dict ``frames`` (frames where a crop
        found one), ``checked``, ``height`` (median person height / H, from the landmarks) and
        ``box`` [x0, y0, x1, y1] px, the union of the found persons' landmark boxes.
    """
    import mediapipe as mp

    found, heights, boxes = 0, [], []
    with mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1) as pose:
        for frame in frames:
            H, W = frame.shape[:2]
            side = max(32, min(H, W) // 2)
            hit = False
            for y0 in np.linspace(0, H - side, grid[0]).astype(int):
                for x0 in np.linspace(0, W - side, grid[1]).astype(int):
                    crop = np.ascontiguousarray(frame[y0:y0 + side, x0:x0 + side])
                    lm = landmarks_to_pixels(pose.process(crop).pose_landmarks, NUM_POSE, side,
                                             side, "visibility")
                    if lm is None:
                        continue
                    pts = lm[lm[:, 2] > 0.5, :2] + (x0, y0)
                    if len(pts) < 4:
                        continue
                    hit = True
                    heights.append((pts[:, 1].max() - pts[:, 1].min()) / H)
                    boxes.append((*pts.min(0), *pts.max(0)))
                    break
                if hit:
                    break
            found += hit
    if not found:
        return None
    b = np.array(boxes)
    return {"frames": found, "checked": len(frames), "height": float(np.median(heights)),
            "box": [int(b[:, 0].min()), int(b[:, 1].min()), int(np.ceil(b[:, 2].max())),
                    int(np.ceil(b[:, 3].max()))]}


def too_small_error(small: dict, found: int, total: int, width: int, height: int
                    ) -> NoPersonError:
    """The :class:`NoPersonError` for a person that :func:`find_small_person` found only in
    zoomed-in crops: says how large they are and gives an ffmpeg crop around them."""
    x0, y0, x1, y1 = small["box"]
    side = int(min(max(x1 - x0, y1 - y0) * 1.6, width, height))
    side -= side % 2
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    cx0 = int(np.clip(cx - side // 2, 0, width - side))
    cy0 = int(np.clip(cy - side // 2, 0, height - side))
    return NoPersonError(
        f"the person is too small to be tracked: the keypoint detector found a body in only "
        f"{found} of {total} frames, but zooming in finds one about {small['height']:.0%} of the "
        f"frame tall (in {small['frames']} of {small['checked']} sampled frames). The person "
        f"should fill most of the frame height: record closer to the camera, or crop the "
        f"video around the person, e.g. ffmpeg -i in.mp4 -vf crop={side}:{side}:{cx0}:{cy0} "
        f"cropped.mp4 (then capture cropped.mp4).")


def longest_run(valid: np.ndarray) -> tuple[int, int]:
    """``(start, end)`` (end exclusive) of the longest stretch of consecutive True values of a
    (T,) bool array; ``(0, 0)`` when none is True."""
    v = np.concatenate([[False], np.asarray(valid, bool), [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(v))
    if edges.size == 0:
        return 0, 0
    starts, ends = edges[0::2], edges[1::2]
    i = int(np.argmax(ends - starts))
    return int(starts[i]), int(ends[i])


def detected_height(kp: Keypoints2D, frame_height: int) -> float:
    """Median height of the detected bodies as a fraction of the frame height: the vertical
    extent of the pose landmarks with visibility > 0.5, over the frames with a valid pose
    (0 when there is none)."""
    hs = []
    for t in np.flatnonzero(kp.pose_valid):
        y = kp.pose[t, kp.pose[t, :, 2] > 0.5, 1]
        if y.size >= 2:
            hs.append((y.max() - y.min()) / frame_height)
    return float(np.median(hs)) if hs else 0.0


def check_person_found(kp: Keypoints2D, min_fraction: float = 0.5, first_frame: int = 0) -> None:
    """Make sure a person was detected in enough frames to build an avatar.

    Args:
        kp: keypoints from :func:`detect_keypoints`.
        min_fraction: smallest accepted fraction of frames with a valid pose.
        first_frame: the video frame number of ``kp``'s first frame (capture's ``--start``), so
            that the suggested ``--start/--end`` are the video's frame numbers.

    Raises:
        NoPersonError: the pose is valid in fewer than ``min_fraction`` of the frames; the
            message names the longest stretch of frames with a person, and the ``--start`` /
            ``--end`` that capture only it.
    """
    total = kp.num_frames
    found = int(kp.pose_valid.sum())
    if total == 0 or found < min_fraction * total:
        a, b = longest_run(kp.pose_valid)
        stretch = (f" The longest stretch with a person is frames {first_frame + a} to "
                   f"{first_frame + b - 1}: capture only that part with --start {first_frame + a} "
                   f"--end {first_frame + b}, if it shows enough of your movements."
                   if b - a >= 2 else "")
        raise NoPersonError(
            f"no person found in {total - found} of {total} frames (a person is needed in at "
            f"least {min_fraction:.0%} of them); record a video where your whole body is "
            f"visible, in good light, with one person facing the camera, or trim the video to "
            f"the part where you are in view.{stretch}"
        )
