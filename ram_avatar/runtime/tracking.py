"""Per-frame tracking for the live runtime: MediaPipe Holistic in video mode + warm-started fit.

The offline capture (``ram_avatar.capture.pipeline``) sees the whole clip at once: it detects
keypoints on every frame, then fits all frames jointly with temporal terms. Live, a frame is
tracked as soon as it arrives:

* :class:`HolisticTracker` runs MediaPipe Holistic in tracking mode (``static_image_mode=False``,
  ``model_complexity=1``, ``smooth_landmarks=True``, 478-point face mesh) on one RGB frame and
  returns a one-frame :class:`~ram_avatar.capture.keypoints.Keypoints2D` in the same
  conventions as capture (pixels of the frame, the subject's own left/right, hands far from
  the pose wrist dropped). Holistic follows one person; with several in view it may switch to
  another whenever it loses track for a frame. :class:`PersonLock` keeps it on the person it
  locked on to: only a region around that person's last box is shown to Holistic (the rest of
  the frame is blanked), and the lock is released, so anyone may be picked up, only after the
  person was lost for ``lost_frames`` frames.
* :class:`BodyTracker` fits the body model to those keypoints with the capture's fitting energy
  (:func:`ram_avatar.capture.fitting.fit_sequence`, batch 1): the first frame (and the first
  after the person was lost for a while) gets a full fit (global + body + hands stages, Adam);
  every other frame starts from a constant-velocity prediction of the previous fits and
  minimises the full stage's energy (body, orientation, translation and fingers together) plus
  a small temporal term with a few Levenberg-Marquardt iterations on an analytic landmark
  Jacobian (:class:`GaussNewtonFit`, Anny; about 5x faster and far better converged than the
  previous 12 Adam steps through autograd, which other body models still use). The body shape
  is held fixed to the avatar's ``betas`` (:class:`FixedShapeBody`), so the driver is tracked
  with the avatar's bone lengths: live there is no clip to estimate a driver shape from, a
  per-frame shape would jitter, and retargeting then needs no bone-length rescaling. The
  energy includes the capture's depth cue (MediaPipe's 3D pose, ``Keypoints2D.pose_world``,
  tells each bone towards or away from the camera, which the 2D landmarks leave open;
  ``LiveFitConfig.depth_cue``).

Imports: ``ram_avatar.capture.keypoints`` (the :class:`Keypoints2D` record and hand filter) and
``ram_avatar.capture.fitting`` (the fitting energy) are pure functions of the capture package,
not its pipeline; the runtime never imports ``capture.pipeline`` or ``training``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch

from ram_avatar.body.anny_backend import anny_forward_kinematics, anny_rest_chain
from ram_avatar.body.base import BodyModel, BodyOutput, BodyParams, rotvec_to_rotmat
from ram_avatar.capture.fitting import (BONE_MATRIX, DEPTH_BONES, FitConfig, _Targets,
                                        bone_confidence, bone_depths, fit_sequence)
from ram_avatar.capture.keypoints import (NUM_FACE, NUM_HAND, NUM_POSE, Keypoints2D,
                                          filter_hands_by_pose_wrist, landmarks_to_pixels,
                                          world_landmarks)

log = logging.getLogger(__name__)

__all__ = ["HolisticTracker", "PersonLock", "BodyTracker", "FixedShapeBody", "TorsoPrior",
           "LiveFitConfig", "IdentityGate", "keypoint_box", "torso_vector",
           "LOWER_BODY_MODES", "landmarks_seen", "lower_body_joints", "seated_leg_pose",
           "standing_leg_pose"]

#: MediaPipe pose landmarks of the hips, and of the legs below them (knees, ankles, heels, toes)
HIP_LANDMARKS = (23, 24)
TORSO_LANDMARKS = (11, 12, 23, 24)   # shoulders, hips
_PRIOR_LANDMARKS = tuple(sorted(set(TORSO_LANDMARKS).union(
    *(a + b for a, b in DEPTH_BONES))))   # camera-frame Jacobian rows the extra terms need
LEG_LANDMARKS = (25, 26, 27, 28, 29, 30, 31, 32)
#: what the lower body does when the legs are not seen (``--lower-body``)
LOWER_BODY_MODES = ("stand", "sit")
#: body-pose joint names of the lower body (Anny bones / SMPL-X joints), matched by prefix
_LOWER_BODY_PREFIXES = ("pelvis.", "upperleg", "lowerleg", "foot", "toe", "left_hip", "right_hip",
                        "left_knee", "right_knee", "left_ankle", "right_ankle", "left_foot",
                        "right_foot")
_THIGH_PREFIXES = ("upperleg01.", "left_hip", "right_hip")
_KNEE_PREFIXES = ("lowerleg01.", "left_knee", "right_knee")


def landmarks_seen(kp: Keypoints2D, frame_size: tuple[int, int], min_visibility: float = 0.5,
                   margin: float = 0.0) -> np.ndarray:
    """Which pose landmarks the frame really shows: ``(33,)`` bool for a one-frame ``kp``.

    A landmark is seen when MediaPipe's visibility is at least ``min_visibility`` and it lies
    inside the frame (``frame_size = (W, H)`` pixels, extended by ``margin`` x the frame
    height on every side). MediaPipe extrapolates the whole body when only its top is in view
    (a desk webcam) and then reports knees and ankles below the frame with visibilities around
    0.5-0.7, so the position test is what tells a cropped body from a visible one.
    """
    w, h = frame_size
    p = kp.pose[0]
    m = margin * h
    inside = (p[:, 0] >= -m) & (p[:, 0] < w + m) & (p[:, 1] >= -m) & (p[:, 1] < h + m)
    return (p[:, 2] >= min_visibility) & inside & bool(kp.pose_valid[0])


def torso_vector(lm):
    """From the shoulder midpoint to the hip midpoint (MediaPipe pose landmarks 11, 12 / 23,
    24): ``lm`` (33, D) landmarks (pixels or metres; numpy or torch) gives (D,), and their
    Jacobian (33, 3, N) gives its (3, N) rows."""
    return 0.5 * (lm[23] + lm[24]) - 0.5 * (lm[11] + lm[12])


class TorsoPrior(NamedTuple):
    """The torso prior of :meth:`GaussNewtonFit.fit` for frames without hips.

    Attributes:
        lean_weight: weight of ``(lean - lean)^2`` and of the 60-degree hinge
            (:meth:`GaussNewtonFit._torso_residuals`).
        lean: target of the camera-axis component of the unit shoulder-to-hip vector.
        up_weight: weight of ``|R_pelvis up_model - up|^2``.
        up: (3,) target of the pelvis' unit up vector, camera frame.
    """

    lean_weight: float
    lean: float
    up_weight: float = 0.0
    up: tuple[float, float, float] = (0.0, -1.0, 0.0)


def _joints_with_prefix(body: BodyModel, prefixes: tuple[str, ...]) -> list[int]:
    return [i for i, n in enumerate(body.body_joint_names) if n.startswith(prefixes)]


def lower_body_joints(body: BodyModel) -> list[int]:
    """Indices into ``body_pose`` of the lower body (pelvis sides, hips, knees, ankles, feet)."""
    return _joints_with_prefix(body, _LOWER_BODY_PREFIXES)


def standing_leg_pose(body_pose: torch.Tensor, leg_joints: list[int]) -> torch.Tensor:
    """A natural standing leg pose taken from the avatar's own poses.

    Args:
        body_pose: (T, J, 3) axis-angles (radians), e.g. the avatar's training frames.
        leg_joints: indices of :func:`lower_body_joints`.
    Returns:
        (J, 3): the frame whose legs are closest to straight (smallest summed leg rotation
        angle) -- a pose the renderer has seen -- with every other joint zero.
    """
    bp = body_pose.detach().cpu().float()
    idx = torch.as_tensor(leg_joints, dtype=torch.long)
    t = int(bp[:, idx].norm(dim=-1).sum(-1).argmin())
    out = torch.zeros_like(bp[0])
    out[idx] = bp[t, idx]
    return out


def seated_leg_pose(body: BodyModel, betas: torch.Tensor, angle_deg: float = 90.0) -> torch.Tensor:
    """A seated leg pose for any body model: thighs forward, shins down, (J, 3) radians.

    The body's forward direction is the heel-to-toe direction and its up direction the
    ankle-to-hip direction of the rest pose (MediaPipe landmarks 23-32); the flexion axis of
    each hip and knee is found among the bone's local axes (+-x, +-y, +-z) as the one whose
    rotation by ``angle_deg`` brings the thigh closest to forward and then the shin closest
    to down, so no per-model axis convention is hard-coded.

    Raises:
        ValueError: the body model has no hip / knee joints recognised by name.
    """
    thighs = _joints_with_prefix(body, _THIGH_PREFIXES)
    knees = _joints_with_prefix(body, _KNEE_PREFIXES)
    if len(thighs) != 2 or len(knees) != 2:
        raise ValueError(f"cannot find hips and knees among the joints of {body.name}")
    J = body.num_body_joints
    dev = body.device

    def landmarks(pose: torch.Tensor) -> torch.Tensor:
        p = body.zero_params(1, device=dev)
        p.betas = betas.reshape(1, -1).to(dev)
        p.body_pose = pose[None].to(dev)
        with torch.no_grad():
            return body(p, return_vertices=False).pose_landmarks[0].cpu()

    pose = torch.zeros(J, 3)
    lm = landmarks(pose)
    fwd = (lm[[31, 32]] - lm[[29, 30]]).mean(0)
    up = (lm[[23, 24]] - lm[[27, 28]]).mean(0)
    up = up / up.norm()
    fwd = fwd - (fwd @ up) * up
    fwd = fwd / fwd.norm()
    a = np.deg2rad(angle_deg)
    axes = [torch.tensor(v, dtype=torch.float32) * s for v in np.eye(3) for s in (1.0, -1.0)]
    # left side: hip 23, knee 25, ankle 27; right: 24, 26, 28 (both backends list the left
    # joint first)
    def bend(joint: int, start: int, end: int, direction: torch.Tensor) -> None:
        """Rotate ``joint`` by ``angle_deg`` about the local axis that points the bone from
        landmark ``start`` to ``end`` most along ``direction`` (first best axis wins)."""
        best = None
        for ax in axes:
            trial = pose.clone()
            trial[joint] = a * ax
            l2 = landmarks(trial)
            d = l2[end] - l2[start]
            score = float(d @ direction / d.norm())
            if best is None or score > best[0]:
                best = (score, a * ax)
        pose[joint] = best[1]

    for side, (thigh, kn) in enumerate(zip(thighs, knees)):
        hip_i, knee_i, ankle_i = 23 + side, 25 + side, 27 + side
        bend(thigh, hip_i, knee_i, fwd)     # thigh forward
        bend(kn, knee_i, ankle_i, -up)      # shin down
    return pose


def keypoint_box(kp: Keypoints2D, frame_size: tuple[int, int], min_visibility: float = 0.5,
                 t: int = 0) -> np.ndarray | None:
    """Bounding box ``(x0, y0, x1, y1)`` in pixels of what frame ``t`` of ``kp`` shows of the
    person: pose landmarks with visibility >= ``min_visibility`` inside the frame, plus the
    valid hands and face mesh (clipped to the frame). None without a pose or with fewer than
    two such points."""
    w, h = frame_size
    if not kp.pose_valid[t]:
        return None
    pose = kp.pose[t]
    pts = [pose[(pose[:, 2] >= min_visibility) & (pose[:, 0] >= 0) & (pose[:, 0] < w)
                & (pose[:, 1] >= 0) & (pose[:, 1] < h), :2]]
    for name in ("left_hand", "right_hand", "face"):
        if getattr(kp, name + "_valid")[t]:
            pts.append(getattr(kp, name)[t, :, :2])
    xy = np.concatenate(pts, 0).astype(np.float64)
    if len(xy) < 2:
        return None
    xy = np.clip(xy, 0.0, [w - 1.0, h - 1.0])
    return np.concatenate([xy.min(0), xy.max(0)])


class PersonLock:
    """Keeps the tracker on the person it locked on to when several people are in view.

    MediaPipe Holistic tracks one person: in tracking mode it follows the region of the last
    landmarks, but when that track is lost for a frame (occlusion, a fast move, the person
    leaving the view) its detector picks whichever person it finds first, and then tracks that
    one. The lock remembers the box of the locked person (:func:`keypoint_box`) and, before the
    next frame goes to Holistic, blanks everything outside a region of interest: that box grown
    by ``margin_x`` / ``margin_y`` times the box height on each side (plus ``grow_per_lost``
    box heights per frame the person has been missing, so a person who moved fast is found
    again), clipped to the frame. Other people outside the region cannot be detected. The frame
    keeps its size, so Holistic's tracking graph and the keypoints' pixel coordinates are those
    of the full frame. After ``lost_frames`` consecutive frames without the person the lock is
    released: the whole frame is searched and the next person found is locked on to.

    Args:
        margin_x, margin_y: region growth per side, in box heights (0.25 of a standing
            person's height is about 45 cm: more than a person moves between two frames).
        grow_per_lost: extra growth per frame without the person, in box heights.
        lost_frames: N, consecutive frames without the person before the lock is released.
        min_visibility: pose landmarks counted in the box.
        fill: value of the blanked pixels (0: black).

    Attributes:
        box: ``(x0, y0, x1, y1)`` pixels of the locked person, or None when not locked.
        lost: consecutive frames without the person.
        frame_size: ``(W, H)`` the box refers to.
    """

    def __init__(self, margin_x: float = 0.25, margin_y: float = 0.15, grow_per_lost: float = 0.1,
                 lost_frames: int = 15, min_visibility: float = 0.5, fill: int = 0):
        if min(margin_x, margin_y, grow_per_lost) < 0 or lost_frames < 1:
            raise ValueError("PersonLock: margins and grow_per_lost must be >= 0, lost_frames >= 1")
        self.margin_x, self.margin_y = float(margin_x), float(margin_y)
        self.grow_per_lost = float(grow_per_lost)
        self.lost_frames = int(lost_frames)
        self.min_visibility = float(min_visibility)
        self.fill = int(fill)
        self.release()

    @property
    def locked(self) -> bool:
        return self.box is not None

    def release(self) -> None:
        """Forget the locked person (the next frame is searched whole)."""
        self.box: np.ndarray | None = None
        self.lost = 0
        self.frame_size: tuple[int, int] | None = None

    def roi(self, frame_size: tuple[int, int]) -> tuple[int, int, int, int] | None:
        """Region ``(x0, y0, x1, y1)`` (integer pixels, end exclusive) shown to the tracker,
        or None when not locked (or locked in a frame of another size)."""
        if self.box is None or tuple(frame_size) != self.frame_size:
            return None
        w, h = frame_size
        x0, y0, x1, y1 = self.box
        bh = max(y1 - y0, x1 - x0, 1.0)
        grow = self.grow_per_lost * self.lost
        mx, my = (self.margin_x + grow) * bh, (self.margin_y + grow) * bh
        return (max(0, int(np.floor(x0 - mx))), max(0, int(np.floor(y0 - my))),
                min(w, int(np.ceil(x1 + mx)) + 1), min(h, int(np.ceil(y1 + my)) + 1))

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """The frame Holistic should see: (H, W, 3) with everything outside :meth:`roi` set to
        ``fill`` (a new array), or ``frame`` itself when not locked."""
        h, w = frame.shape[:2]
        r = self.roi((w, h))
        if r is None or r == (0, 0, w, h):
            return frame
        x0, y0, x1, y1 = r
        out = np.full_like(frame, self.fill)
        out[y0:y1, x0:x1] = frame[y0:y1, x0:x1]
        return out

    def update(self, kp: Keypoints2D, frame_size: tuple[int, int]) -> None:
        """Record the tracker's result for the frame :meth:`apply` prepared: lock on to (or
        follow) the person found, or count a frame without them and release the lock after
        ``lost_frames`` of them."""
        box = keypoint_box(kp, frame_size, self.min_visibility)
        if box is not None:
            if self.box is None:
                log.info("tracking locked on to the person at x %.0f-%.0f px", box[0], box[2])
            self.box, self.lost, self.frame_size = box, 0, tuple(frame_size)
            return
        if self.box is None:
            return
        self.lost += 1
        if self.lost >= self.lost_frames:
            log.info("the locked person was not seen for %d frames: tracking anyone in view",
                     self.lost)
            self.release()


class HolisticTracker:
    """MediaPipe Holistic on a live stream, one frame per call (module docstring).

    Args:
        hand_max_torso_fraction: drop hands whose wrist lies further than this many torso
            heights from the pose wrist (as capture does); None keeps Holistic's raw hands.
        lock: keep following the first person tracked when others are in view
            (:class:`PersonLock`; True: default settings, a PersonLock: those, False/None: off,
            Holistic sees the whole frame and may switch people).

    Call: ``tracker(frame_rgb (H, W, 3) uint8) -> Keypoints2D`` with T = 1, in pixels of the
    whole frame. A frame of a different size than the previous one restarts the tracking graph
    and releases the lock (e.g. a webcam that came back in another mode). Use as a context
    manager or call :meth:`close`.

    Raises:
        ValueError: a frame that is not (H, W, 3) uint8.
    """

    def __init__(self, hand_max_torso_fraction: float | None = 0.5,
                 lock: "PersonLock | bool | None" = True):
        self.hand_max_torso_fraction = hand_max_torso_fraction
        self.lock: PersonLock | None = (PersonLock() if lock is True else lock or None)
        self._holistic = None
        self._size: tuple[int, int] | None = None

    def _open(self) -> None:
        import mediapipe as mp  # heavy import, only when tracking starts

        self.close()
        self._holistic = mp.solutions.holistic.Holistic(
            static_image_mode=False, model_complexity=1, smooth_landmarks=True,
            refine_face_landmarks=True, enable_segmentation=False)

    def reset(self) -> None:
        """Forget the tracking state and the locked person (next frame is detected from
        scratch, in the whole frame)."""
        self.close()
        if self.lock is not None:
            self.lock.release()

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
            if self.lock is not None and self.lock.frame_size != (frame.shape[1], frame.shape[0]):
                self.lock.release()
        h, w = frame.shape[:2]
        seen = frame if self.lock is None else self.lock.apply(frame)
        res = self._holistic.process(np.ascontiguousarray(seen))
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
        world = world_landmarks(res.pose_world_landmarks) if data["pose_valid"][0] else None
        data["pose_world"] = None if world is None else world[None]
        kp = Keypoints2D(**data)
        if self.hand_max_torso_fraction is not None:
            kp = filter_hands_by_pose_wrist(kp, self.hand_max_torso_fraction)
        if self.lock is not None:
            self.lock.update(kp, (w, h))
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


# --------------------------------------------------------------------------------------------
# Gauss-Newton / Levenberg-Marquardt per-frame fit (Anny, fixed shape)


def _skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices (..., 3, 3) of vectors (..., 3): ``_skew(a) @ b == a x b``."""
    z = torch.zeros_like(v[..., 0])
    x, y, w = v.unbind(-1)
    return torch.stack([z, -w, y, w, z, -x, -y, x, z], -1).reshape(v.shape + (3,))


