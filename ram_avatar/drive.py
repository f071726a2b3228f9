"""``ram-avatar drive``: render the avatar with another person's motion (offline).

driving video -> track (keypoints + body fit, as capture) -> retarget onto the avatar's shape
and framing (runtime.retarget) -> optional motion distribution alignment (Sec. 3.3) ->
conditioning maps in the avatar's training crop -> renderer (ONNX Runtime or torch) ->
video with the source's frame count and fps.

Output (issue 13, for streamers):

- ``background``: ``learned`` (the training room), ``transparent``, ``#RRGGBB`` or an image
  (:mod:`ram_avatar.render.composite`, from the renderer's ``rgb`` and ``alpha``; an ONNX export
  without the ``alpha`` output supports only ``learned``: re-export it);
- ``layout``: ``side-by-side`` (driving frame | avatar, ``OUTPUT_HEIGHT`` high) or ``avatar``
  (the avatar alone, placed by ``framing`` in an ``out_size`` frame, 1280x720 by default). The
  default (:func:`choose_layout`) is side-by-side only for an ``.mp4`` with the learned
  background and no ``framing``; anything else (transparent, another background, a framing,
  ``.webm``/``.mov``) writes the avatar alone;
- ``framing``: ``full|upper|head`` with ``zoom`` and ``offset`` (:mod:`ram_avatar.render.framing`,
  crop and upscale of the rendered frame, boxes from the avatar's own projected pose landmarks,
  smoothed over time); ``layout=avatar`` without a framing uses ``full``;
- the file type follows the suffix: ``.mp4`` H.264 (no alpha), ``.webm`` VP9 with alpha,
  ``.mov`` ProRes 4444 with alpha (:class:`~ram_avatar.capture.video.AlphaVideoWriter`; opaque
  modes write alpha 255);
- ``motion_out``: the driven avatar's motion as ``.npz`` or ``.bvh``
  (:mod:`ram_avatar.motion.export`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from ram_avatar.body import load_body_model
from ram_avatar.capture.pipeline import track_video
from ram_avatar.errors import RamAvatarError
from ram_avatar.io.sequence import load_sequence
from ram_avatar.io.subject import Subject
from ram_avatar.io.video import AlphaVideoWriter, VideoWriter, iter_frames
from ram_avatar.models import inputs as contract
from ram_avatar.render import framing as fr
from ram_avatar.render.composite import Background, parse_background
from ram_avatar.render.conditioning import crop_intrinsics
from ram_avatar.render.sequence import (add_previous_maps, crop_resize, map_render_options,
                                        maps_to_float, render_sequence_maps)
from ram_avatar.runtime import EXPORT_KIND
from ram_avatar.runtime.retarget import load_driver_betas, retarget
from ram_avatar.utils import progress, resolve_device

log = logging.getLogger(__name__)

#: height in pixels of the side-by-side output video
OUTPUT_HEIGHT = 512
#: layouts of the output video
LAYOUTS = ("side-by-side", "avatar")
#: output suffixes written with an alpha channel
ALPHA_SUFFIXES = (".webm", ".mov")


class RendererBackend:
    """The avatar renderer as ``drive`` uses it: maps (float32 tensors) -> rgb (B,S,S,3)
    uint8 (and alpha with :meth:`render`).

    The renderer is loaded by the one engine loader,
    :func:`ram_avatar.runtime.engines.load_renderer_engine`: ``onnx`` runs the subject's export
    (:attr:`Subject.export_onnx`; its ``export.json`` names the run) with ONNX Runtime, ``torch``
    the latest checkpoint of the run (:meth:`Run.load_renderer`), ``tensorrt`` the engine of
    ``export --tensorrt`` (CUDA). :attr:`has_alpha` is False for an export made before the
    ``alpha`` output existed. Inputs follow :mod:`ram_avatar.models.inputs`.

    Raises:
        RamAvatarError: unknown backend, no export / export.json / checkpoint, or an export of
            another version.
    """

    def __init__(self, subject_dir: Path, backend: str, run_name: str, device: torch.device):
        from ram_avatar.runtime.engines import load_renderer_engine, resolve_backend

        self.kind = backend = resolve_backend(backend, device)
        subject = Subject(subject_dir)
        if backend in EXPORT_KIND and subject.export_model(EXPORT_KIND[backend]).is_file():
            subject.export_manifest()  # export.json must exist: it names the exported run
        self.engine = load_renderer_engine(subject_dir, backend, device, run_name)
        # whose split.json says what was trained on: the exported run, or the run asked for
        self.run = subject.run(self.engine.run_name or run_name)
        self.resolution = int(self.engine.resolution)
        self.expand_offset = float(self.engine.expand_offset
                                   if self.engine.expand_offset is not None else 0.01)
        self.input_names = tuple(self.engine.input_names)
        self.has_alpha = bool(self.engine.has_alpha)
        self.device = device

    def render_options(self) -> dict:
        """:func:`render_sequence_maps` options giving every map this renderer reads."""
        return map_render_options(self.input_names, self.expand_offset)

    def __call__(self, maps: dict[str, torch.Tensor]) -> np.ndarray:
        """maps: the renderer's inputs (:attr:`input_names`, (B,C,S,S) float32; extra keys are
        ignored) -> (B,S,S,3) uint8 RGB."""
        return self.render(maps)[0]

    def render(self, maps: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`__call__` plus the renderer's alpha: ((B,S,S,3) uint8 RGB, (B,S,S) uint8
        alpha or None when the export has no ``alpha`` output)."""
        from ram_avatar.runtime.engines import to_uint8

        rgb, alpha = self.engine.render({k: maps[k] for k in self.input_names})
        return to_uint8(rgb).transpose(0, 2, 3, 1), None if alpha is None else to_uint8(alpha[:, 0])


