"""The live avatar runtime: one camera frame in, one avatar frame out (RAM-Avatar, live path).

Per frame, in order (each stage timed, see :data:`STAGES`):

``track``
    MediaPipe Holistic in video mode (:class:`~ram_avatar.runtime.tracking.HolisticTracker`).
``fit``
    body fit warm-started from a constant-velocity prediction, a few Levenberg-Marquardt
    iterations with an analytic landmark Jacobian (Adam for body models other than Anny),
    batch 1, the shape fixed (the avatar's, or the calibrated driver's;
    :class:`~ram_avatar.runtime.tracking.BodyTracker`);
    the first frame with a person gets a full fit. A frame without a person keeps the last
    pose (before anyone was seen: the avatar's first training pose). The fit also returns
    its landmarks, so no second body-model pass is needed.
``retarget``
    onto the avatar's framing (:class:`LiveRetargeter`): the streaming counterpart of
    :func:`ram_avatar.runtime.retarget.retarget` with running medians instead of clip medians.
``align``
    optional motion distribution alignment (Sec. 3.3): ``ram_avatar.motion.mda.MotionAligner``
    of the subject, streamed one frame at a time; skipped when not fitted or not installed.
``maps``
    conditioning maps in the avatar's training crop
    (:class:`~ram_avatar.render.conditioning.ConditioningRenderer`, moderngl or torch raster);
    for the full renderer also whatever extra maps its inputs name (expanded mesh, canonical
    positions) and the previous frame's maps (temporal attention), see :data:`EXTRA_MAP_NAMES`.
``render``
    the neural renderer: ONNX Runtime (``onnx``, default; CPU, or CUDA/TensorRT providers on a
    GPU), the latest training checkpoint in torch (``torch``) or a TensorRT engine
    (``tensorrt``, :mod:`ram_avatar.runtime.trt`).

The runtime imports neither ``ram_avatar.training`` nor ``ram_avatar.capture.pipeline`` nor
``exporters``: the torch backend reads the run's ``config.yaml`` and safetensors checkpoint
itself. Tracking uses the capture package's keypoint record and fitting energy (pure
functions, see :mod:`ram_avatar.runtime.tracking`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ram_avatar.body import load_body_model
from ram_avatar.body.base import BodyModel, BodyParams
from ram_avatar.errors import RamAvatarError
from ram_avatar.io.camera import default_intrinsics, load_camera, undistort_points
from ram_avatar.io.sequence import load_sequence
from ram_avatar.io.subject import Subject
from ram_avatar.models.inputs import BASE_INPUTS, EXTRA_INPUTS, render_options
from ram_avatar.render.conditioning import (
    ConditioningRenderer,
    crop_intrinsics,
    face_to_head_local,
)
from ram_avatar.render.framing import (AvatarComposer, OutputSettings, box_intrinsics, mask_bbox,
                                       project_landmarks)
from ram_avatar.runtime.engines import (OnnxRenderer, OpenVinoRenderer,  # noqa: F401
                                        RendererEngine, TensorRTRenderer, TorchRenderer,
                                        load_renderer_engine, resolve_backend)
from ram_avatar.runtime.engines import to_uint8 as _to_uint8
from ram_avatar.runtime.retarget import FOOT_LANDMARKS, ground_level, load_driver_betas
from ram_avatar.runtime.tracking import (LOWER_BODY_MODES, BodyTracker, HolisticTracker,
                                         LiveFitConfig, lower_body_joints, standing_leg_pose)
from ram_avatar.utils import resolve_device

log = logging.getLogger(__name__)

__all__ = ["AvatarRuntime", "LiveRetargeter", "blend_params", "OnnxRenderer", "OpenVinoRenderer",
           "TorchRenderer", "TensorRTRenderer", "load_renderer_engine", "STAGES", "MAP_NAMES"]

#: timed stages of :meth:`AvatarRuntime.process`, in order (``total`` is added to the stats)
STAGES = ("track", "fit", "retarget", "align", "maps", "render")
#: renderer inputs of every renderer (the input contract, :mod:`ram_avatar.models.inputs`)
MAP_NAMES = BASE_INPUTS
#: optional inputs of the full renderer (ram_avatar.models.renderer), all rendered by the runtime:
#: expanded-mesh maps, canonical-position maps (triplane) and the previous frame's maps
EXTRA_MAP_NAMES = EXTRA_INPUTS


# --------------------------------------------------------------------------------------------
# streaming retargeting


class LiveRetargeter:
    """Per-frame retargeting onto the avatar (streaming :func:`ram_avatar.runtime.retarget.retarget`).

    Same rules as the offline version, with clip-wide medians replaced by running medians over
    the last ``window`` frames:

    1. the driver's orientation, body and finger poses are kept, the avatar's ``betas`` used
       (the driver is tracked with the avatar's shape, so no bone-length rescaling is needed);
    2. root placement: the driver's displacement from its running-median position is added to
       the avatar's median training position, so the avatar stays framed as in its training
       crop while following the driver's moves (a driver who settles somewhere else is
       re-centred over ``window`` frames);
    3. feet on the ground: the vertical offset puts the running median of the lowest foot
       landmark on the avatar's training ground level (jumps keep their height);
    4. expression: the driver's head-local face mesh minus its running mean (exponential,
       ``face_momentum``), added to the avatar's median face mesh.

    Args:
        body: the shared body model.
        avatar: the avatar's captured BodyParams (batch T_a).
        avatar_face_local: (T_a, 478, 3) head-local face meshes.
        train_mask: (T_a,) bool, frames used for the placement statistics.
        window: running-median window in frames.
        face_momentum: weight of the old mean in the driver's running face mean.
    """

    def __init__(self, body: BodyModel, avatar: BodyParams, avatar_face_local: np.ndarray,
                 train_mask: np.ndarray | None = None, window: int = 150, face_momentum: float = 0.97):
        sel = np.ones(avatar.batch_size, bool) if train_mask is None else np.asarray(train_mask, bool)
        if not sel.any():
            sel = np.ones(avatar.batch_size, bool)
        idx = np.nonzero(sel)[0]
        a_sel = avatar.index(torch.as_tensor(idx))
        self.betas = avatar.betas.detach().cpu().clone()
        self.center = a_sel.transl.median(0).values.cpu()
        self.ground = ground_level(body, a_sel)
        self.face_base = np.median(np.asarray(avatar_face_local)[sel], axis=0).astype(np.float32)
        self.rest = avatar.index(torch.as_tensor(idx[:1])).to("cpu")
        self.window = int(window)
        self.face_momentum = float(face_momentum)
        self.reset()

    def reset(self) -> None:
        self._transl: collections.deque = collections.deque(maxlen=self.window)
        self._feet: collections.deque = collections.deque(maxlen=self.window)
        self._face_mean: np.ndarray | None = None

    def __call__(self, driver: BodyParams, driver_landmarks: torch.Tensor,
                 driver_face_local: np.ndarray | None) -> tuple[BodyParams, np.ndarray, torch.Tensor]:
        """Retarget one frame.

        Args:
            driver: BodyParams of batch 1 fitted with the avatar's betas.
            driver_landmarks: (33, 3) pose landmarks of ``driver`` (camera metres).
            driver_face_local: (478, 3) the driver's head-local face mesh, or None (no face).
        Returns:
            (avatar BodyParams batch 1, face_local (478, 3), shift (3,) metres added to every
            point of the driver's body).
        """
        d_t = driver.transl[0].detach().cpu().float()
        self._transl.append(d_t.numpy().astype(np.float64))
        med = torch.from_numpy(np.median(np.stack(self._transl), axis=0)).float()
        shift = self.center + (d_t - med) - d_t
        feet = float(driver_landmarks[FOOT_LANDMARKS, 1].max().cpu()) + float(shift[1])
        self._feet.append(feet)
        shift = shift.clone()
        shift[1] += self.ground - float(np.median(np.asarray(self._feet)))
        out = replace(driver.to("cpu"), betas=self.betas.clone(), transl=(d_t + shift)[None])
        face = self.face_base
        if driver_face_local is not None:
            f = np.asarray(driver_face_local, np.float32)
            m = self.face_momentum
            self._face_mean = f.copy() if self._face_mean is None else m * self._face_mean + (1 - m) * f
            face = self.face_base + (f - self._face_mean)
        return out, face, shift


# --------------------------------------------------------------------------------------------
# the runtime


def blend_params(a: BodyParams, b: BodyParams, w: float) -> BodyParams:
    """``(1 - w) a + w b`` for body parameters of batch 1: rotations (global_orient, body,
    hand and jaw poses; axis-angles, radians) by spherical interpolation per joint
    (``roma.rotvec_slerp``), translation and expression linearly, betas from ``a``."""
    import roma

    w = float(w)
    steps = torch.tensor([w], dtype=torch.float32)
    out = {}
    for f in ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose"):
        x, y = getattr(a, f), getattr(b, f)
        if x is None or y is None:
            continue
        x = x.detach().cpu().float()
        y = y.detach().cpu().float().to(x.dtype)
        out[f] = roma.rotvec_slerp(x.reshape(-1, 3), y.reshape(-1, 3), steps)[0].reshape(x.shape)
    for f in ("transl", "expression"):
        x, y = getattr(a, f), getattr(b, f)
        if x is None or y is None or x.shape != y.shape:
            continue
        out[f] = (1.0 - w) * x.detach().cpu().float() + w * y.detach().cpu().float()
    return replace(a.to("cpu"), **out)


@dataclass
class FrameResult:
    """What :meth:`AvatarRuntime.process` saw and produced for the latest frame (for overlays).

    Attributes:
        keypoints: the driver's Keypoints2D (T = 1), pixels of the input frame.
        person: a person was tracked in this frame.
        avatar_pose_2d: (33, 2) avatar pose landmarks in avatar-image pixels, or None.
        pose_mask: (33,) bool, landmarks the body model defines.
        avatar_hands_2d: (2, 21, 2) avatar hand landmarks in avatar-image pixels, or None.
        full_fit: this frame was fitted from scratch (first frame, or person found again).
    """

    keypoints: object = None
    person: bool = False
    avatar_pose_2d: np.ndarray | None = None
    pose_mask: np.ndarray | None = None
    avatar_hands_2d: np.ndarray | None = None
    full_fit: bool = False
    extra: dict = field(default_factory=dict)


def _expand_offset(subject_dir: Path, run_name: str) -> float:
    """``model.expand_offset`` of the run's config.yaml (metres, :meth:`Run.renderer_config`),
    else the renderer default."""
    try:
        return float(Subject(subject_dir).run(run_name).renderer_config().expand_offset)
    except RamAvatarError:
        from ram_avatar.models.renderer import RendererConfig

        return float(getattr(RendererConfig(), "expand_offset", 0.01))


def _train_mask(subject_dir: Path, seq, run_name: str) -> np.ndarray:
    """Frames the renderer was trained on (the run's split, :meth:`Run.split`), else the valid
    frames when the split cannot be read."""
    mask = np.zeros(seq.num_frames, bool)
    try:
        mask[Subject(subject_dir).run(run_name).split(seq).train] = True
    except RamAvatarError as e:
        log.warning("%s; retargeting to all valid frames", e)
        mask = seq.valid.copy()
    return mask if mask.any() else np.ones(seq.num_frames, bool)


class AvatarRuntime:
    """Drive a trained avatar from live frames (module docstring).

    Args:
        subject_dir: captured + trained (+ exported, for ``onnx`` / ``tensorrt``) subject.
        backend: renderer backend ``onnx`` | ``openvino`` | ``torch`` | ``tensorrt`` | ``auto``
            (:func:`~ram_avatar.runtime.engines.resolve_backend`).
        device: ``auto`` | ``cpu`` | ``cuda``: body model, fit and the renderer's device.
        resolution: expected renderer side S (None: the subject's renderer; see
            :func:`load_renderer_engine`).
        mda: start with motion distribution alignment on (when the subject has one fitted;
            otherwise a warning and :attr:`mda_status` says why).
        run_name: training run (torch backend, train split).
        camera: camera.json of the live camera (default: the default field of view).
        driver: driver.json (``calibrate driver``): fit the live person with their own shape.
        fit: :class:`~ram_avatar.runtime.tracking.LiveFitConfig`.
        raster_backend: conditioning-map rasterizer (``auto``, ``moderngl``, ``torch``).
        model_path: explicit renderer file (.onnx / .engine), e.g. a timing-only renderer.
        engine: a ready renderer engine (anything with ``name``, ``resolution``, ``providers``
            and ``__call__(maps) -> (1, 3, S, S)`` float32); overrides ``backend``.
        lower_body: ``stand`` | ``sit``: the leg pose held while the legs are not in view
            (``stand`` is the avatar's straightest-legged training pose; see
            :class:`~ram_avatar.runtime.tracking.BodyTracker`); overrides ``fit.lower_body``.
        hold_s, ease_s: when the person leaves the frame the avatar holds its last pose for
            ``hold_s`` seconds, then eases back to its rest pose (first training frame) over
            ``ease_s`` seconds.
        output: what the output frames show (:class:`~ram_avatar.render.framing.OutputSettings`:
            background, framing, zoom, offset, size, zoom mode); default the rendered square
            over the learned background. Changed while running with :meth:`set_output`.

    Call :meth:`process` with consecutive frames of one stream; :meth:`reset` starts a new
    stream (another source). Not thread-safe: use it from one thread.

    Raises:
        SequenceFormatError / CheckpointError / RamAvatarError: missing or broken subject,
            export, checkpoint or engine.
    """

    def __init__(self, subject_dir: str | Path, backend: str = "onnx", device: str = "cpu",
                 resolution: int | None = None, mda: bool = False, run_name: str = "default",
                 camera: str | Path | None = None, fit: LiveFitConfig | None = None,
                 raster_backend: str = "auto", model_path: str | Path | None = None,
                 engine=None, driver: str | Path | None = None, lower_body: str | None = None,
                 hold_s: float = 1.0, ease_s: float = 1.5, output: OutputSettings | None = None):
        self.subject_dir = Path(subject_dir)
        self.device = resolve_device(device)
        self.backend = backend = resolve_backend(backend, self.device)
        seq = load_sequence(self.subject_dir)
        self.engine = engine if engine is not None else load_renderer_engine(
            self.subject_dir, backend, self.device, run_name, resolution, model_path)
        self.resolution = self.engine.resolution
        self.input_names = tuple(getattr(self.engine, "input_names", MAP_NAMES))
        # the map options the renderer's inputs need (input contract, models.inputs)
        self._render_kw: dict = render_options(self.input_names)
        if "expand_offset" in self._render_kw:
            self._render_kw["expand_offset"] = _expand_offset(self.subject_dir, run_name)
        self._prev_maps: dict[str, torch.Tensor] = {}
        self._prev_inputs: dict[str, torch.Tensor] = {}
        bm = seq.manifest["body_model"]
        self.body = load_body_model(bm["name"], model_path=bm.get("model_path"), device=self.device)
        mask = _train_mask(self.subject_dir, seq, run_name)
        self.retargeter = LiveRetargeter(self.body, seq.params, seq.face_local, mask)
        self.K_avatar = crop_intrinsics(seq.K, seq.manifest["crop"], self.resolution)
        self.raster_backend = raster_backend
        self.cond = ConditioningRenderer(self.body, backend=raster_backend)
        self.tracker = HolisticTracker()
        # the person in front of the camera is fitted with their own shape when calibrated
        # (driver.json); retargeting then swaps in the avatar's betas
        fit_betas = load_driver_betas(driver, self.body) if driver is not None else seq.params.betas
        fit = fit or LiveFitConfig()
        if lower_body is not None:
            if lower_body not in LOWER_BODY_MODES:
                raise RamAvatarError(f"unknown --lower-body {lower_body!r}: use "
                                     + " or ".join(LOWER_BODY_MODES))
            fit = replace(fit, lower_body=lower_body)
        stand = standing_leg_pose(seq.params.body_pose[torch.as_tensor(np.nonzero(mask)[0])],
                                  lower_body_joints(self.body))
        self.fitter = BodyTracker(self.body, fit_betas, fit, self.device, stand_pose=stand)
        self.hold_s, self.ease_s = float(hold_s), float(ease_s)
        self._lost_at: float | None = None
        self._held = None
        self._ease = 0.0
        self._lower_body_request: str | None = None
        self.camera_path = camera
        self._cams: dict[tuple[int, int], dict] = {}
        self.aligner = None
        self.mda_status = "off"
        self._load_aligner()
        self.mda_enabled = bool(mda) and self.aligner is not None
        if mda and self.aligner is None:
            log.warning("motion alignment requested but unavailable: %s", self.mda_status)
        self._target: BodyParams | None = None
        self._face = self.retargeter.face_base
        self._shift: torch.Tensor | None = None
        self.last = FrameResult()
        self.frames = 0
        self.want_landmarks = True
        self.pose_mask = self.body.pose_landmark_mask.cpu().numpy().astype(bool)
        # output composition (issue 13): background mode and framing, one AvatarComposer per
        # stream; requests are applied by the pose stage (camera zoom needs the box before maps)
        self.output = OutputSettings()
        self._output_request: OutputSettings | None = None
        self._output_lock = threading.Lock()  # set_output (any thread) vs the pose stage
        self._composer: AvatarComposer | None = None
        self._learned_bg: np.ndarray | None = None
        self._last_bbox = None  # the last silhouette box, training-crop pixels
        if output is not None:
            self.set_output(output)

    # -- motion alignment ---------------------------------------------------------------------
    def _load_aligner(self) -> None:
        if self.body.name != "anny":
            self.mda_status = f"unavailable: motion alignment needs the anny body model, not {self.body.name}"
            return
        try:
            from ram_avatar.motion.mda import MotionAligner
        except ImportError as e:
            self.mda_status = f"unavailable: motion alignment module not installed ({e})"
            return
        try:
            self.aligner = MotionAligner.load(self.subject_dir, device=self.device)
            self.mda_status = "available"
        except (FileNotFoundError, RamAvatarError) as e:
            self.mda_status = f"unavailable: {e}"

    @property
    def mda_available(self) -> bool:
        return self.aligner is not None

    def set_mda(self, on: bool) -> bool:
        """Switch motion alignment on/off (no-op when unavailable); returns the new state."""
        on = bool(on) and self.aligner is not None
        if on and not self.mda_enabled:
            self.aligner.reset()
        self.mda_enabled = on
        return on

    # -- stream control -----------------------------------------------------------------------
    @property
    def lower_body(self) -> str:
        return self._lower_body_request or self.fitter.lower_body

    def set_lower_body(self, mode: str) -> None:
        """Hold the unseen legs standing or seated (``stand`` | ``sit``), from the next frame;
        safe to call from any thread.

        Raises:
            RamAvatarError: an unknown mode.
        """
        if mode not in LOWER_BODY_MODES:
            raise RamAvatarError(f"unknown lower-body mode {mode!r}: use " + " or ".join(LOWER_BODY_MODES))
        self._lower_body_request = mode

    @property
    def has_alpha(self) -> bool:
        """The renderer gives an alpha (every output background mode is available)."""
        return bool(getattr(self.engine, "has_alpha", False)) and hasattr(self.engine, "render")

    def set_output(self, settings: OutputSettings) -> None:
        """Show ``settings`` (background, framing, zoom, offset, size, zoom mode) from the next
        frame; safe to call from any thread.

        Raises:
            RamAvatarError: a background other than ``learned`` (or the camera zoom mode) with a
                renderer that has no alpha output (an export older than issue 13).
        """
        if not isinstance(settings, OutputSettings):
            raise TypeError(f"set_output needs OutputSettings, got {type(settings).__name__}")
        if settings.background.mode != "learned" and not self.has_alpha:
            raise RamAvatarError(
                f"--background {settings.spec} needs the renderer's alpha, but this "
                f"{getattr(self.engine, 'name', 'renderer')} renderer has no 'alpha' output (an "
                f"export made before it existed): run `ram-avatar export {self.subject_dir}` "
                "again, or use --background learned")
        with self._output_lock:
            self._output_request = settings

    def reset(self) -> None:
        """Start a new stream: tracking, fit warm start, running medians and MDA state."""
        self.tracker.reset()
        self.fitter.reset()
        self.retargeter.reset()
        if self.aligner is not None:
            self.aligner.reset()
        self._target, self._face, self._shift = None, self.retargeter.face_base, None
        self._lost_at, self._held, self._ease = None, None, 0.0
        self._prev_maps = {}
        self._prev_inputs = {}
        self.last = FrameResult()
        if self._composer is not None:
            self._composer.smoother.reset()
        self._last_bbox = None

    def close(self) -> None:
        self.tracker.close()

    def release_thread_resources(self) -> None:
        """Free what the calling thread holds for rendering maps: its moderngl/EGL context
        (one per thread, see :mod:`ram_avatar.render.rasterizer`). Call it on a worker thread
        that processed frames before that thread ends; a later :meth:`process` on the same
        thread creates a new context."""
        from ram_avatar.render.rasterizer import release_thread_context

        release_thread_context()

    def __enter__(self) -> "AvatarRuntime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def camera(self, width: int, height: int) -> dict:
        """Intrinsics of the live camera at ``width`` x ``height`` (cached per size)."""
        key = (int(width), int(height))
        if key not in self._cams:
            if self.camera_path is not None:
                self._cams[key] = load_camera(self.camera_path, *key)
            else:
                self._cams[key] = {"K": default_intrinsics(*key), "dist": np.zeros(5)}
        return self._cams[key]

    # -- per frame ----------------------------------------------------------------------------
    def process(self, frame_rgb: np.ndarray, timestamp: float | None = None) -> tuple[np.ndarray, dict]:
        """Track, fit, retarget, align and render one frame (the three stages in sequence;
        :class:`ram_avatar.runtime.pipeline.LivePipeline` overlaps them in threads).

        Args:
            frame_rgb: (H, W, 3) uint8 RGB camera frame.
            timestamp: capture time (``time.perf_counter()`` seconds), default now.
        Returns:
            (avatar (S, S, 3) uint8 RGB, stats) with stats the per-stage latencies in ms
            (:data:`STAGES`, ``total`` and ``latency``) plus ``person``, ``full_fit`` and
            ``legs_held`` (bool), see :meth:`stage_render`.
        Raises:
            ValueError: a frame that is not (H, W, 3) uint8.

        On CPU the torch work of the small-op stages (fit, body model, maps) runs on one
        intra-op thread: it is bound by per-op overhead, and threads that spin while waiting
        stall badly when the cores are shared (with MediaPipe, ONNX Runtime or another job).
        """
        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            return self._process(frame_rgb, timestamp)
        finally:
            torch.set_num_threads(threads)

    def _process(self, frame_rgb: np.ndarray, timestamp: float | None = None) -> tuple[np.ndarray, dict]:
        job = self.stage_track(frame_rgb, timestamp)
        job = self.stage_pose(job)
        return self.stage_render(job)

    # -- the stages (sequential in :meth:`process`, threads in runtime.pipeline.LivePipeline) --
    def stage_track(self, frame_rgb: np.ndarray, timestamp: float | None = None) -> dict:
        """Stage 1, ``track``: MediaPipe Holistic on one frame (undistorted keypoints).

        Args:
            frame_rgb: (H, W, 3) uint8 RGB.
            timestamp: capture time (``time.perf_counter()`` seconds; default now), used for
                the hold-and-ease of a lost person and the end-to-end latency.
        Returns:
            a job dict for :meth:`stage_pose` (``kp``, ``K``, ``frame_size``, timings).
        """
        t0 = time.perf_counter()
        frame_rgb = np.asarray(frame_rgb)
        kp = self.tracker(frame_rgb)
        h, w = frame_rgb.shape[:2]
        cam = self.camera(w, h)
        K = cam["K"]
        if np.any(cam["dist"]):
            kp = kp.subset(slice(None))
            for name in ("pose", "left_hand", "right_hand", "face"):
                arr = getattr(kp, name).copy()
                arr[..., :2] = undistort_points(arr[..., :2], K, cam["dist"])
                setattr(kp, name, arr)
        t1 = time.perf_counter()
        return {"kp": kp, "K": K, "frame_size": (w, h), "t_capture": t0 if timestamp is None else timestamp,
                "stats": {"track": 1000.0 * (t1 - t0)}}

    def _eased_target(self, now: float) -> BodyParams:
        """The pose shown while nobody is tracked: the last pose for ``hold_s`` seconds, then
        a slerp to the rest pose over ``ease_s`` seconds (smoothstep in time)."""
        if self._target is None:
            return self.retargeter.rest
        if self._lost_at is None:
            self._lost_at, self._held = now, (self._target, self._face)
        w = (now - self._lost_at - self.hold_s) / max(self.ease_s, 1e-6)
        w = float(np.clip(w, 0.0, 1.0))
        w = w * w * (3.0 - 2.0 * w)
        self._ease = w
        held, face = self._held
        if w <= 0.0:
            return held
        self._face = ((1.0 - w) * face + w * self.retargeter.face_base).astype(np.float32)
        return blend_params(held, self.retargeter.rest, w)

    def stage_pose(self, job: dict) -> dict:
        """Stage 2 of the three-stage pipeline, ``fit`` + ``retarget`` + ``align`` + ``maps``:
        :meth:`stage_fit` then :meth:`stage_maps` on one thread (what :meth:`process` runs)."""
        return self.stage_maps(self.stage_fit(job))

    def stage_fit(self, job: dict) -> dict:
        """``fit`` + ``retarget`` + ``align``: the body fit to the tracked keypoints, the
        avatar's target pose (or the held / eased pose while nobody is seen) and its 2D
        landmarks. Adds ``target``, ``face``, ``pose2d``, ``person``, ``composer`` and the
        fit's state of this frame to the job (:meth:`stage_maps` reads them, possibly on
        another thread while this one fits the next frame)."""
        st = job["stats"]
        kp, K = job["kp"], job["K"]
        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            t = [time.perf_counter()]
            with self._output_lock:
                request, self._output_request = self._output_request, None
            if request is not None:
                self.output = request
                self._composer = None if (self.output.framing is None and
                                          self.output.background.mode == "learned") else \
                    AvatarComposer.from_settings(self.output, self._learned_bg)
            composer = self._composer
            framed = composer is not None and composer.framing is not None
            if self._lower_body_request is not None:
                self.fitter.set_lower_body(self._lower_body_request)
                self._lower_body_request = None
            params = self.fitter(kp, K, job["frame_size"])
            t.append(time.perf_counter())
            landmarks = None
            self._ease = 0.0
            if params is not None:
                self._lost_at = None
                out = self.fitter.last_output  # the Gauss-Newton fit's landmarks at its result
                if out is None:
                    with torch.no_grad():
                        out = self.body(params.to(self.device), return_vertices=False)
                lm = out.pose_landmarks[0].cpu()
                face_d = None
                if kp.face_valid[0]:
                    face_d = face_to_head_local(kp.face[:1].astype(np.float64),
                                                out.head_transform.cpu().numpy().astype(np.float64), K)[0]
                self._target, self._face, self._shift = self.retargeter(params, lm, face_d)
                landmarks = lm + self._shift
            else:
                self._target = self._eased_target(job["t_capture"])
            target = self._target
            t.append(time.perf_counter())
            if self.mda_enabled and params is not None:
                bp = self.aligner.step(target.body_pose[0])
                target = replace(target, body_pose=torch.as_tensor(bp, dtype=torch.float32)[None].cpu())
                landmarks = None
            if landmarks is None and (self.want_landmarks or framed) and (params is not None or self._ease > 0):
                with torch.no_grad():
                    landmarks = self.body(target.to(self.device), return_vertices=False).pose_landmarks[0].cpu()
            t.append(time.perf_counter())
            if landmarks is None and params is None and self.last.avatar_pose_2d is not None:
                pose2d = self.last.avatar_pose_2d  # holding the last pose
            elif landmarks is not None:
                pose2d = project_landmarks(landmarks.numpy(), self.K_avatar, self.pose_mask)
            else:
                pose2d = None
        finally:
            torch.set_num_threads(threads)
        for name, a, b in zip(("fit", "retarget", "align"), t[:-1], t[1:]):
            st[name] = 1000.0 * (b - a)
        job.update(target=target, face=self._face, pose2d=pose2d, person=params is not None,
                   composer=composer, framed=framed, ease=self._ease,
                   full_fit=params is not None and self.fitter.last_was_init,
                   fit_view=dict(self.fitter.view))
        return job

    def stage_maps(self, job: dict) -> dict:
        """``maps``: the conditioning maps of the job's target pose (:meth:`stage_fit`), in the
        framing's closer camera when it has one, with the previous frame's maps for the
        temporal attention. One thread for the life of a pipeline: the moderngl context of
        the maps is per thread. Adds ``maps``, ``box``, ``view`` and the frame result."""
        st = job["stats"]
        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            t0 = time.perf_counter()
            composer, framed, pose2d = job["composer"], job["framed"], job["pose2d"]
            target, person = job["target"], job["person"]
            box = view = None
            K_maps = self.K_avatar
            if framed and composer.camera:  # the virtual camera moves closer: maps of its view
                box = composer.next_box(pose2d, self._last_bbox, self.resolution, job["t_capture"])
                view = composer.view(box, self.resolution)
                K_maps = box_intrinsics(self.K_avatar, view, (self.resolution, self.resolution))
            maps = self.cond.render(target, job["face"][None], K_maps, self.resolution,
                                    **self._render_kw)
            if framed:
                bb = mask_bbox(maps["body_mask"][0, 0].cpu().numpy() > 0)
                if bb is not None and view is not None:  # back to training-crop pixels
                    f = view[2] / self.resolution
                    bb = (view[0] + bb[0] * f, view[1] + bb[1] * f, view[0] + bb[2] * f,
                          view[1] + bb[3] * f)
                self._last_bbox = bb if bb is not None else self._last_bbox
                if box is None:
                    box = composer.next_box(pose2d, self._last_bbox, self.resolution,
                                            job["t_capture"])
            # temporal attention: the previous frame's maps (this frame's on the first); while
            # nobody is seen the held pose is rendered with the same inputs as the last frame, so
            # the avatar stays exactly still
            holding = not person and job["ease"] <= 0.0 and bool(self._prev_inputs)
            for name in self.input_names:
                if name.startswith("prev_"):
                    maps[name] = self._prev_inputs[name] if holding else \
                        self._prev_maps.get(name[5:], maps[name[5:]])
            self._prev_inputs = {n: maps[n] for n in self.input_names if n.startswith("prev_")}
            if not holding:
                self._prev_maps = {k: maps[k] for k in ("uv", "body_mask", "canon") if k in maps}
            t1 = time.perf_counter()
        finally:
            torch.set_num_threads(threads)
        hands2d = maps["hands_2d"][0].numpy()
        if view is not None:  # overlays are drawn in training-crop pixels
            hands2d = hands2d * (view[2] / self.resolution) + np.array(view[:2])
        self.last = FrameResult(keypoints=job["kp"], person=person, avatar_pose_2d=pose2d,
                                pose_mask=self.pose_mask, avatar_hands_2d=hands2d,
                                full_fit=job["full_fit"],
                                extra={"view": job["fit_view"], "ease": job["ease"],
                                       "target": target, "box": box, "camera_view": view})
        st["maps"] = 1000.0 * (t1 - t0)
        job.update(maps=maps, result=self.last, box=box, view=view)
        return job

    def stage_render(self, job: dict) -> tuple[np.ndarray, dict]:
        """Stage 3, ``render``: the neural renderer on the job's maps.

        With output settings (:meth:`set_output`) the frame is composed by the stream's
        :class:`~ram_avatar.render.framing.AvatarComposer` (the same code as ``drive``):
        background mode from the renderer's rgb + alpha, then the framing box cut out (of the
        training crop, or of the closer camera's view) and resized to the output size.

        Returns:
            (avatar image, stats): the image is (S, S, 3) uint8 RGB without a framing, (H, W, 3)
            at the output size with one, (.., 4) straight RGBA for ``transparent``; stats:
            per-stage ms (:data:`STAGES`), ``total`` (their sum), ``latency`` (ms from the
            capture timestamp to now), ``person``, ``full_fit``, ``legs_held``, ``seq`` (the
            job's frame number, if set) and ``box`` (the framing box ``(x0, y0, w, h)`` in
            training-crop pixels, when framed).
        """
        t0 = time.perf_counter()
        maps = job["maps"]
        composer = job.get("composer")
        if composer is None:
            rgb = self.engine(maps)
            img = _to_uint8(rgb[0].transpose(1, 2, 0))
        else:
            rgb, alpha = self.engine.render(maps) if hasattr(self.engine, "render") else \
                (self.engine(maps), None)
            if composer.needs_learned and composer.learned is None and alpha is not None:
                composer.learned = self.learned_background(maps)
            img = composer.compose(_to_uint8(rgb[0].transpose(1, 2, 0)),
                                   None if alpha is None else _to_uint8(alpha[0, 0]),
                                   job.get("box"), job.get("view"))
        t1 = time.perf_counter()
        self.last_maps = {k: maps[k] for k in dict.fromkeys(MAP_NAMES + self.input_names)}
        self.frames += 1
        stats = dict(job["stats"])
        stats["render"] = 1000.0 * (t1 - t0)
        stats["total"] = sum(stats.get(k, 0.0) for k in STAGES)
        stats["latency"] = 1000.0 * (t1 - job["t_capture"])
        stats["person"] = bool(job["person"])
        res = job["result"]
        stats["full_fit"] = res.full_fit
        stats["legs_held"] = bool(res.extra.get("view", {}).get("legs_held", False))
        if "seq" in job:
            stats["seq"] = job["seq"]
        if job.get("box") is not None:
            stats["box"] = tuple(float(v) for v in job["box"])  # training-crop px -> output
        job["image"] = img
        return img, stats

    def learned_background(self, like: dict[str, torch.Tensor] | None = None) -> np.ndarray:
        """The renderer's learned background, (S,S,3) uint8: its output for all-zero maps (no
        body, alpha ~0), computed once (on the calling thread, the render stage's)."""
        if self._learned_bg is None:
            if like is None:
                like = self.last_maps
            zeros = {k: torch.zeros_like(like[k]) for k in self.input_names}
            self._learned_bg = _to_uint8(self.engine(zeros)[0].transpose(1, 2, 0))
        return self._learned_bg