def _left_jacobian(theta: torch.Tensor) -> torch.Tensor:
    """Left Jacobian of SO(3), (..., 3, 3), at axis-angles ``theta`` (..., 3) radians.

    ``exp([theta + d]) = exp([J_l(theta) d]) exp([theta])`` to first order in ``d``.
    """
    phi2 = (theta * theta).sum(-1, keepdim=True)[..., None]            # (..., 1, 1)
    phi = phi2.sqrt()
    small = phi < 1e-4
    safe = torch.where(small, torch.ones_like(phi), phi)
    a = torch.where(small, 0.5 - phi2 / 24.0, (1.0 - torch.cos(safe)) / safe ** 2)
    b = torch.where(small, 1.0 / 6.0 - phi2 / 120.0, (safe - torch.sin(safe)) / safe ** 3)
    S = _skew(theta)
    eye = torch.eye(3, dtype=theta.dtype, device=theta.device)
    return eye + a * S + b * (S @ S)


class _FitState(NamedTuple):
    x: torch.Tensor          # (N,) parameters [transl, global_orient, body_pose, left, right]
    prior: torch.Tensor      # () prior / limit / temporal energy
    lm_world: torch.Tensor   # (L, 3) landmarks, camera metres (pose 33 then hands 42)
    W: torch.Tensor          # (nb, 4, 4) posed bone poses, model frame
    y: torch.Tensor          # (Kr, nb, 3) per-bone contributions to the regressed landmarks
    Rg: torch.Tensor         # (3, 3) global rotation
    r: torch.Tensor          # (L, 2) reprojection residuals / bbox height
    Z: torch.Tensor          # (L,) clamped camera depths