def _side_by_side(left: np.ndarray, right: np.ndarray, height: int) -> np.ndarray:
    """Resize both RGB images to ``height`` (keeping aspect) and put them side by side."""
    def fit(img):
        h, w = img.shape[:2]
        interp = cv2.INTER_AREA if h > height else cv2.INTER_LINEAR
        return cv2.resize(img, (int(round(w * height / h)) // 2 * 2, height), interpolation=interp)
    return np.concatenate([fit(left), fit(right)], 1)


def _load_aligner(subject_dir: Path, mda: str):
    """The subject's motion aligner (Sec. 3.3) or None; ``mda`` is auto|on|off|both."""
    if mda == "off":
        return None
    try:
        from ram_avatar.motion.mda import MotionAligner

        return MotionAligner.load(subject_dir)
    except RamAvatarError as e:
        if mda in ("on", "both"):
            raise RamAvatarError(f"--mda {mda} needs a fitted motion aligner: run "
                                 f"`ram-avatar fit-mda {subject_dir}` first ({e})") from e
        return None


def choose_layout(layout: str | None, output: Path, background: Background,
                  framing: str | None) -> str:
    """The output layout: ``layout`` when given, else ``side-by-side`` for an ``.mp4`` with the
    learned background and no framing, ``avatar`` otherwise (module docstring).

    Raises:
        RamAvatarError: an unknown layout; side-by-side with a transparent background (the
            driving frame has no alpha); transparent into a file type without alpha.
    """
    suffix = output.suffix.lower()
    if background.has_alpha and suffix not in ALPHA_SUFFIXES:
        raise RamAvatarError(f"--background transparent needs a video with alpha: write "
                             f"{output.with_suffix('.webm').name} (VP9, for OBS) or "
                             f"{output.with_suffix('.mov').name} (ProRes 4444), not {suffix or 'no suffix'}")
    if layout is None:
        return "side-by-side" if (suffix == ".mp4" and background.mode == "learned"
                                  and framing is None) else "avatar"
    if layout not in LAYOUTS:
        raise RamAvatarError(f"--layout {layout!r}: use {' or '.join(LAYOUTS)}")
    if layout == "side-by-side" and background.has_alpha:
        raise RamAvatarError("--layout side-by-side cannot be transparent (the driving video has "
                             "no alpha): use --layout avatar, or an opaque --background")
    return layout


def avatar_landmarks(body, params, K: np.ndarray, chunk: int = 64) -> np.ndarray:
    """The avatar's MediaPipe pose landmarks projected into the rendered frame.

    Args:
        body: the body model; params: BodyParams of T frames (camera frame, metres).
        K: (3,3) intrinsics of the rendered frame (``crop_intrinsics``), pixels.
    Returns:
        (T,33,2) float64 pixels, NaN for landmarks the body model does not define.
    """
    valid = body.pose_landmark_mask.cpu().numpy().astype(bool)
    out = []
    with torch.no_grad():
        for c in range(0, params.batch_size, chunk):
            p = params.index(torch.arange(c, min(c + chunk, params.batch_size))).to(body.device)
            out.append(body(p, return_vertices=False).pose_landmarks.cpu().numpy())
    return fr.project_landmarks(np.concatenate(out), K, valid)


def _check_output_options(output: Path, bg: Background, layout: str | None, framing: str | None,
                          zoom: float, offset, out_size, motion_out) -> tuple:
    """Validate the output options; returns (layout, framing, out_size, offset) resolved."""
    if framing is not None:
        fr.check_framing(framing, zoom)
    out_size, offset = fr.parse_out_size(out_size), fr.parse_offset(offset)
    layout = choose_layout(layout, output, bg, framing)
    if layout == "avatar" and framing is None:
        framing = "full"
    if motion_out is not None and Path(motion_out).suffix.lower() not in (".npz", ".bvh"):
        raise RamAvatarError(f"--motion-out {motion_out}: use a .npz or .bvh file")
    return layout, framing, out_size, offset


def _check_alpha(engine: RendererBackend, bg: Background, background: str, subject_dir: Path) -> None:
    """Refuse a non-learned background when the renderer has no alpha output."""
    if bg.mode != "learned" and not engine.has_alpha:
        raise RamAvatarError(f"--background {background} needs the renderer's alpha, but "
                             f"{Subject(subject_dir).export_onnx} was exported without it: "
                             f"run `ram-avatar export {subject_dir}` again, or use --backend torch")


def _driven_variants(subject_dir: Path, source, seq, engine: RendererBackend, camera, driver,
                     mda: str, mda_strength: float, dev: torch.device) -> tuple:
    """Track ``source``, retarget it to the avatar and align it with the subject's MDA (``mda``).

    Returns (body model, tracked video, variant name -> BodyParams, face_local, retargeting info)."""
    aligner = _load_aligner(subject_dir, mda)
    bm = seq.manifest["body_model"]
    body = load_body_model(bm["name"], model_path=bm.get("model_path"), device=dev)
    tracked = track_video(source, body, camera=camera, device=dev)
    tracked.masks.close()  # a driving video's masks are not used
    drv = tracked.params
    if driver is not None:
        drv.betas = load_driver_betas(driver, body)
    train_idx = engine.run.split(seq).train  # the run's split.json
    mask = np.zeros(seq.num_frames, bool)
    mask[train_idx] = True
    target, face_local, info = retarget(drv, seq.params, body, tracked.face_local, seq.face_local, mask)
    variants = {"avatar": target}
    if aligner is not None:
        aligned = aligner.align_params(target, strength=mda_strength, fps=tracked.info.fps)
        variants = {"avatar_mda": aligned} if mda != "both" else {"avatar": target, "avatar_mda": aligned}
    return body, tracked, variants, face_local, info


def _write_motion_out(motion_out, body, variants: dict, fps: float) -> dict:
    """Write the rendered avatar's motion (the aligned one when MDA ran); returns its summary."""
    from ram_avatar.motion.export import write_motion

    name = list(variants)[-1]  # the aligned motion when MDA ran
    written = write_motion(motion_out, body, variants[name], fps=fps)
    written["variant"] = name
    return written


def _render_variant(engine: RendererBackend, seq, body, params, face_local, T: int, name: str,
                    backend: str, batch: int) -> tuple:
    """Render one driven variant; returns (maps, (T,S,S,3) uint8 RGB, (T,S,S) alpha or None)."""
    maps = render_sequence_maps(seq, np.arange(T), engine.resolution, body=body, params=params,
                                face_local=face_local, desc=f"maps ({name})",
                                **engine.render_options())
    if contract.uses_previous(engine.input_names):
        add_previous_maps(maps)  # temporal attention: frame t-1 of the driven sequence
    outs, alpha_outs = [], []
    with progress() as bar:
        task = bar.add_task(f"render ({name}, {backend})", total=T, info="")
        for c in range(0, T, batch):
            sl = {k: v[c:c + batch] for k, v in maps.items()}
            rgb, alpha = engine.render(maps_to_float(sl))
            outs.append(rgb)
            alpha_outs.append(alpha)
            bar.advance(task, len(rgb))
    return maps, np.concatenate(outs), None if alpha_outs[0] is None else np.concatenate(alpha_outs)


def _render_variants(engine: RendererBackend, seq, body, variants: dict, face_local, T: int,
                     backend: str, batch: int) -> tuple:
    """Render every variant; returns (the last variant's maps, frames, alphas, silhouettes, bboxes)."""
    frames_out, alphas, silhouettes, bboxes = {}, {}, {}, {}
    for name, params in variants.items():
        maps, frames_out[name], alphas[name] = _render_variant(engine, seq, body, params, face_local, T,
                                                               name, backend, batch)
        silhouettes[name] = maps["body_mask"][:, 0].numpy() > 0  # for the render report
        bboxes[name] = [fr.mask_bbox(m) for m in silhouettes[name]]
    return maps, frames_out, alphas, silhouettes, bboxes


def _variant_composers(engine: RendererBackend, seq, body, bg: Background, maps: dict, variants: dict,
                       framing: str | None, zoom: float, offset, out_size, fps: float) -> tuple[dict, dict]:
    """One :class:`AvatarComposer` per variant and, with ``framing``, the avatar's landmarks.

    Returns (variant -> composer, variant -> (T,33,2) landmarks, empty without framing)."""
    learned = None
    if bg.mode != "learned":  # the renderer's output for all-zero maps (no body: alpha ~ 0)
        zeros = {k: torch.zeros_like(v[:1]) for k, v in maps.items()}
        learned = engine.render(maps_to_float(zeros))[0][0]
    K = crop_intrinsics(seq.K, seq.manifest["crop"], engine.resolution)
    landmarks = {n: avatar_landmarks(body, variants[n], K) for n in variants} if framing else {}
    composers = {n: fr.AvatarComposer(bg, learned, framing, zoom, offset, out_size, fps=fps)
                 for n in variants}
    return composers, landmarks


def _write_driven_video(output: Path, source, tracked, layout: str, composers: dict,
                        frames_out: dict, alphas: dict, landmarks: dict, bboxes: dict) -> tuple[int, int]:
    """Compose every output frame (driving frame | avatar cells) and write it; returns (W, H)."""
    def out_frame(t: int, driving: np.ndarray | None) -> np.ndarray:
        img = np.concatenate([composers[n](frames_out[n][t], None if alphas[n] is None else alphas[n][t],
                                           landmarks[n][t] if landmarks else None, bboxes[n][t])
                              for n in frames_out], 1)
        if layout == "side-by-side":
            img = _side_by_side(driving, img, OUTPUT_HEIGHT)
        if output.suffix.lower() in ALPHA_SUFFIXES and img.shape[2] == 3:
            img = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], 2)
        return img

    src = iter_frames(source, tracked.start, tracked.end)
    first = out_frame(0, next(src) if layout == "side-by-side" else None)
    Writer = AlphaVideoWriter if output.suffix.lower() in ALPHA_SUFFIXES else VideoWriter
    with Writer(output, tracked.info.fps, first.shape[1::-1]) as w:
        w.write(first)
        for t in range(1, tracked.end - tracked.start):
            w.write(out_frame(t, next(src) if layout == "side-by-side" else None))
    return first.shape[1::-1]


