"""Crop-and-upscale vs a closer virtual camera (issue 13, item 3): sharpness of the framed avatar.

Drives a trained, exported subject with a video through the live runtime
(:class:`ram_avatar.runtime.avatar_runtime.AvatarRuntime`, frames processed in order) once per
configuration, every configuration with a transparent output so the renderer's alpha gives the
person region:

- ``crop``: the framing box is cut out of the rendered training crop and upscaled;
- ``camera``: the maps are rendered by a virtual camera whose square view just holds the box
  (the renderer draws the framed part at its full resolution);
- ``camera<=Z``: the same, magnified at most Z times over the training crop (the top of the
  renderer's scale augmentation, ``augment_scale[1]`` of the run's config), the rest cropped.

Per configuration: the Laplacian variance of the grey output inside the eroded person region
(alpha > 200; :func:`ram_avatar.eval.render_stats.laplacian_variance`, the ``sharpness`` of the
render report), the mean magnification of the camera over the training crop, the renderer
pixels per output pixel, the mean render-stage time (renderer + composition; the same renderer in
every mode) and, for the camera modes, ``lowpass_psnr_vs_crop_db``: the PSNR against the crop
output inside the person once both are blurred to the crop's detail level (the same picture,
high for a camera view that only adds detail). Writes ``zoom_modes.json`` and a
contact sheet ``zoom_modes.png`` (rows: frames; columns: configurations, over a checkerboard)
to ``--out``.

Usage::

    python examples/measure_zoom_modes.py SUBJECT --source examples/basketball_drive.mp4 \\
        --frames 40 --out /tmp/zoom_modes
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import yaml


def _checker(img: np.ndarray, square: int = 16) -> np.ndarray:
    h, w = img.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    board = np.where(((yy // square + xx // square) % 2 == 0)[..., None], 200, 150).astype(np.float32)
    a = img[..., 3:].astype(np.float32) / 255.0
    return (img[..., :3] * a + board * (1 - a) + 0.5).astype(np.uint8)


def _lowpass_psnr(a: np.ndarray, b: np.ndarray, ppo: float) -> float:
    """PSNR (dB) of two (T,H,W,4) outputs inside both persons after both are brought down to
    the crop's own detail level (``ppo`` renderer pixels per output pixel: resize by ppo and
    back): is the closer camera's picture the same picture, only sharper?"""
    import cv2

    errs = []
    for x, y in zip(a, b):
        h, w = x.shape[:2]
        small = (max(1, int(round(w * ppo))), max(1, int(round(h * ppo))))
        lx, ly = (cv2.resize(cv2.resize(z[..., :3], small, interpolation=cv2.INTER_AREA), (w, h),
                             interpolation=cv2.INTER_LINEAR).astype(np.float64) for z in (x, y))
        m = (x[..., 3] > 200) & (y[..., 3] > 200)
        if m.sum() >= 16:
            errs.append(((lx - ly) ** 2)[m].mean())
    return float(10 * np.log10(255.0 ** 2 / max(np.mean(errs), 1e-12))) if errs else float("nan")


def main(argv=None) -> dict:
    from ram_avatar.capture.video import iter_frames, probe_video
    from ram_avatar.eval import render_stats as rs
    from ram_avatar.render.framing import OutputSettings
    from ram_avatar.runtime.avatar_runtime import AvatarRuntime

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("subject")
    p.add_argument("--source", default="examples/basketball_drive.mp4")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--framings", default="upper,head")
    p.add_argument("--out-size", default="1280x720")
    p.add_argument("--out", default="/tmp/zoom_modes")
    p.add_argument("--rows", type=int, default=3, help="frames in the contact sheet")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((Path(a.subject) / "runs" / "default" / "config.yaml").read_text())
    aug = cfg.get("data", cfg).get("augment_scale") or cfg.get("augment_scale")
    aug_prob = cfg.get("data", cfg).get("augment_prob", cfg.get("augment_prob"))
    cap = float(aug[1]) if aug else 1.25
    frames = list(iter_frames(a.source, a.start, a.start + a.frames))
    fps = float(probe_video(a.source).fps)
    configs = [("crop", "crop", None), ("camera", "camera", None), (f"camera<={cap:g}", "camera", cap)]
    report = {"subject": str(a.subject), "source": str(a.source), "frames": len(frames),
              "out_size": a.out_size, "augment_scale": aug, "augment_prob": aug_prob,
              "sharpness": "Laplacian variance of the grey output inside the person (alpha > 200, "
                           "eroded 2 px), mean over frames (ram_avatar.eval.render_stats)",
              "results": {}}
    sheet_rows = np.linspace(0, len(frames) - 1, a.rows).round().astype(int).tolist()
    cells: dict[tuple[str, str], list[np.ndarray]] = {}
    rt = AvatarRuntime(a.subject, backend="onnx", device="cpu")
    rt.want_landmarks = False
    try:
        for framing in a.framings.split(","):
            for name, mode, mz in configs:
                rt.set_output(OutputSettings.parse("transparent", framing, out_size=a.out_size,
                                                   zoom_mode=mode, max_camera_zoom=mz))
                rt.reset()
                imgs, mags, ppo, render_ms = [], [], [], []
                t0 = time.time()
                for i, f in enumerate(frames):
                    img, st = rt.process(f, timestamp=i / fps)  # as a camera at the video's rate
                    imgs.append(img)
                    render_ms.append(st["render"])
                    box, view = rt.last.extra.get("box"), rt.last.extra.get("camera_view")
                    side = view[2] if view is not None else rt.resolution
                    mags.append(rt.resolution / side)
                    # renderer pixels across the box / output pixels across it
                    ppo.append(box[2] * (rt.resolution / side) / img.shape[1])
                imgs = np.stack(imgs[3:])  # the first frames settle the box smoother
                masks = imgs[..., 3] > 200
                if name == "crop":
                    crop_imgs, crop_ppo = imgs, float(np.mean(ppo[3:]))
                res = {"sharpness": rs.laplacian_variance(imgs[..., :3], masks, 2),
                       "person_pixels_mean": float(masks.reshape(len(masks), -1).sum(1).mean()),
                       "camera_magnification_mean": float(np.mean(mags[3:])),
                       "renderer_px_per_output_px": float(np.mean(ppo[3:])),
                       "render_stage_ms_mean": float(np.mean(render_ms[3:])),
                       "wall_s": round(time.time() - t0, 1)}
                if name != "crop":
                    res["lowpass_psnr_vs_crop_db"] = _lowpass_psnr(imgs, crop_imgs, crop_ppo)
                report["results"][f"{framing}/{name}"] = res
                print(framing, name, json.dumps(res), flush=True)
                for r in sheet_rows:  # imgs starts at frame 3
                    cells.setdefault((framing, name), []).append(_checker(imgs[max(r - 3, 0)]))
    finally:
        rt.close()
    # rows: (framing, frame); columns: configurations; row labels carry each cell's sharpness
    rows, labels = [], []
    for framing in a.framings.split(","):
        for i, r in enumerate(sheet_rows):
            rows.append([cells[(framing, n)][i] for n, _, _ in configs])
            sh = " | ".join(f"{report['results'][f'{framing}/{n}']['sharpness']:.0f}"
                            for n, _, _ in configs)
            labels.append(f"{framing}, frame {a.start + r} (clip sharpness {sh})")
    sheet = rs.contact_sheet(rows, [n for n, _, _ in configs], labels, height=360)
    rs.write_png(out_dir / "zoom_modes.png", sheet)
    report["contact_sheet"] = str(out_dir / "zoom_modes.png")
    (out_dir / "zoom_modes.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