class GaussNewtonFit:
    """Per-frame fit of the Anny body (fixed shape) by Levenberg-Marquardt on the live energy.

    The energy is the capture fit's (:func:`ram_avatar.capture.fitting.fit_sequence`, stage
    ``hands``, batch 1): Geman-McClure robust reprojection of the 33 pose and 2x21 hand
    landmarks normalised by the bbox height, pose and finger priors, joint-angle limits and the
    knee hinge, plus temporal terms ``temporal * ||theta - theta_pred||^2`` on the rotations
    (global orientation, body and finger poses, radians) and ``temporal_transl *
    ||t - t_pred||^2`` on the translation (metres) pulling towards the warm start (the
    constant-velocity prediction): they keep what one frame does not determine (a hand out of
    view, the depth / pose ambiguity of a monocular view) from jumping between frames.

    Instead of autograd through the body model, the landmark Jacobian is analytic: a rotation
    increment ``w`` of bone c (``D_c <- exp([w]) D_c`` in Anny's ``local-ref`` parameterisation)
    turns everything below c about c's posed head ``h_c`` by the model-frame axis
    ``M_c w`` with ``M_c = rot(W_parent) U_parent^T``, so a bone-head landmark ``x`` moves by
    ``-[x - h_c]_x M_c w`` and a skinned (regressed) landmark by ``-[Y_c - S_c h_c]_x M_c w``,
    where ``Y_c`` / ``S_c`` sum the landmark's skinning contributions / weights over the bones
    below c; the axis-angle chain rule is the SO(3) left Jacobian. One iteration is one forward
    kinematics pass (no autograd graph), a (150 x 201) Jacobian and a 201 x 201 solve; the
    robust term is handled by iteratively reweighted least squares. The terms on camera-frame
    directions (the torso prior, :class:`TorsoPrior`, and the depth cue, ``fit(depth_cue=)``)
    add Gauss-Newton rows from the same landmark Jacobian rotated into the camera frame.

    Args:
        body: the Anny body model (``name == "anny"``).
        betas: (1, n_betas) fixed shape.
        fit: :class:`~ram_avatar.capture.fitting.FitConfig` (weights of the energy).
        device: torch device of the fit.

    Raises:
        ValueError: ``body`` is not an Anny body (use the Adam fit for other backends).
    """

    def __init__(self, body: BodyModel, betas: torch.Tensor, fit: FitConfig,
                 device: torch.device):
        if getattr(body, "name", None) != "anny" or not hasattr(body, "landmark_skin"):
            raise ValueError("GaussNewtonFit needs the anny body model")
        self.body, self.cfg, self.device = body, fit, torch.device(device)
        dev = self.device
        m = body.anny
        self.betas = betas.reshape(1, -1).to(dev, torch.float32)
        self.anny = m
        with torch.no_grad():
            rest = body._rest_model(self.betas)
            nb, Kr = int(m.bone_count), int(body.num_regressed)
            rv = rest["rest_vertices"][0].to(dev)
            self.A = (body.landmark_skin.to(dev) @ rv).reshape(Kr, nb, 3)        # (Kr, nb, 3)
            self.rest_bone_poses = rest["rest_bone_poses"][:1].to(dev)          # (1, nb, 4, 4)
        self.nb = nb
        self.s = body.landmark_skin_sum.to(dev)                                   # (Kr, nb)
        parents = [int(p) for p in m.bone_parents]
        desc = torch.zeros(nb, nb, dtype=torch.bool)  # desc[c, j]: bone j is c or below c
        for j in range(nb):
            c = j
            while c >= 0:
                desc[c, j] = True
                c = parents[c]
        posed = torch.cat([body.body_idx.cpu(), body.hand_idx[0].cpu(), body.hand_idx[1].cpu()])
        if any(parents[int(c)] < 0 for c in posed):
            raise ValueError("the root bone cannot be a posed bone")
        self.nj_body = int(body.body_idx.numel())
        self.nj = int(posed.numel())                                              # P posed bones
        self.posed = posed.to(dev)
        self.posed_parent = torch.tensor([parents[int(c)] for c in posed], device=dev)
        self.descP = desc[posed].to(dev, torch.float32)                           # (P, nb)
        self.S = self.s @ self.descP.T                                            # (Kr, P)
        U = m.reference_bone_orientations.to(dev, torch.float32)
        self.Upt = U[self.posed_parent].transpose(-1, -2)                         # (P, 3, 3)
        # landmark sources: 33 pose then 2x21 hand landmarks, a bone head or a regressed row
        self.is_head = torch.cat([body.pose_kind == 1, (body.hand_kind == 0).flatten()]).to(dev)
        self.bone = torch.cat([body.pose_ref, body.hand_ref.flatten()]).to(dev)
        self.row = torch.cat([body.pose_cref, body.hand_vref.flatten()]).to(dev)
        self.pose_mask = body.pose_landmark_mask.to(dev)
        self.head_bone = int(body.head_bone)
        knees = getattr(body, "knee_joints", None) or []
        self.knees = torch.tensor(knees, dtype=torch.long, device=dev)
        self._bone_D = BONE_MATRIX.to(dev)          # (B, 33) the depth cue's bone vectors
        self.n = 6 + 3 * self.nj
        # constants of the per-frame evaluation: the shape's kinematic chain, identity
        # rotations of the bones that are not fitted, the prior's per-joint weights and limits
        self.chain = anny_rest_chain(m, self.rest_bone_poses, torch.float32)
        self._eye_nb = torch.eye(3, device=dev).expand(nb, 3, 3).contiguous()
        w = torch.full((self.nj,), fit.w_hand_prior, device=dev)
        w[:self.nj_body] = fit.w_pose_prior
        lim = torch.full((self.nj,), fit.hand_angle_limit, device=dev)
        lim[:self.nj_body] = fit.body_angle_limit
        self._w_prior, self._lim = w, lim
        # (row, col) of the 3x3 diagonal blocks of the pose parameters in the (N, N) Hessian
        b = 6 + 3 * torch.arange(self.nj, device=dev)
        a = torch.arange(3, device=dev)
        self._block_r = (b[:, None, None] + a[None, :, None]).expand(-1, 3, 3).reshape(-1)
        self._block_c = (b[:, None, None] + a[None, None, :]).expand(-1, 3, 3).reshape(-1)
        self._wt = torch.zeros(self.n, device=dev)  # temporal weights, set by fit()
        # per-frame data (set by fit())
        self._xy = self._c = self._K = self._h = self._x_pred = None
        self.temporal = self.temporal_transl = 0.0
        self._root_weight = 1.0
        # the torso prior (set by fit() from a TorsoPrior; weights 0 = off)
        self._lean_w = self._lean_target = self._up_w = 0.0
        self._up_target = torch.tensor([0.0, -1.0, 0.0], device=dev)
        self._down = torch.tensor([0.0, 1.0, 0.0], device=dev)
        # the depth cue (set by fit() from the 3D pose; weights 0 = off)
        self._cue_w = torch.zeros(len(DEPTH_BONES), device=dev)
        self._cue_t = torch.zeros(len(DEPTH_BONES), device=dev)
        # the body's "up" in its model frame: the global orientation ``upright_orient`` turns
        # it to the camera's up (-y)
        R0 = rotvec_to_rotmat(body.upright_orient.to(dev, torch.float32).reshape(1, 3))[0]
        self._up_model = R0.T @ torch.tensor([0.0, -1.0, 0.0], device=dev)

    # -- parameters -----------------------------------------------------------------------
    def pack(self, p: BodyParams) -> torch.Tensor:
        """BodyParams (batch 1) -> parameter vector (N,) = (6 + 3 P,): transl (metres),
        global_orient, body_pose (J_body joints), left / right hand poses (15 each), radians."""
        f = lambda t: t.detach().to(self.device, torch.float32).reshape(-1)  # noqa: E731
        return torch.cat([f(p.transl), f(p.global_orient), f(p.body_pose), f(p.left_hand_pose),
                          f(p.right_hand_pose)])

    def unpack(self, x: torch.Tensor, template: BodyParams) -> BodyParams:
        """Parameter vector (N,) -> BodyParams batch 1 (views of ``x``; jaw / expression from
        ``template``, betas the fixed shape)."""
        nb = self.nj_body
        pose = x[6:].reshape(self.nj, 3)
        nh = (self.nj - nb) // 2
        return replace(template, betas=self.betas, transl=x[None, :3], global_orient=x[None, 3:6],
                       body_pose=pose[None, :nb], left_hand_pose=pose[None, nb:nb + nh],
                       right_hand_pose=pose[None, nb + nh:])

    # -- model ------------------------------------------------------------------------------
    def _evaluate(self, x: torch.Tensor) -> _FitState:
        """Landmarks (forward kinematics, no autograd graph) and residuals at parameters x."""
        # the fitted bones' rotations and the global one in one call; the others stay identity
        Rall = rotvec_to_rotmat(torch.cat([x[6:], x[3:6]]).reshape(self.nj + 1, 3))
        R = self._eye_nb.index_copy(0, self.posed, Rall[:-1])
        # Anny's forward kinematics, as AnnyBodyModel does, on the chain cached for the shape
        skin_T, W = anny_forward_kinematics(self.anny, R[None], self.rest_bone_poses, self.chain)
        T, W = skin_T[0], W[0]
        y = torch.einsum("jab,kjb->kja", T[:, :3, :3], self.A) + T[None, :, :3, 3] * self.s[..., None]
        reg = y.sum(1)                                                            # (Kr, 3)
        lm = torch.where(self.is_head[:, None], W[self.bone, :3, 3], reg[self.row])
        Rg = Rall[-1]
        lm_world = lm @ Rg.T + x[:3]
        Z = lm_world[:, 2].clamp(min=1e-3)
        K = self._K
        f, c = torch.stack([K[0, 0], K[1, 1]]), torch.stack([K[0, 2], K[1, 2]])
        uv = lm_world[:, :2] / Z[:, None] * f + c                                # fitting.project
        r = (uv - self._xy) / self._h
        prior = self._prior_energy(x)
        if self._extra_on():
            rx, wx = self._extra_residuals(lm_world, Rg)
            prior = prior + (wx * rx * rx).sum()
        return _FitState(x, prior, lm_world, W, y, Rg, r, Z)

    def _torso_on(self) -> bool:
        return self._lean_w > 0 or self._up_w > 0

    def _cue_on(self) -> bool:
        return bool((self._cue_w > 0).any())

    def _extra_on(self) -> bool:
        return self._torso_on() or self._cue_on()

    def _extra_residuals(self, lm_world: torch.Tensor, Rg: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """The residuals (M,) of the terms beside the reprojection and the priors, and their
        weights (M,): the torso prior's five (:meth:`_torso_residuals`) when it is on, then
        the depth cue's (:meth:`_cue_residuals`, one per bone) when it is on."""
        r, w = [], []
        if self._torso_on():
            r.append(self._torso_residuals(lm_world, Rg))
            w.append(self._torso_weights())
        if self._cue_on():
            r.append(self._cue_residuals(lm_world))
            w.append(self._cue_w)
        return torch.cat(r), torch.cat(w)

    def _cue_residuals(self, lm_world: torch.Tensor) -> torch.Tensor:
        """(B,) the depth cue: for each bone of :data:`DEPTH_BONES` (torso, arms, legs), the
        camera-axis component of the fitted bone's unit vector minus the one of MediaPipe's
        3D pose (``_cue_t``). The 2D landmarks leave a bone's sign of depth (towards or away
        from the camera) to the priors; the 3D pose tells it."""
        return bone_depths(lm_world[:33]) - self._cue_t

    def _cue_rows(self, st: _FitState, dl: torch.Tensor) -> torch.Tensor:
        """(B, N) Jacobian of :meth:`_cue_residuals` given ``dl (33, 3, N)``, the Jacobian of
        the camera-frame pose landmarks (the rows of :data:`DEPTH_BONES`' landmarks set)."""
        u = self._bone_D @ st.lm_world[:33]                                      # (B, 3)
        n = u.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        uh = u / n
        ez = torch.zeros_like(uh)
        ez[:, 2] = 1.0
        g = (ez - uh[:, 2:3] * uh) / n                                           # d uh_z / d u
        du = torch.einsum("bl,lan->ban", self._bone_D, dl)                       # (B, 3, N)
        return torch.einsum("ba,ban->bn", g, du)

    def _body_down(self, xy: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(3,) unit camera-frame direction, in the image plane, from the head to the hips as
        the 2D landmarks show it: perpendicular to the shoulder line (11 -> 12), on the side
        away from the nose (0); the image's +y when the shoulders or the nose are not seen."""
        down = torch.tensor([0.0, 1.0, 0.0], device=self.device)
        if bool((c[[0, 11, 12]] > 0).all()):
            sl = xy[12] - xy[11]
            perp = torch.stack([-sl[1], sl[0]])
            if float(perp @ (0.5 * (xy[11] + xy[12]) - xy[0])) < 0:
                perp = -perp
            if float(perp.norm()) > 1e-6:
                down = torch.cat([perp / perp.norm(), perp.new_zeros(1)])
        return down

    @staticmethod
    def _lean(lm_world: torch.Tensor) -> torch.Tensor:
        """Torso lean along the camera axis: the z component (camera frame) of the unit vector
        from the shoulder midpoint to the hip midpoint (pose landmarks 11, 12 / 23, 24); 0 =
        the torso in the image plane, > 0 = the top of the torso towards the camera."""
        u = torso_vector(lm_world)
        return u[2] / u.norm().clamp(min=1e-6)

    def _torso_weights(self) -> torch.Tensor:
        """(5,) weights of :meth:`_torso_residuals`: the lean's on the lean and the hinge, the
        pelvis' on its up vector."""
        w = torch.full((5,), self._lean_w, device=self.device)
        w[2:] = self._up_w
        return w

    def _torso_residuals(self, lm_world: torch.Tensor, Rg: torch.Tensor) -> torch.Tensor:
        """(5,) residuals of the torso prior: the lean's distance to its target; how far the
        torso turns more than 60 deg away from the image's "down" of the body
        (``self._down``, perpendicular to the 2D shoulder line, away from the nose; 0 inside
        that cone), which keeps the lean term's mirror solution (a torso turned over, hips
        above the shoulders, with the same lean) out of reach; and the pelvis' up vector
        ``Rg up_model`` minus ``_up_target`` (3), which keeps the
        held legs under the body instead of swinging with a pelvis nothing in view fixes
        (its turn about the up axis stays free)."""
        u = torso_vector(lm_world)
        u = u / u.norm().clamp(min=1e-6)
        up = Rg @ self._up_model - self._up_target
        return torch.cat([torch.stack([u[2] - self._lean_target, torch.relu(0.5 - u @ self._down)]), up])

    def _torso_rows(self, st: _FitState, dl: torch.Tensor, LJ_go: torch.Tensor) -> torch.Tensor:
        """(5, N) Jacobian of :meth:`_torso_residuals` given ``dl (33, 3, N)``, the Jacobian
        of the camera-frame pose landmarks (rows 11, 12, 23, 24 set), and ``LJ_go (3, 3)``,
        the left Jacobian of the global orientation."""
        u = torso_vector(st.lm_world)
        n = u.norm().clamp(min=1e-6)
        uh = u / n
        du = torso_vector(dl)                                               # (3, N)
        ez = torch.zeros_like(u)
        ez[2] = 1.0
        rows = []
        for axis, sign, active in ((ez, 1.0, True), (self._down, -1.0, bool(uh @ self._down < 0.5))):
            g = (axis - (uh @ axis) * uh) / n                                      # d (uh . axis) / d u
            rows.append(sign * (g @ du) if active else torch.zeros_like(du[0]))
        J_up = du.new_zeros(3, du.shape[1])       # d (Rg u) / d omega = -[Rg u]_x LJ(omega)
        J_up[:, 3:6] = -_skew(st.Rg @ self._up_model) @ LJ_go
        return torch.cat([torch.stack(rows), J_up])

    def _energy(self, st: _FitState, sigma: float) -> torch.Tensor:
        """Total energy of a state with Geman-McClure scale ``sigma``."""
        r2 = (st.r * st.r).sum(-1)
        s2 = sigma * sigma
        return (self._c * (s2 * r2 / (r2 + s2))).sum() / s2 + st.prior

    def _prior_energy(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        pose = x[6:].reshape(self.nj, 3)
        e = ((self._w_prior * (pose * pose).sum(-1)).sum()
             + cfg.w_limit * (torch.relu(pose.norm(dim=-1) - self._lim) ** 2).sum())
        if self.knees.numel():
            k = pose[self.knees]
            e = e + cfg.w_limit * ((torch.relu(-k[:, 0]) ** 2).sum() + (k[:, 1:] ** 2).sum())
        d = x - self._x_pred
        return e + (self._wt * d * d).sum()

    def _set_frame(self, kp: Keypoints2D, K: torch.Tensor, pose_weight: np.ndarray | None,
                   torso: TorsoPrior | None, depth_cue: float) -> None:
        """The frame's targets (:meth:`fit`'s arguments of the same names): the landmarks
        ``_xy`` and confidences ``_c``, the bbox height and camera, the torso prior's weights
        and targets, and the depth cue's (0 in a frame without a 3D pose)."""
        tg = _Targets(kp, self.body, self.cfg, self.device)
        self._xy = torch.cat([tg.pose_xy[0], tg.hand_xy[0].reshape(-1, 2)])          # (L, 2)
        pose_c = tg.pose_c[0]
        if pose_weight is not None:
            pose_c = pose_c * torch.as_tensor(np.asarray(pose_weight), dtype=pose_c.dtype,
                                              device=pose_c.device)
        self._c = torch.cat([pose_c, tg.hand_c[0].reshape(-1)])                    # (L,)
        self._h, self._K = tg.h[0], K
        torso = torso or TorsoPrior(0.0, 0.0)
        self._lean_w, self._lean_target = float(torso.lean_weight), float(torso.lean)
        self._up_w = float(torso.up_weight)
        self._up_target = torch.as_tensor(torso.up, dtype=torch.float32, device=self.device).reshape(3)
        if self._lean_w > 0:
            self._down = self._body_down(self._xy[:33], self._c[:33])
        self._cue_w = torch.zeros_like(self._cue_w)
        if depth_cue > 0 and bool(kp.has_world[0]):
            self._cue_t = tg.cue_t[0]
            self._cue_w = float(depth_cue) * bone_confidence(pose_c)

    def _set_temporal(self, temporal: float, temporal_transl: float, root_weight: float) -> None:
        """The per-parameter weights ``_wt (N,)`` of the temporal term of :meth:`_prior_energy`:
        ``temporal`` on the rotations, ``root_weight`` times it on the global orientation and
        ``root_weight * temporal_transl`` on the translation."""
        self.temporal, self.temporal_transl = float(temporal), float(temporal_transl)
        self._root_weight = float(root_weight)
        wt = torch.full((self.n,), self.temporal, device=self.device)
        wt[3:6] = self._root_weight * self.temporal
        wt[:3] = self._root_weight * self.temporal_transl
        self._wt = wt

    def _prior_grad_hess(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient (N,) and Gauss-Newton Hessian (N, N) of :meth:`_prior_energy`."""
        cfg = self.cfg
        pose = x[6:].reshape(self.nj, 3)
        w2 = (2 * self._w_prior)[:, None]                                         # (P, 1)
        norm = pose.norm(dim=-1)
        over = torch.relu(norm - self._lim)
        u = pose / norm.clamp(min=1e-8)[:, None]
        act2 = (2 * cfg.w_limit) * (over > 0).to(x.dtype)
        gp = w2 * pose + (2 * cfg.w_limit) * over[:, None] * u                    # (P, 3)
        Hp = act2[:, None, None] * (u[:, :, None] * u[:, None, :])                # (P, 3, 3)
        Hp.diagonal(dim1=1, dim2=2).add_(w2)
        if self.knees.numel():
            k = pose[self.knees]
            neg = (k[:, 0] < 0).to(x.dtype)
            gk = torch.stack([2 * k[:, 0] * neg, 2 * k[:, 1], 2 * k[:, 2]], -1) * cfg.w_limit
            two = torch.full_like(neg, 2.0)
            hk = torch.stack([2 * neg, two, two], -1) * cfg.w_limit
            gp = gp.index_add(0, self.knees, gk)
            Hp = Hp.index_add(0, self.knees, torch.diag_embed(hk))
        g = 2 * self._wt * (x - self._x_pred)
        g[6:] += gp.reshape(-1)
        H = x.new_zeros(self.n, self.n)
        H[self._block_r, self._block_c] = Hp.reshape(-1)                          # block diagonal
        H.diagonal().add_(2 * self._wt)
        return g, H

    def _jacobian(self, st: _FitState) -> torch.Tensor:
        """(L, 2, N) Jacobian of the normalised residuals ``st.r`` w.r.t. the parameters, and
        the (M, N) Jacobian of :meth:`_extra_residuals` (the torso prior's rows,
        :meth:`_torso_rows`, then the depth cue's, :meth:`_cue_rows`) when either is on,
        else None."""
        x, W, Rg = st.x, st.W, st.Rg
        heads = W[:, :3, 3]                                                       # (nb, 3)
        hP = heads[self.posed]                                                    # (P, 3)
        M = W[self.posed_parent, :3, :3] @ self.Upt                               # (P, 3, 3)
        Y = torch.einsum("kjd,cj->kcd", st.y, self.descP)                        # (Kr, P, 3)
        v_reg = (Y - self.S[..., None] * hP[None])[self.row]                       # (L, P, 3)
        v_head = (heads[self.bone][:, None] - hP[None]) * self.descP[:, self.bone].T[..., None]
        v = torch.where(self.is_head[:, None, None], v_head, v_reg)                # (L, P, 3)
        # d lm_model / d w_c = -[v]_x M_c, chained with the left Jacobian of each bone's rotvec
        LJ = _left_jacobian(torch.cat([x[6:], x[3:6]]).reshape(self.nj + 1, 3))    # (P+1, 3, 3)
        MJ = M @ LJ[:-1]                                                          # (P, 3, 3)
        Jm = -torch.einsum("lcab,cbd->lcad", _skew(v), MJ)                        # (L, P, 3, 3)
        K, Z, X = self._K, st.Z, st.lm_world
        zero = torch.zeros_like(Z)
        proj = torch.stack([K[0, 0] / Z, zero, -K[0, 0] * X[:, 0] / Z ** 2,
                            zero, K[1, 1] / Z, -K[1, 1] * X[:, 1] / Z ** 2], -1).reshape(-1, 2, 3)
        proj = proj / self._h                                                     # (L, 2, 3)
        PR = proj @ Rg                                                            # (L, 2, 3)
        J_pose = torch.einsum("lia,lcad->licd", PR, Jm).reshape(len(X), 2, -1)
        J_go = proj @ (-_skew(X - x[:3])) @ LJ[-1]                                # (L, 2, 3)
        J = torch.cat([proj, J_go, J_pose], -1)
        if not self._extra_on():
            return J, None
        # the camera-frame Jacobian of the landmarks of the torso prior and the depth cue
        sel = torch.tensor(_PRIOR_LANDMARKS, device=self.device)
        eye = torch.eye(3, device=self.device).expand(len(sel), 3, 3)
        J3_go = -_skew(X[sel] - x[:3]) @ LJ[-1]                                    # (S, 3, 3)
        J3_pose = torch.einsum("ab,lcbd->lacd", Rg, Jm[sel]).reshape(len(sel), 3, -1)
        dl = J.new_zeros(33, 3, J.shape[-1])
        dl[sel] = torch.cat([eye, J3_go, J3_pose], -1)
        rows = []
        if self._torso_on():
            rows.append(self._torso_rows(st, dl, LJ[-1]))
        if self._cue_on():
            rows.append(self._cue_rows(st, dl))
        return J, torch.cat(rows)

    # -- fit --------------------------------------------------------------------------------
    def fit(self, kp: Keypoints2D, K: torch.Tensor, init: BodyParams, iters: int,
            temporal: float = 0.0, temporal_transl: float = 0.0, damping: float = 1e-3,
            tol: float = 1e-5,
            sigma_schedule: tuple[float, ...] = (),
            frozen: torch.Tensor | None = None,
            root_weight: float = 1.0, torso: TorsoPrior | None = None,
            pose_weight: np.ndarray | None = None,
            depth_cue: float = 0.0) -> tuple[BodyParams, BodyOutput, int]:
        """Levenberg-Marquardt from ``init`` on one frame's keypoints.

        Args:
            kp: Keypoints2D with T = 1 (pixels).
            K: (3, 3) intrinsics on the fit's device.
            init: BodyParams batch 1, the warm start (also theta_pred of the temporal term).
            iters: maximum accepted LM iterations.
            temporal: weight of the temporal term on the rotations (class docstring).
            temporal_transl: weight of ``||t - t_pred||^2`` (metres) on the translation.
            damping: initial Marquardt damping (times diag of the Gauss-Newton Hessian).
            tol: stop when an iteration at the final scale lowers the energy by less than this
                fraction.
            sigma_schedule: graduated non-convexity: iteration k uses the Geman-McClure scale
                ``sigma * sigma_schedule[k]`` (then ``sigma``), so landmarks far from the warm
                start (a hand that just appeared) are pulled in before the robust kernel of
                the final energy would treat them as outliers.
            frozen: (N,) bool parameters held at their value in ``init`` (no step is taken
                on them: their rows / columns of the normal equations are replaced by the
                identity), e.g. the legs of a partial view (:class:`BodyTracker`).
            root_weight: multiplier of both temporal weights on the root (translation and
                global orientation); > 1 steadies the pelvis when the hips are not seen.
            torso: :class:`TorsoPrior` for frames without hips: ``lean_weight`` times the
                squares of ``lean - torso.lean``, with ``lean`` the camera-axis component of
                the unit vector from the shoulder midpoint to the hip midpoint
                (:meth:`_lean`; 0 = torso in the image plane), and of a hinge that keeps the
                torso within 60 deg of the body's "down" in the image (the lean's mirror
                solution, a torso turned over, is otherwise as good); plus ``up_weight *
                |R up_model - torso.up|^2``, holding the pelvis' up vector (camera frame).
                Gauss-Newton terms with the analytic Jacobian (:meth:`_torso_residuals`).
                None = no prior.
            pose_weight: (33,) multipliers of the pose landmarks' confidences, applied after
                the visibility threshold (a landmark faded out gradually); None = all 1.
            depth_cue: weight of the depth cue (0 = off, and off in a frame without
                ``kp.pose_world``): ``depth_cue * min(c) * (uz - uz_3d)^2`` for each bone of
                :data:`DEPTH_BONES` (torso, upper arms, forearms, thighs, shins), with ``uz``
                the camera-axis component of the fitted bone's unit vector, ``uz_3d`` the
                same of MediaPipe's 3D pose (``kp.pose_world``, camera-aligned axes) and
                ``min(c)`` the lowest confidence of the bone's landmarks as the reprojection
                uses them (``pose_weight`` included; :meth:`_cue_residuals`).
        Returns:
            (fitted BodyParams on the fit's device with this fit's betas, BodyOutput of it
            without vertices, number of body-model evaluations).
        """
        cfg = self.cfg
        self._set_frame(kp, K, pose_weight, torso, depth_cue)
        self._set_temporal(temporal, temporal_transl, root_weight)
        x = self.pack(init)
        self._x_pred = x.clone()
        keep = None
        if frozen is not None and bool(frozen.any()):
            keep = frozen.to(self.device, torch.bool)
        st = self._evaluate(x)
        evals, lam = 1, float(damping)
        for k in range(iters):
            sigma = cfg.sigma * (sigma_schedule[k] if k < len(sigma_schedule) else 1.0)
            s2 = sigma * sigma
            e0 = self._energy(st, sigma)
            J, J_lean = self._jacobian(st)                                        # (L, 2, N)
            r2 = (st.r * st.r).sum(-1)
            a = self._c * s2 / (r2 + s2) ** 2                                      # IRLS weights
            Jw = J * a.sqrt()[:, None, None]
            Jf, rf = Jw.reshape(-1, self.n), (st.r * a.sqrt()[:, None]).reshape(-1)
            gp, Hp = self._prior_grad_hess(st.x)
            g = 2 * Jf.T @ rf + gp
            H = 2 * Jf.T @ Jf + Hp
            if J_lean is not None:  # torso prior and depth cue (Gauss-Newton terms)
                rt, wt = self._extra_residuals(st.lm_world, st.Rg)
                g = g + 2 * ((wt * rt) @ J_lean)
                H = H + 2 * (J_lean.T @ (wt[:, None] * J_lean))
            if keep is not None:  # held parameters: identity rows / columns, zero gradient
                g = torch.where(keep, torch.zeros_like(g), g)
                H = H.masked_fill(keep[:, None] | keep[None, :], 0.0)
                H = H + torch.diag(keep.to(H.dtype))
            diag = H.diagonal().clamp(min=1e-6)
            accepted = False
            for _ in range(6):
                A = H + torch.diag(lam * diag)                                    # SPD
                L, info = torch.linalg.cholesky_ex(A)
                step = (torch.cholesky_solve(-g[:, None], L)[:, 0] if int(info) == 0
                        else torch.linalg.lstsq(A, -g[:, None]).solution[:, 0])
                new = self._evaluate(st.x + step)
                evals += 1
                e1 = self._energy(new, sigma)
                if bool(torch.isfinite(e1)) and e1 <= e0:
                    accepted = True
                    break
                lam *= 10.0
            if not accepted:
                if k + 1 >= len(sigma_schedule):
                    break
                continue
            st, lam = new, max(lam * 0.3, 1e-7)
            if k + 1 >= len(sigma_schedule) and float(e0 - e1) < tol * max(float(e0), 1e-12):
                break
        p = self.unpack(st.x, init)
        mask = self.pose_mask[:, None].to(st.lm_world.dtype)
        G = torch.eye(4, device=self.device)
        G[:3, :3], G[:3, 3] = st.Rg, st.x[:3]
        out = BodyOutput(vertices=None, pose_landmarks=(st.lm_world[:33] * mask)[None],
                         hand_landmarks=st.lm_world[33:].reshape(1, 2, 21, 3),
                         head_transform=(G @ st.W[self.head_bone])[None])
        return p, out, evals


@dataclass
class LiveFitConfig:
    """Schedule of the per-frame fit (:class:`BodyTracker`).

    Attributes:
        method: ``gauss-newton`` (default; Levenberg-Marquardt with an analytic Jacobian,
            :class:`GaussNewtonFit`, Anny only, other body models use Adam) or ``adam``
            (``iters`` Adam steps through autograd, any body model).
        gn_iters: maximum Levenberg-Marquardt iterations per frame (fewer when converged).
        temporal: weight of ``||theta - theta_pred||^2`` (radians) on the rotations in the
            Gauss-Newton fit: keeps parameters the frame does not constrain (a hand out of
            view) at the warm start instead of letting the priors snap them to rest.
        damping: initial Marquardt damping of the Gauss-Newton fit.
        sigma_schedule: Geman-McClure scale multipliers of the first Gauss-Newton iterations
            (graduated non-convexity, see :meth:`GaussNewtonFit.fit`); later iterations
            minimise the capture energy itself.
        iters: Adam iterations per frame, warm-started from the previous frame (full stage:
            orientation, translation, body and finger poses); ``method="adam"`` only.
        lr: Adam learning rate of the per-frame iterations (radians / metres per step scale).
        init_global, init_body, init_hands: iterations of the full fit of a first frame.
        reinit_after: frames without a person after which the next detection is fitted from
            scratch (the person may have come back elsewhere).
        extrapolate: the warm start is the previous fit plus this fraction of the last
            frame-to-frame change (constant-velocity prediction; 0 = previous fit).
        lower_body: ``stand`` | ``sit``: the leg pose held while the legs are not seen
            (partial view, e.g. a desk webcam; see :class:`BodyTracker`).
        min_visibility, frame_margin: a pose landmark is seen when its MediaPipe visibility
            is at least ``min_visibility`` and it lies inside the frame extended by
            ``frame_margin`` x its height (:func:`landmarks_seen`).
        legs_return_after: frames the knees and ankles must be seen in a row before the legs
            follow the tracking again (no flicker at the frame edge).
        partial_root_weight: multiplier of the temporal weights on the root (translation and
            global orientation) while the hips are not seen: the pelvis then has no landmark
            of its own and would otherwise sway with every shoulder movement.
        hip_edge_margin: hips seen within this many shoulder-to-hip lengths (in the image)
            of the frame's lower edge fade out of the fit (weight ``gap / margin``, 0 at the
            edge) while the lean prior fades in: MediaPipe places the hips of a cropped view
            too high near its edge (on taiji's head-to-waist crop the 2D torso is 0.91 of the
            full frame's), which the fit explained by leaning the torso back 24 deg. A fade,
            not a switch: hips crossing the margin do not jolt the torso.
        lean_prior: weight of the torso lean prior while the hips are not seen (0 = off):
            ``lean_prior * (lean - lean_ref)^2`` on the camera-axis component of the unit
            shoulder-to-hip vector (:meth:`GaussNewtonFit.fit`, ``lean``). Nothing else in a
            frame without hips fixes the torso's pitch: without it the torso rocks towards
            and away from the camera by tens of degrees (taiji, top 42 %: -67..+46 deg, p10..p90).
        pelvis_prior: while the hips are not seen, the weight that holds the pelvis' up vector
            (camera frame) at its running mean over frames with clear hips (the camera's up
            until then; 0 = off), so the held legs stay under the body: without it the pelvis
            pitched and rolled with the shoulders and the standing legs kicked forward or
            sideways (contact sheet of a desk window of taiji, 2026-12-03). Its turn about
            the up axis stays free.
        lean_memory: ``m`` of the running means ``ref <- m ref + (1 - m) value`` of the fitted
            lean and pelvis up vector over frames whose hips are seen clear of the edge, the
            targets of the two priors; upright to the camera until then, as for a desk webcam
            that never sees the hips.
        depth_cue: weight of the depth cue from MediaPipe's 3D pose (``Keypoints2D.pose_world``;
            :meth:`GaussNewtonFit.fit`, ``depth_cue``; 0 = off): the camera-axis component of
            each torso, arm and leg bone's direction is pulled towards the 3D pose's. The 2D
            landmarks alone leave each bone's sign of depth to the priors: on basketball the
            full-frame fit leaned the torso 36 deg back while the player bends 26-29 deg
            towards the camera, and a head-to-waist crop's elbows and wrists were 17-19 cm
            (3D median) from the full frame's; with the cue 4.6 (taiji) to 11.1 cm
            (basketball, hands and hips out of the crop) (2026-12-04). Also the weight of the
            first frame's full fit (``FitConfig.w_depth``).
        partial_floor: while the legs are held, upper-body landmarks inside the frame get at
            least this confidence (MediaPipe lowers the visibility of arms in a cropped view
            although it still places them; 0 = off, the default).
        jump_scale, jump_refuse: identity gate (:class:`IdentityGate`): a detection whose
            shoulder centre moves more than ``jump_scale`` upper-body sizes in one frame is
            refused for up to ``jump_refuse`` frames (another person picked up).
    """

    method: str = "gauss-newton"
    gn_iters: int = 5
    temporal: float = 0.01
    temporal_transl: float = 10.0
    damping: float = 1e-2
    sigma_schedule: tuple[float, ...] = (8.0, 4.0, 2.0)
    iters: int = 12
    lr: float = 0.02
    init_global: int = 30
    init_body: int = 80
    init_hands: int = 30
    reinit_after: int = 15
    extrapolate: float = 0.5
    lower_body: str = "stand"
    min_visibility: float = 0.5
    frame_margin: float = 0.0
    legs_return_after: int = 3
    partial_root_weight: float = 10.0
    partial_floor: float = 0.0
    hip_edge_margin: float = 0.5
    lean_prior: float = 10.0
    lean_memory: float = 0.9
    pelvis_prior: float = 100.0
    depth_cue: float = 1.0
    jump_scale: float = 1.5
    jump_refuse: int = 5


class IdentityGate:
    """Keeps following the same person: refuses a sudden jump of the tracked body.

    MediaPipe Holistic follows one person; when several are in view it can switch to another
    from one frame to the next. The gate measures the shoulder centre (pixels) of each
    detection against the last accepted one, in units of the person's upper-body size
    ``max(shoulder width, 2 |nose - shoulder centre|)`` (running median of accepted frames,
    so it adapts to the distance from the camera). A move larger than ``jump_scale`` sizes in
    one frame is refused (the caller holds the last pose) for up to ``refuse_frames`` frames;
    a jump that persists that long (the same new place for every refused frame) is accepted
    as a real move and the tracking restarts there. After ``reset`` (or a frame without a
    person for longer than the caller's re-initialisation) any detection is accepted.

    Call: ``gate(kp) -> (accept: bool, restarted: bool)`` with ``kp`` a one-frame
    :class:`Keypoints2D` that has a pose.
    """

    def __init__(self, jump_scale: float = 1.5, refuse_frames: int = 5, window: int = 15):
        self.jump_scale = float(jump_scale)
        self.refuse_frames = int(refuse_frames)
        self.window = int(window)
        self.reset()

    def reset(self) -> None:
        self.centre: np.ndarray | None = None
        self.sizes: list[float] = []
        self.candidate: np.ndarray | None = None
        self.refused = 0

    @staticmethod
    def measure(kp: Keypoints2D) -> tuple[np.ndarray, float]:
        """Shoulder centre (2,) px and upper-body size (px) of a one-frame ``kp``."""
        p = kp.pose[0, :, :2].astype(np.float64)
        c = 0.5 * (p[11] + p[12])
        size = max(float(np.linalg.norm(p[11] - p[12])), 2.0 * float(np.linalg.norm(p[0] - c)), 1.0)
        return c, size

    def __call__(self, kp: Keypoints2D) -> tuple[bool, bool]:
        c, size = self.measure(kp)
        if self.centre is None:
            self._accept(c, size)
            return True, True
        ref = float(np.median(self.sizes))
        if np.linalg.norm(c - self.centre) <= self.jump_scale * ref:
            self.candidate, self.refused = None, 0
            self._accept(c, size)
            return True, False
        # a jump: refuse it unless it stays where it jumped to for refuse_frames frames
        if self.candidate is not None and np.linalg.norm(c - self.candidate) <= self.jump_scale * size:
            self.refused += 1
        else:
            self.refused = 1
        self.candidate = c
        if self.refused > self.refuse_frames:
            self.reset()
            self._accept(c, size)
            return True, True
        return False, False

    def _accept(self, c: np.ndarray, size: float) -> None:
        self.centre = c
        self.sizes = (self.sizes + [size])[-self.window:]


class BodyTracker:
    """Fits the body to one frame of keypoints at a time, warm-started (module docstring).

    Partial views (a desk webcam that sees the person from head to waist): when a knee or an
    ankle is not seen (:func:`landmarks_seen`: low visibility or outside the frame), the leg
    landmarks are left out of the fit and the lower-body joints
    (:func:`lower_body_joints`) are held at ``config.lower_body``'s pose -- ``stand`` (the
    ``stand_pose`` given, e.g. the avatar's straightest-legged training frame, else straight
    legs) or ``sit`` (:func:`seated_leg_pose`) -- exactly, so they do not jitter, while the
    arms, hands and head keep following. When the hips are not seen either, their landmarks
    are left out too (hips within ``config.hip_edge_margin`` torso lengths of the frame's
    lower edge, where MediaPipe misplaces them, fade out), the root's temporal weights are
    raised (``config.partial_root_weight``), and a torso prior (``config.lean_prior``,
    ``config.pelvis_prior``) holds the torso's pitch to the camera and the pelvis' up vector
    at those of the last frames that showed the hips (upright when none did): nothing in the
    frame fixes them, and without it the torso rocked and the held legs swung. The legs
    follow the tracking again after ``config.legs_return_after`` frames in a row with knees
    and ankles in view. A sudden jump of the tracked person is refused by an :class:`IdentityGate`.

    Args:
        body: the avatar's body model.
        betas: (1, n_betas) the avatar's shape, held fixed.
        config: :class:`LiveFitConfig`.
        device: fitting device (CPU is usually faster: the fit is many tiny ops).
        stand_pose: (J, 3) body pose whose lower-body joints are the ``stand`` pose (radians);
            None: straight legs (zeros).

    Call: ``tracker(kp, K, frame_size=None) -> BodyParams`` (batch 1, on CPU, betas = the
    avatar's) or None when the frame has no person or its detection was refused (the caller
    keeps showing the last pose). ``frame_size = (W, H)`` of the frame (None: ``2 c_x, 2 c_y``
    of ``K``). :attr:`view` says what the last frame showed (``legs_seen``, ``hips_seen``,
    ``legs_held``, ``refused``).

    Raises:
        ValueError: an unknown fit method or lower-body mode, or keypoints of more than one frame.
    """

    def __init__(self, body: BodyModel, betas: torch.Tensor, config: LiveFitConfig | None = None,
                 device: str | torch.device = "cpu", stand_pose: torch.Tensor | None = None):
        self.body = FixedShapeBody(body, betas)
        self._raw_body = body
        self.betas = betas.reshape(1, -1).detach().cpu()
        self.config = config or LiveFitConfig()
        self.device = torch.device(device)
        self.prev: BodyParams | None = None
        self.prev2: BodyParams | None = None
        self.lost = 0
        self.last_was_init = False
        #: BodyOutput (no vertices) of the last returned fit when the fit computed it (the
        #: Gauss-Newton fit does), else None; saves the caller a body-model forward
        self.last_output: BodyOutput | None = None
        if self.config.method not in ("gauss-newton", "adam"):
            raise ValueError(f"unknown live fit method {self.config.method!r}: use gauss-newton or adam")
        if self.config.lower_body not in LOWER_BODY_MODES:
            raise ValueError(f"unknown lower-body mode {self.config.lower_body!r}: use "
                             + " or ".join(LOWER_BODY_MODES))
        self._gn: GaussNewtonFit | None = None
        if self.config.method == "gauss-newton" and getattr(body, "name", None) == "anny":
            self._gn = GaussNewtonFit(body, betas, FitConfig(), self.device)
        self.leg_joints = lower_body_joints(body)
        J = body.num_body_joints
        self._hold_poses: dict[str, torch.Tensor] = {
            "stand": (torch.zeros(J, 3) if stand_pose is None
                      else torch.as_tensor(stand_pose, dtype=torch.float32).reshape(J, 3).clone())}
        self.gate = IdentityGate(self.config.jump_scale, self.config.jump_refuse)
        self._legs_seen_run = 0
        self.legs_held = False
        self._reset_torso_refs()
        self.view: dict = {}

    @property
    def method(self) -> str:
        """The per-frame fit in use: ``gauss-newton`` or ``adam`` (other body models)."""
        return "gauss-newton" if self._gn is not None else "adam"

    @property
    def lower_body(self) -> str:
        return self.config.lower_body

    def set_lower_body(self, mode: str) -> None:
        """Switch the held leg pose (``stand`` | ``sit``); takes effect on the next frame.

        Raises:
            ValueError: an unknown mode.
        """
        if mode not in LOWER_BODY_MODES:
            raise ValueError(f"unknown lower-body mode {mode!r}: use " + " or ".join(LOWER_BODY_MODES))
        self.config = replace(self.config, lower_body=mode)

    def hold_pose(self, mode: str | None = None) -> torch.Tensor:
        """(J, 3) body pose whose lower-body joints are held in ``mode`` (default: the config's)."""
        mode = mode or self.config.lower_body
        if mode not in self._hold_poses:
            self._hold_poses[mode] = seated_leg_pose(self._raw_body, self.betas)
        return self._hold_poses[mode]

    def reset(self) -> None:
        self.prev = self.prev2 = None
        self.lost = 0
        self.last_output = None
        self.gate.reset()
        self._legs_seen_run = 0
        self.legs_held = False
        self._reset_torso_refs()

    def _reset_torso_refs(self) -> None:
        """The lean and the pelvis' up (camera frame) that the torso prior holds: upright to
        the camera until frames with clear hips give running means."""
        self._lean_ref = 0.0
        self._up_ref = np.array([0.0, -1.0, 0.0])

    def _predict(self) -> BodyParams:
        """Warm start: previous fit + ``extrapolate`` x its last change (axis-angle deltas are
        small between frames, so they are extrapolated component-wise)."""
        a = self.config.extrapolate
        if self.prev2 is None or a <= 0:
            return self.prev
        p, q = self.prev, self.prev2
        fields = ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "transl")
        return replace(p, **{f: getattr(p, f) + a * (getattr(p, f) - getattr(q, f)) for f in fields})

    def _with_legs(self, p: BodyParams) -> BodyParams:
        bp = p.body_pose.clone()
        idx = torch.as_tensor(self.leg_joints, dtype=torch.long, device=bp.device)
        bp[:, idx] = self.hold_pose().to(bp.device, bp.dtype)[idx][None]
        return replace(p, body_pose=bp)

    def _lost(self) -> None:
        c = self.config
        self.lost += 1
        if self.lost > c.reinit_after:
            self.prev = None
            self.gate.reset()
        self.prev2 = None  # no velocity across a gap

    def __call__(self, kp: Keypoints2D, K: np.ndarray,
                 frame_size: tuple[int, int] | None = None) -> BodyParams | None:
        c = self.config
        if kp.num_frames != 1:
            raise ValueError(f"BodyTracker fits one frame at a time, got {kp.num_frames}")
        self.view = {"person": bool(kp.pose_valid[0]), "refused": False}
        if not kp.pose_valid[0]:
            self._lost()
            return None
        accept, restarted = self.gate(kp)
        if not accept:
            self.view["refused"] = True
            self._lost()
            return None
        if restarted and self.prev is not None:
            log.info("tracking restarted: the tracked person moved too far to be the same one")
            self.prev = self.prev2 = None
        self.lost = 0
        self.last_output = None
        # partial view: which of the hips / legs the frame shows
        if frame_size is None:
            K_ = np.asarray(K, np.float64)
            frame_size = (int(round(2 * K_[0, 2])), int(round(2 * K_[1, 2])))
        seen = landmarks_seen(kp, frame_size, c.min_visibility, c.frame_margin)
        legs_seen = bool(seen[[25, 26, 27, 28]].all())
        hips_seen = bool(seen[list(HIP_LANDMARKS)].all())
        # how far the hips can be trusted: 0 at the frame's lower edge (MediaPipe places them
        # too high there), 1 from hip_edge_margin torso lengths above it; a linear fade, so a
        # hip moving across the margin does not switch the fit from one frame to the next
        hip_w = 1.0 if hips_seen else 0.0
        if hips_seen and c.hip_edge_margin > 0:
            P = kp.pose[0, :, :2]
            torso = max(float(np.linalg.norm(torso_vector(P))), 1.0)
            gap = (frame_size[1] - float(P[list(HIP_LANDMARKS), 1].max())) / torso
            hip_w = float(np.clip(gap / c.hip_edge_margin, 0.0, 1.0))
        self._legs_seen_run = self._legs_seen_run + 1 if legs_seen else 0
        hold = bool(self.leg_joints) and (not legs_seen or (
            self.legs_held and self._legs_seen_run < c.legs_return_after))
        self.legs_held = hold
        self.view.update(legs_seen=legs_seen, hips_seen=hips_seen, hip_weight=hip_w, legs_held=hold)
        if hold:
            kp = kp.subset(slice(None))
            pose = kp.pose.copy()
            pose[0, list(LEG_LANDMARKS), 2] = 0.0
            if c.partial_floor > 0:
                inside = landmarks_seen(kp, frame_size, -1.0, c.frame_margin)
                up = np.zeros(33, bool)
                up[:23] = inside[:23]
                pose[0, up, 2] = np.maximum(pose[0, up, 2], c.partial_floor)
            if not hips_seen:
                pose[0, list(HIP_LANDMARKS), 2] = 0.0
            elif hip_w < 1.0 and self.prev is not None and self._gn is None:
                pose[0, list(HIP_LANDMARKS), 2] *= hip_w   # (Adam: through the threshold)
            kp.pose = pose
        init = None if self.prev is None else self._predict()
        self.last_was_init = init is None
        if init is not None and hold:
            init = self._with_legs(init)
        if init is not None and self._gn is not None:
            Kt = torch.as_tensor(np.asarray(K), dtype=torch.float32, device=self.device)
            # hips near the edge fade out (a first frame's full fit keeps them: it has no lean
            # prior, and nothing else gives it the body's scale)
            pose_w = None
            if hold and hips_seen and hip_w < 1.0:
                pose_w = np.ones(33)
                pose_w[list(HIP_LANDMARKS)] = hip_w
            frozen = None
            if hold:
                frozen = torch.zeros(self._gn.n, dtype=torch.bool, device=self.device)
                for j in self.leg_joints:
                    frozen[6 + 3 * j:9 + 3 * j] = True
            threads = torch.get_num_threads()
            if self.device.type == "cpu":
                torch.set_num_threads(1)  # tiny ops: intra-op threads only add synchronisation
            try:
                with torch.no_grad():
                    p, self.last_output, _ = self._gn.fit(
                        kp, Kt, init.to(self.device), c.gn_iters, temporal=c.temporal,
                        temporal_transl=c.temporal_transl, damping=c.damping,
                        sigma_schedule=tuple(c.sigma_schedule), frozen=frozen,
                        root_weight=c.partial_root_weight if hold and not hips_seen else 1.0,
                        torso=TorsoPrior((1.0 - hip_w) * c.lean_prior, self._lean_ref,
                                         (1.0 - hip_w) * c.pelvis_prior, tuple(self._up_ref))
                        if hold and hip_w < 1.0 else None, pose_weight=pose_w,
                        depth_cue=c.depth_cue)
            finally:
                torch.set_num_threads(threads)
            p = p.to("cpu")
        else:
            if init is None:
                cfg = FitConfig(iters_global=c.init_global, iters_body=c.init_body,
                                iters_hands=c.init_hands, w_depth=c.depth_cue)
            else:
                cfg = FitConfig(iters_global=0, iters_body=0, iters_hands=c.iters, lr=c.lr,
                                w_depth=c.depth_cue)
            p = fit_sequence(self.body, kp, K, cfg, device=self.device, init=init, show_progress=False)
            if hold:  # the Adam fit cannot freeze joints: put the held legs back
                p = self._with_legs(p)
                self.last_output = None
        p = replace(p, betas=self.betas.clone())
        self.prev2, self.prev = (None if init is None else self.prev), p
        if hip_w >= 1.0 and self.last_output is not None and init is not None:
            # the lean to hold when the hips go out of view (running mean over clear views)
            lean = float(GaussNewtonFit._lean(self.last_output.pose_landmarks[0]))
            self._lean_ref = c.lean_memory * self._lean_ref + (1 - c.lean_memory) * lean
            up = (rotvec_to_rotmat(p.global_orient.float()).reshape(3, 3)
                  @ self._gn._up_model.cpu()).numpy()
            up = c.lean_memory * self._up_ref + (1 - c.lean_memory) * up
            self._up_ref = up / max(float(np.linalg.norm(up)), 1e-6)
        return p