def drive(subject_dir: str | Path, source: str | Path, output: str | Path, backend: str = "onnx",
          device: str = "auto", run_name: str = "default", camera: str | Path | None = None,
          driver: str | Path | None = None, mda: str = "auto", mda_strength: float = 1.0,
          batch: int = 4, report: bool = False, background: str = "learned",
          layout: str | None = None, framing: str | None = None, zoom: float = 1.0,
          offset: tuple[float, float] | str = (0.0, 0.0),
          out_size: tuple[int, int] | str = fr.DEFAULT_OUT_SIZE,
          motion_out: str | Path | None = None) -> dict:
    """Drive the avatar of ``subject_dir`` with the motion in ``source``; write ``output``.

    Args:
        subject_dir: captured and trained (and for ``onnx``, exported) subject.
        source: driving video.
        output: output video: ``.mp4`` (H.264), ``.webm`` (VP9 + alpha) or ``.mov``
            (ProRes 4444 + alpha); driving frame | avatar frame (| aligned avatar with
            ``mda=both``), or the avatar alone (``layout``).
        backend: ``onnx`` (ONNX Runtime), ``openvino`` (the same export in OpenVINO, CPU),
            ``torch`` (the run's checkpoint) or ``auto`` (OpenVINO when installed, else ONNX
            Runtime: :func:`~ram_avatar.runtime.engines.resolve_backend`).
        device: device for tracking and the torch renderer.
        run_name: training run.
        camera: camera.json of the driving video.
        driver: driver.json (``calibrate driver``) giving the driver's body shape.
        mda: ``auto`` (on when fitted), ``on``, ``off``, or ``both`` (side by side).
        mda_strength: blend between the source pose (0) and the aligned pose (1).
        report: also write ``<output stem>.render_stats.json`` (weights-free image statistics
            of every rendered variant, :mod:`ram_avatar.eval.render_stats`) and
            ``<output stem>.contact.png`` (source | avatar | aligned avatar on 8 frames);
            see :func:`write_render_report`.
        background: ``learned``, ``transparent``, ``#RRGGBB`` or an image path.
        layout: ``side-by-side``, ``avatar`` or None (:func:`choose_layout`).
        framing: ``full``, ``upper``, ``head`` or None; zoom (> 1 closer), offset (dx, dy
            fractions of the box), out_size (W, H) pixels of the framed avatar.
        motion_out: also write the rendered avatar's motion (``.npz`` or ``.bvh``,
            :func:`ram_avatar.motion.export.write_motion`); with ``mda=both`` the aligned one.
    Returns:
        summary dict: frames, fps, output path, layout, background, framing, timings,
        retargeting info (and ``report``, ``motion_out``).
    Raises:
        VideoError / NoPersonError for a bad driving video; RamAvatarError when the avatar is
        not trained/exported, the export has no alpha for a non-learned background, or the
        output options do not fit together (:func:`choose_layout`); FramingError,
        BackgroundError for bad framing/background values.
    """
    t0 = time.time()
    subject_dir, output = Path(subject_dir), Path(output)
    bg = parse_background(background)
    layout, framing, out_size, offset = _check_output_options(output, bg, layout, framing, zoom,
                                                              offset, out_size, motion_out)
    dev = resolve_device(device)
    seq = load_sequence(subject_dir)
    engine = RendererBackend(subject_dir, backend, run_name, dev)
    _check_alpha(engine, bg, background, subject_dir)
    body, tracked, variants, face_local, info = _driven_variants(subject_dir, source, seq, engine, camera,
                                                                 driver, mda, mda_strength, dev)
    T = tracked.end - tracked.start
    t1 = time.time()
    maps, frames_out, alphas, silhouettes, bboxes = _render_variants(engine, seq, body, variants, face_local,
                                                                     T, backend, batch)
    t_render = time.time() - t1
    composers, landmarks = _variant_composers(engine, seq, body, bg, maps, variants, framing, zoom, offset,
                                              out_size, float(tracked.info.fps))
    size = _write_driven_video(output, source, tracked, layout, composers, frames_out, alphas,
                               landmarks, bboxes)
    summary = {"output": str(output), "frames": T, "fps": tracked.info.fps, "backend": engine.kind,
               "resolution": engine.resolution, "variants": list(variants), "retarget": info,
               "layout": layout, "background": background, "output_size": list(size),
               "framing": None if framing is None else {"mode": framing, "zoom": zoom,
                                                         "offset": list(offset)},
               "driver_reprojection_error_body": float(np.nanmedian(tracked.errors["body"])),
               "timings": {**tracked.timings, "render_s": t_render, "total_s": time.time() - t0}}
    if motion_out is not None:
        summary["motion_out"] = _write_motion_out(motion_out, body, variants, tracked.info.fps)
    if report:
        summary["report"] = write_render_report(output, source, tracked.start, tracked.end,
                                                frames_out, silhouettes, engine, seq, body, batch,
                                                params=variants)
        summary["timings"]["total_s"] = time.time() - t0
    return summary


