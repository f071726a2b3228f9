"""``ram-avatar drive``: render the avatar with another person's motion (offline).

driving video -> track (keypoints + body fit, as capture) -> retarget onto the avatar's shape
and framing (runtime.retarget) -> optional motion distribution alignment (Sec. 3.3) ->
conditioning maps in the avatar's training crop -> renderer (ONNX Runtime or torch) ->
video of the driving frame beside the avatar frame, with the source's frame count and fps.
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
from ram_avatar.capture.video import VideoWriter, iter_frames
from ram_avatar.errors import RamAvatarError
from ram_avatar.io.sequence import load_sequence
from ram_avatar.runtime.retarget import load_driver_betas, retarget
from ram_avatar.training.data import maps_to_float, render_sequence_maps, split_frames
from ram_avatar.utils import progress, resolve_device

log = logging.getLogger(__name__)

#: height in pixels of the side-by-side output video
OUTPUT_HEIGHT = 512


class RendererBackend:
    """The avatar renderer behind one call signature: maps (float32 tensors) -> rgb (B,3,S,S).

    ``onnx`` runs ``<subject>/export/avatar.onnx`` with ONNX Runtime; ``torch`` loads the
    latest checkpoint of the run.
    """

    def __init__(self, subject_dir: Path, backend: str, run_name: str, device: torch.device):
        self.kind = backend
        if backend == "onnx":
            from ram_avatar.runtime.engines import OnnxRunner

            path = subject_dir / "export" / "avatar.onnx"
            if not path.is_file():
                raise RamAvatarError(f"{path} not found: run `ram-avatar export {subject_dir}` "
                                     "first, or use --backend torch")
            meta = json.loads((subject_dir / "export" / "export.json").read_text())
            self.resolution = int(meta["resolution"])
            self.runner = OnnxRunner(path)
        elif backend == "torch":
            from ram_avatar.training.run import load_renderer

            self.model, info = load_renderer(subject_dir, run_name, device)
            self.resolution = info["config"].model.resolution
            self.device = device
        else:
            raise RamAvatarError(f"unknown renderer backend {backend!r}: use onnx or torch")

    def __call__(self, maps: dict[str, torch.Tensor]) -> np.ndarray:
        """maps: uv, body_mask, hand, face (B,C,S,S) float32 -> (B,S,S,3) uint8 RGB."""
        if self.kind == "onnx":
            rgb = self.runner({k: maps[k] for k in ("uv", "body_mask", "hand", "face")})["rgb"]
        else:
            with torch.no_grad():
                rgb = self.model(**{k: v.to(self.device) for k, v in maps.items()},
                                 frame_index=None)["rgb"].cpu().numpy()
        return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


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


def drive(subject_dir: str | Path, source: str | Path, output: str | Path, backend: str = "onnx",
          device: str = "auto", run_name: str = "default", camera: str | Path | None = None,
          driver: str | Path | None = None, mda: str = "auto", mda_strength: float = 1.0,
          batch: int = 4) -> dict:
    """Drive the avatar of ``subject_dir`` with the motion in ``source``; write ``output``.

    Args:
        subject_dir: captured and trained (and for ``onnx``, exported) subject.
        source: driving video.
        output: output .mp4: driving frame | avatar frame (| aligned avatar with ``mda=both``).
        backend: ``onnx`` (ONNX Runtime) or ``torch``.
        device: device for tracking and the torch renderer.
        run_name: training run.
        camera: camera.json of the driving video.
        driver: driver.json (``calibrate driver``) giving the driver's body shape.
        mda: ``auto`` (on when fitted), ``on``, ``off``, or ``both`` (side by side).
        mda_strength: blend between the source pose (0) and the aligned pose (1).
    Returns:
        summary dict: frames, fps, output path, timings, retargeting info.
    Raises:
        VideoError / NoPersonError for a bad driving video; RamAvatarError when the avatar is
        not trained/exported.
    """
    t0 = time.time()
    subject_dir, output = Path(subject_dir), Path(output)
    dev = resolve_device(device)
    seq = load_sequence(subject_dir)
    engine = RendererBackend(subject_dir, backend, run_name, dev)
    aligner = _load_aligner(subject_dir, mda)
    bm = seq.manifest["body_model"]
    body = load_body_model(bm["name"], model_path=bm.get("model_path"), device=dev)
    tracked = track_video(source, body, camera=camera, device=dev)
    drv = tracked.params
    if driver is not None:
        drv.betas = load_driver_betas(driver, body)
    train_idx, _ = split_frames(seq)
    mask = np.zeros(seq.num_frames, bool)
    mask[train_idx] = True
    target, face_local, info = retarget(drv, seq.params, body, tracked.face_local, seq.face_local, mask)
    variants = {"avatar": target}
    if aligner is not None:
        aligned = aligner.align_params(target, strength=mda_strength, fps=tracked.info.fps)
        variants = {"avatar_mda": aligned} if mda != "both" else {"avatar": target, "avatar_mda": aligned}
    T = tracked.end - tracked.start
    S = engine.resolution
    t1 = time.time()
    frames_out = {}
    for name, params in variants.items():
        maps = render_sequence_maps(seq, np.arange(T), S, body=body, params=params,
                                    face_local=face_local, desc=f"maps ({name})")
        outs = []
        with progress() as bar:
            task = bar.add_task(f"render ({name}, {backend})", total=T, info="")
            for c in range(0, T, batch):
                sl = {k: v[c:c + batch] for k, v in maps.items()}
                outs.append(engine(maps_to_float(sl)))
                bar.advance(task, len(outs[-1]))
        frames_out[name] = np.concatenate(outs)
    t_render = time.time() - t1
    with VideoWriter(output, tracked.info.fps, _side_by_side(
            np.zeros((tracked.info.height, tracked.info.width, 3), np.uint8),
            np.concatenate([frames_out[n][0] for n in frames_out], 1), OUTPUT_HEIGHT).shape[1::-1]) as w:
        for t, frame in enumerate(iter_frames(source, tracked.start, tracked.end)):
            w.write(_side_by_side(frame, np.concatenate([frames_out[n][t] for n in frames_out], 1),
                                  OUTPUT_HEIGHT))
    return {"output": str(output), "frames": T, "fps": tracked.info.fps, "backend": backend,
            "resolution": S, "variants": list(variants), "retarget": info,
            "driver_reprojection_error_body": float(np.nanmedian(tracked.errors["body"])),
            "timings": {**tracked.timings, "render_s": t_render, "total_s": time.time() - t0}}