#: driving-clip frames shown in the contact sheet of ``drive(report=True)``
REPORT_SHEET_ROWS = 8
#: training frames sampled for the colour / sharpness reference of the render report
REPORT_REFERENCE_FRAMES = 32
_VARIANT_LABELS = {"avatar": "avatar, no alignment", "avatar_mda": "avatar + MDA"}


def _render_frames(engine: RendererBackend, maps: dict[str, torch.Tensor], batch: int) -> np.ndarray:
    """Run ``engine`` over compact maps (render_sequence_maps) -> (N,S,S,3) uint8."""
    n = len(maps["body_mask"])
    return np.concatenate([engine(maps_to_float({k: v[c:c + batch] for k, v in maps.items()}))
                           for c in range(0, n, batch)])


def _report_paths(output: Path) -> tuple[Path, Path]:
    """``<stem>.render_stats.json`` and ``<stem>.contact.png`` next to the drive video ``output``."""
    stem = output.with_suffix("")
    return stem.parent / f"{stem.name}.render_stats.json", stem.parent / f"{stem.name}.contact.png"


def _training_reference(body, seq, ref_idx: np.ndarray, ref_masks: torch.Tensor, crops: dict,
                        captured_person: dict, K: np.ndarray, S: int):
    """The :class:`TrainingReference` of the training frames ``ref_idx`` (real crops, fitted
    body masks, part labels of their meshes, the capture's person masks)."""
    from ram_avatar.eval import render_stats as rs

    ref_parts = rs.part_label_maps(body, seq.params.index(torch.as_tensor(ref_idx)), K, S)
    return rs.TrainingReference(np.stack([crops[t] for t in ref_idx.tolist()]),
                                ref_masks[:, 0].numpy() > 0, parts=ref_parts,
                                person=np.stack([captured_person[t] for t in ref_idx.tolist()]))


def _captured_heldout_stats(crops: dict, captured_person: dict, val_idx: np.ndarray,
                            held_parts, reference) -> dict:
    """Per-part appearance statistics of the real held-out frames, inside the person masks."""
    from ram_avatar.eval import render_stats as rs

    return rs.json_floats(rs.part_appearance_stats(
        np.stack([crops[t] for t in val_idx.tolist()]), held_parts, reference,
        person=np.stack([captured_person[t] for t in val_idx.tolist()])))


def _log_arms(arms: dict) -> None:
    """Log the arm table of the render report, one line per variant or reference."""
    for name, a in arms.items():
        log.info("arms (%s): %s", name, ", ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}"
                                                  for k, v in a.items()))


def _heldout_renders(engine: RendererBackend, seq, body, val_idx: np.ndarray, batch: int) -> tuple:
    """The subject's held-out poses rendered as the driven ones.

    Returns (their maps, (N,S,S,3) uint8 frames, (S,S,3) learned background)."""
    held = render_sequence_maps(seq, val_idx, engine.resolution, body=body, desc="maps (held-out reference)",
                                **engine.render_options())
    if contract.uses_previous(engine.input_names):
        add_previous_maps(held)
    held_frames = _render_frames(engine, held, batch)
    background = _render_frames(engine, {k: torch.zeros_like(v[:1]) for k, v in held.items()}, 1)[0]
    return held, held_frames, background


def _captured_crops(seq, wanted: set[int], S: int) -> tuple[dict, dict]:
    """Real (S,S,3) crops and (S,S) bool person masks of the capture's frames ``wanted``."""
    crops = {}
    s0, crop = seq.manifest["source"]["start"], seq.manifest["crop"]
    for t, frame in enumerate(iter_frames(seq.source_video(), s0, s0 + max(wanted) + 1)):
        if t in wanted:
            crops[t] = crop_resize(frame, crop, S)
    with seq.load_masks() as person_all:
        captured_person = {t: crop_resize(person_all[t], crop, S) > 127 for t in sorted(wanted)}
    return crops, captured_person


def _arms_table(variants: dict, heldout: dict, captured: dict, reference) -> dict:
    """``arm_coverage`` and the ``arm_fidelity`` values of every variant and reference side by side."""
    arm_keys = ("arm_coverage", "arm_fidelity", "arm_fidelity_left", "arm_fidelity_right")
    return {name: {k: st[k] for k in arm_keys if k in st}
            for name, st in [*variants.items(), ("heldout_reference", heldout),
                             ("captured_heldout", captured),
                             ("training_reference", reference.arm_fidelity or {})]}


def _report_contact_sheet(source, start: int, end: int, frames_out: dict, silhouettes: dict,
                          parts: dict, reference, background: np.ndarray, S: int) -> tuple:
    """Contact sheet: driving frame | each variant, silhouette IoU and arm fidelity of that frame.

    Returns (sheet image, the sampled driving-clip frame offsets)."""
    from ram_avatar.eval import render_stats as rs

    rows_t = rs.sample_indices(end - start, REPORT_SHEET_ROWS)
    wanted_src = set(rows_t.tolist())
    src = {t: f for t, f in enumerate(iter_frames(source, start, start + int(rows_t.max()) + 1))
           if t in wanted_src}
    rows, labels = [], []
    for t in rows_t.tolist():
        row = [src[t]]
        for n in frames_out:
            cell = frames_out[n][t].copy()
            person = rs.rendered_person_mask(frames_out[n][t:t + 1], background)
            iou = rs.silhouette_agreement(person, silhouettes[n][t:t + 1])["silhouette_iou"]
            caption = f"IoU {iou:.2f}"
            if n in parts and reference.arm_model is not None:
                fid = rs.arm_fidelity(frames_out[n][t:t + 1], parts[n][t:t + 1], reference.arm_model,
                                      reference.torso_model, person)["arm_fidelity"]
                caption += "" if np.isnan(fid) else f" arm fidelity {fid:.2f}"
            rs.draw_label(cell, caption, (4, S - 8), 0.45)
            row.append(cell)
        rows.append(row)
        labels.append(f"frame {start + t}")
    sheet = rs.contact_sheet(rows, ["driving video"] + [_VARIANT_LABELS.get(n, n) for n in frames_out],
                             labels, height=S)
    return sheet, rows_t


def _report_json(source, start: int, end: int, engine: RendererBackend, arms: dict, variants: dict,
                 heldout: dict, captured: dict, reference, val_idx: np.ndarray, ref_idx: np.ndarray) -> dict:
    """The ``render_stats.json`` document of :func:`write_render_report` (without the sheet keys)."""
    from ram_avatar.eval import render_stats as rs

    return {
        "source": str(source), "frames": int(end - start), "resolution": engine.resolution,
        "backend": engine.kind,
        "arms": arms,
        "variants": variants, "mda_minus_no_mda": rs.summarize(variants),
        "heldout_reference": {**heldout, "frame_indices": [int(v) for v in val_idx]},
        "captured_heldout": {**captured, "frame_indices": [int(v) for v in val_idx]},
        "training_reference": {"frames": reference.frames, "frame_indices": [int(v) for v in ref_idx],
                               "sharpness": reference.sharpness, "speckle": reference.speckle,
                               "part_colour_pixels": reference.part_pixels(),
                               **(reference.arm_fidelity or {})},
        "person_threshold": rs.PERSON_THRESHOLD, "min_part_pixels": rs.MIN_PART_PIXELS,
        "part_erode_px": rs.PART_ERODE_PX,
        "better": rs.BETTER,
        "definitions": "ram_avatar/eval/render_stats.py (module docstring)",
    }


def write_render_report(output: Path, source: str | Path, start: int, end: int,
                        frames_out: dict[str, np.ndarray], silhouettes: dict[str, np.ndarray],
                        engine: RendererBackend, seq, body, batch: int = 4,
                        params: dict | None = None) -> dict:
    """Weights-free image statistics and a contact sheet of the avatar driven by ``source``.

    Writes next to ``output``:

    - ``<stem>.render_stats.json``: :func:`ram_avatar.eval.render_stats.render_stats` of every
      variant (``avatar`` = no alignment, ``avatar_mda`` = with motion distribution alignment),
      ``mda_minus_no_mda`` (their differences), ``heldout_reference`` (the same statistics for
      the subject's own held-out poses rendered the same way: what "in distribution" looks
      like), the training-frame reference and the direction of "better" of every key. With
      ``params`` each variant and the held-out reference also get the per-body-part coverages
      (``coverage_<part>``, ``arm_coverage``, ``part_pixels``, ``part_frames``) from a part-label
      rasterisation of their meshes (:func:`ram_avatar.eval.render_stats.part_label_maps`), and
      the per-part appearance: ``arm_fidelity`` (each arm and mean: arm pixels rendered in the
      arms' training colours rather than the torso's) and ``part_colour_distance`` (per part
      group, against the same part's pixels in the training frames); every one gets the chroma
      ``speckle`` and ``speckle_ratio``. ``captured_heldout`` holds the per-part appearance
      statistics of the real held-out frames (the captured person, inside the capture's person
      masks, so fit errors count too); ``training_reference`` the arm fidelity of the training
      frames the colour models come from (in-sample). ``arms`` puts ``arm_coverage`` and the
      ``arm_fidelity`` values of every variant and reference side by side;
    - ``<stem>.contact.png``: 8 frames evenly over the clip, columns driving frame | variants,
      each avatar cell captioned with that frame's silhouette IoU (and arm fidelity with
      ``params``).

    The learned background is the renderer's output for all-zero conditioning maps. The
    training reference (colours, sharpness, speckle, the arm and torso colour models) comes
    from ``REPORT_REFERENCE_FRAMES`` training frames with the part labels of their fitted
    meshes, restricted to the capture's person masks.

    Args:
        output: the drive video path; start/end: the driving frames rendered.
        frames_out: variant -> (T,S,S,3) uint8 rendered frames; silhouettes: variant ->
            (T,S,S) bool driven ``body_mask`` maps.
        params: variant -> BodyParams (T poses) of the driven bodies, for the per-part coverage.
    Returns:
        dict: ``stats_file``, ``contact_sheet`` paths, the ``variants`` statistics,
        ``mda_minus_no_mda`` and the ``arms`` table.
    """
    from ram_avatar.eval import render_stats as rs
    from ram_avatar.utils import atomic_write_text

    S = engine.resolution
    stats_path, sheet_path = _report_paths(Path(output))
    # the subject's own held-out poses, rendered as the driven ones (in-distribution reference)
    split = engine.run.split(seq)  # the run's split.json: what training held out
    train_idx, val_idx = split.train, split.val
    held, held_frames, background = _heldout_renders(engine, seq, body, val_idx, batch)
    # training reference: real crops inside the fitted body's silhouette; real crops of the
    # held-out frames (captured_heldout) and the capture's person masks of both
    ref_idx = train_idx[rs.sample_indices(len(train_idx), REPORT_REFERENCE_FRAMES)]
    ref_masks = render_sequence_maps(seq, ref_idx, S, body=body, desc="maps (training reference)")["body_mask"]
    crops, captured_person = _captured_crops(seq, set(ref_idx.tolist()) | set(val_idx.tolist()), S)
    # body-part label maps of the training, driven and held-out meshes (per-part statistics)
    K = crop_intrinsics(seq.K, seq.manifest["crop"], S)
    reference = _training_reference(body, seq, ref_idx, ref_masks, crops, captured_person, K, S)
    parts = {n: rs.part_label_maps(body, params[n], K, S) for n in frames_out} if params else {}
    held_parts = rs.part_label_maps(body, seq.params.index(torch.as_tensor(val_idx)), K, S)
    variants = {n: rs.render_stats(frames_out[n], silhouettes[n], background, reference, parts=parts.get(n))
                for n in frames_out}
    heldout = rs.render_stats(held_frames, held["body_mask"][:, 0].numpy() > 0, background, reference,
                              parts=held_parts)
    # the same per-part colour statistics on the real held-out frames (the captured person)
    captured = _captured_heldout_stats(crops, captured_person, val_idx, held_parts, reference)
    arms = _arms_table(variants, heldout, captured, reference)
    res = _report_json(source, start, end, engine, arms, variants, heldout, captured, reference, val_idx, ref_idx)
    sheet, rows_t = _report_contact_sheet(source, start, end, frames_out, silhouettes, parts, reference,
                                          background, S)
    rs.write_png(sheet_path, sheet)
    res["contact_sheet"] = str(sheet_path)
    res["contact_frames"] = [int(start + t) for t in rows_t]
    atomic_write_text(stats_path, json.dumps(res, indent=1))
    log.info("render report: %s, %s", stats_path, sheet_path)
    _log_arms(arms)
    return {"stats_file": str(stats_path), "contact_sheet": str(sheet_path), "variants": variants,
            "mda_minus_no_mda": res["mda_minus_no_mda"], "arms": arms}
