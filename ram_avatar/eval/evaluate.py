"""``ram-avatar evaluate``: image metrics of the trained renderer on held-out frames (Sec. 4.2).

The held-out frames are the run's own split (``runs/<run>/split.json``, decided once by
``train``: ``tail`` = the last ``val_fraction`` of the capture, ``segment`` = the contiguous block
of poses farthest from the rest; see ram_avatar.io.split), never trained on. ``--split`` asks
for the other split's frames: they may have been trained on, which ``split_note`` says. For each
frame, the renderer gets that frame's conditioning maps and the mean style code (test-time
setting); its output is compared with the real cropped frame:

- ``psnr``, ``ssim`` over the whole crop; ``psnr_masked``, ``ssim_masked`` inside the person
  mask (the capture's person segmentation, completed by the fitted body's silhouette);
- ``lpips`` (AlexNet LPIPS v0.1) and ``tlpips`` only when the ImageNet weights are available,
  else ``null`` (never computed with random weights);
- ``temporal_stability``: mean |(G[t]-G[t-1]) - (I[t]-I[t-1])| on consecutive held-out frames
  (weights-free, always).
- ``fid``: Fréchet Inception Distance (eval.fid) with the NVlabs TorchScript Inception
  (``inception-2015-12-05.pt`` in ``$RAM_AVATAR_WEIGHTS`` or the torch hub cache) when present,
  else ``null`` with a ``fid_note``; on a ~40-frame held-out clip it is a high-variance,
  upward-biased estimate, comparable only between runs evaluated on the same frames.

The full renderer reads its extra maps (expanded mesh, previous frame) from the same dataset
(``RendererConfig.data_extras``, the input contract of :mod:`ram_avatar.models.inputs`).

Layering: evaluation reads the run through :class:`ram_avatar.io.subject.Run` (renderer, split,
refined poses) and renders the held-out frames with :mod:`ram_avatar.render.sequence`; it
does not import ``ram_avatar.training``, except lazily for the opt-in test-time pose
refinement (``--refine-poses N``, :func:`ram_avatar.training.pose_refine.refine_heldout_poses`),
the one declared exception of the import contracts (pyproject ``[tool.importlinter]``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from ram_avatar.eval.metrics import load_lpips, psnr, ssim, temporal_lpips, temporal_stability
from ram_avatar.io.refined_poses import apply_refined_poses, load_refined_poses
from ram_avatar.io.sequence import load_sequence
from ram_avatar.io.split import Split, decide_split
from ram_avatar.io.subject import Subject
from ram_avatar.models import inputs as contract
from ram_avatar.render.sequence import SubjectDataset
from ram_avatar.utils import atomic_write_text, resolve_device

log = logging.getLogger(__name__)


@torch.no_grad()
def predict(model, dataset: SubjectDataset, device, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the renderer over a dataset with the mean style code.

    Returns:
        (pred (N,3,S,S), real (N,3,S,S), person_mask (N,1,S,S)), float in [0, 1], on CPU.
    """
    preds, reals, masks = [], [], []
    for c in range(0, len(dataset), batch):
        items = [dataset[i] for i in range(c, min(len(dataset), c + batch))]
        maps = {k: torch.stack([it[k] for it in items]).to(device) for k in model.input_names()}
        preds.append(model.forward_batch(maps, None)["rgb"].clamp(0, 1).cpu())
        reals.append(torch.stack([it["image"] for it in items]))
        masks.append(torch.stack([it["person_mask"] for it in items]))
    return torch.cat(preds), torch.cat(reals), torch.cat(masks)


def image_metrics(pred: torch.Tensor, real: torch.Tensor, person_mask: torch.Tensor,
                  frame_indices, lp=None, device="cpu") -> dict:
    """The image metrics of ``evaluate`` (module docstring) for rendered held-out frames.

    Args:
        pred, real: (N,3,S,S) float in [0, 1]; person_mask: (N,1,S,S) in [0, 1] (> 0.5 = person).
        frame_indices: (N,) frame indices; temporal metrics need consecutive frames.
        lp: LPIPS network (eval.metrics.load_lpips) or None (then lpips/tlpips are None).
        device: device of the FID network.
    Returns:
        dict: frames, frame_indices, psnr, ssim, psnr_masked, ssim_masked (dB / [0, 1]), lpips,
        tlpips, temporal_stability, fid (None where not computable) and the notes explaining
        a None (``lpips_note``, ``fid_note``).
    """
    from ram_avatar.eval.fid import compute_fid_with_note

    val = np.asarray(frame_indices, dtype=np.int64)
    m = (person_mask > 0.5).float()
    consecutive = bool(np.all(np.diff(val) == 1)) and len(val) > 1
    # FID on the few held-out frames is a high-variance, upward-biased estimate: compare only
    # runs evaluated on the same frames (see ram_avatar/eval/fid.py).
    fid, fid_note = compute_fid_with_note(pred, real, device=device)
    res = {
        "frames": len(val), "frame_indices": [int(v) for v in val],
        "psnr": float(psnr(pred, real).mean()), "ssim": float(ssim(pred, real).mean()),
        "psnr_masked": float(psnr(pred, real, m).mean()), "ssim_masked": float(ssim(pred, real, m).mean()),
        "lpips": float(lp(pred, real).mean()) if lp is not None else None,
        "tlpips": float(temporal_lpips(lp, pred, real)) if (lp is not None and consecutive) else None,
        "temporal_stability": float(temporal_stability(pred, real)) if consecutive else None,
        "fid": fid,
    }
    if lp is None:
        res["lpips_note"] = ("ImageNet AlexNet weights not found (alexnet-owt-7be5be79.pth): pass "
                             "--lpips-weights or put them in $RAM_AVATAR_WEIGHTS / the torch hub cache")
    if fid_note is not None:
        res["fid_note"] = fid_note
    return res


def evaluation_params(run, seq):
    """Body parameters to render held-out frames with, and a sentence saying which.

    Returns:
        (params, protocol): the sequence's fitted parameters, with the run's refined shared
        betas (and refined training poses) when it saved ``refined_poses.npz``.
    """
    refined = load_refined_poses(run.refined_poses_path)
    if refined is None:
        return seq.params, "fitted poses (no pose refinement in training)"
    return (apply_refined_poses(seq.params, refined),
            "held-out frames: fitted poses with the shape (betas) refined in training")


def evaluation_split(run_split: Split, seq, split: str | None = None) -> tuple[Split, str | None]:
    """The frames to evaluate: the run's own split, or the ``split`` method asked for.

    Args:
        run_split: the run's training split (:meth:`ram_avatar.io.subject.Run.split`).
        seq: the subject's FittedSequence.
        split: ``tail`` | ``segment`` | None (None: the run's own).
    Returns:
        (split, note): ``note`` is None for the run's own split, else a sentence saying how
        many of the evaluated frames the run trained on.
    """
    if split is None or split == run_split.method:
        return run_split, None
    other = decide_split(seq, split, run_split.val_fraction)
    trained = np.intersect1d(other.val, run_split.train)
    note = (f"evaluated on the {split!r} split's held-out frames, but this run was trained with the "
            f"{run_split.method!r} split: {len(trained)} of the {len(other.val)} evaluated frames "
            "were trained on, so these numbers do not measure generalisation to unseen frames "
            "alone; train a run with --holdout " + split + " for that")
    return other, note


#: the image metrics reported again for the fitted poses when test-time refinement is asked for
_PROTOCOL_KEYS = ("psnr", "ssim", "psnr_masked", "ssim_masked", "temporal_stability")


def evaluate_subject(subject_dir: str | Path, run_name: str = "default", device: str = "auto",
                     lpips_weights: str | None = None, mda: bool = False, source: str | None = None,
                     split: str | None = None, mda_options: dict | None = None,
                     refine_poses: int = 0) -> dict:
    """Evaluate a trained run on its held-out frames; writes ``<run>/metrics.json``.

    Poses: a run trained with pose refinement (``pose_refine``) saved ``refined_poses.npz``;
    its refined shared ``betas`` apply to the held-out frames, whose poses stay as fitted
    (they were never trained on). ``refine_poses > 0`` also refines the held-out frames' poses
    from their own images with the renderer frozen (training.pose_refine.refine_heldout_poses);
    ``pose_refinement`` in the result says which protocol the numbers used, and
    ``fitted_poses`` holds the same frames' image metrics with the fitted poses.

    Args:
        split: ``tail`` | ``segment`` | None: which held-out frames (None: the run's own split,
            read from its split.json; another one is computed anyway, with a ``split_note``).
        mda_options: keyword arguments of :func:`evaluate_mda` (strength, mode, curve, ...).
    Returns:
        dict with psnr, ssim, psnr_masked, ssim_masked, lpips, tlpips, temporal_stability,
        fid, frames, frame_indices, step, ``split`` (method), ``split_val_fraction``,
        ``run_split`` (the run's training split method), ``split_note`` when they differ (and
        the motion-alignment metrics when ``mda``).
    Raises:
        CheckpointError: nothing trained; SequenceFormatError: no capture; SplitError: a
        damaged split.json or one that does not fit the subject.
    """
    subject_dir = Path(subject_dir)
    dev = resolve_device(device)
    seq = load_sequence(subject_dir)
    run = Subject(subject_dir).run(run_name)
    model, info = run.load_renderer(dev)
    mc = model.config
    extras = contract.data_extras(model.input_names())
    run_split = run.split(seq)
    ev, split_note = evaluation_split(run_split, seq, split)
    val = ev.val
    params, protocol = evaluation_params(run, seq)
    ds = SubjectDataset(seq, val, mc.resolution, extras=extras, expand_offset=mc.expand_offset,
                        params=params)
    fitted_scores = None
    if refine_poses > 0:
        # opt-in test-time refinement: the one lazy import of training (module docstring)
        from ram_avatar.training.pose_refine import refine_heldout_poses

        # the same frames with the fitted poses first, so one call reports both protocols
        fitted_scores = {k: v for k, v in image_metrics(*predict(model, ds, dev), val).items()
                         if k in _PROTOCOL_KEYS}
        fitted_scores["pose_refinement"] = protocol
        params = refine_heldout_poses(model, ds, iterations=refine_poses, device=dev)
        ds = SubjectDataset(seq, val, mc.resolution, extras=extras, expand_offset=mc.expand_offset,
                            params=params, body=ds.body)
        protocol = (f"held-out poses refined from their own images ({refine_poses} passes, "
                    f"renderer frozen): test-time refinement, not comparable with fitted poses; "
                    + protocol)
    pred, real, mask = predict(model, ds, dev)
    lp = load_lpips("alex", backbone_path=lpips_weights, device="cpu")
    res = {"step": info["step"], "weights": info["weights"],
           **image_metrics(pred, real, mask, val, lp, dev),
           "resolution": mc.resolution, "preset": info["preset"],
           "split": ev.method, "split_val_fraction": ev.val_fraction,
           "run_split": run_split.method, "pose_refinement": protocol}
    if split_note is not None:
        res["split_note"] = split_note
    if fitted_scores is not None:
        res["fitted_poses"] = fitted_scores
    if mda:
        if source is None:
            from ram_avatar.errors import RamAvatarError

            raise RamAvatarError("--mda needs --source VIDEO (the driving video to measure)")
        res["mda"] = evaluate_mda(subject_dir, source, device=dev, **(mda_options or {}))
    out = run.metrics_path
    atomic_write_text(out, json.dumps(res, indent=1))
    res["metrics_file"] = str(out)
    return res


def _tracked_driver(source: str | Path, body, device, cache: bool = True):
    """(BodyParams, fps) of a driving video tracked as capture does (keypoints + body fit).

    With ``cache``, the fitted parameters are kept in ``$XDG_CACHE_HOME/ram_avatar/tracked``
    (default ``~/.cache``), keyed by the video's sha256, the body model and the fit settings,
    so that repeated motion-alignment measurements do not re-run keypoints and fitting.
    """
    import dataclasses
    import hashlib
    import os

    from ram_avatar.body.base import BodyParams
    from ram_avatar.capture.fitting import FitConfig
    from ram_avatar.capture.pipeline import track_video
    from ram_avatar.utils import atomic_path, sha256_file

    path = None
    if cache:
        key = hashlib.sha256(json.dumps([sha256_file(source), body.name, body.num_betas,
                                         dataclasses.asdict(FitConfig())], sort_keys=True, default=str)
                             .encode()).hexdigest()[:24]
        root = Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "ram_avatar" / "tracked"
        path = root / f"{Path(source).stem}-{key}.npz"
        if path.is_file():
            with np.load(path) as z:
                log.info("driving video %s: tracked parameters from the cache %s", source, path)
                return BodyParams.from_numpy({k: z[k] for k in z.files if k != "fps"}), float(z["fps"])
    tracked = track_video(source, body, device=device)
    tracked.masks.close()  # a driving video's masks are not used
    params, fps = tracked.params.to("cpu"), float(tracked.info.fps)
    if path is not None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, fps=np.float64(fps), **params.as_numpy())
    return params, fps


def evaluate_mda(subject_dir: str | Path, source: str | Path, device="cpu", strength: float = 1.0,
                 mode: str | None = None, curve: bool = False, strengths=None,
                 out_dir: str | Path | None = None, track_cache: bool = True) -> dict:
    """Motion-distribution-alignment measurements (Sec. 3.3) of a driving video on a subject.

    Tracks the driving video (keypoints + body fit, as capture; cached, see
    :func:`_tracked_driver`), then measures with :func:`ram_avatar.motion.metrics.mda_metrics`:
    ``id_angle_change_deg``, ``id_position_change_mm`` (held-out subject poses),
    ``ood_nn_distance_before/after``, ``arm_correlation``, ``jerk_before/after`` (driving poses).
    With ``curve``, also the trade-off curve of both filters (``global``, ``part``) at
    ``strengths`` (:func:`ram_avatar.motion.metrics.mda_curve`), written as
    ``<out_dir>/mda_curve-<video>.json`` and ``.png`` (default ``out_dir``: ``<subject>/mda``).

    Args:
        strength: filter strength of the single measurement; mode: ``part`` / ``global``
            (default: the fitted aligner's ``config.mode``).
        strengths: curve strengths (default 0, 0.25, 0.5, 0.75, 1).
        track_cache: reuse / store the tracked driving parameters.
    Returns:
        the mda_metrics dict (+ ``curve``: the curve dict with ``json`` / ``png`` paths).
    Raises:
        CheckpointError: no fitted aligner (run ``ram-avatar fit-mda``); VideoError/NoPersonError.
    """
    from ram_avatar.body import load_body_model
    from ram_avatar.motion.mda import MotionAligner
    from ram_avatar.motion.metrics import CURVE_STRENGTHS, mda_curve, mda_metrics, plot_mda_curve

    device = resolve_device(device)  # "auto" -> cuda | cpu
    seq = load_sequence(subject_dir)
    bm = seq.manifest["body_model"]
    body = load_body_model(bm["name"], model_path=bm.get("model_path"), device=device)
    params, fps = _tracked_driver(source, body, device, track_cache)
    aligner = MotionAligner.load(subject_dir)
    res = mda_metrics(subject_dir, params, strength=strength, body=body, sequence=seq, aligner=aligner,
                      source_fps=fps, mode=mode)
    res["source"] = str(source)
    if curve:
        c = mda_curve(subject_dir, params, strengths or CURVE_STRENGTHS, body=body, aligner=aligner,
                      sequence=seq, source_fps=fps)
        c["source"] = str(source)
        out = Path(out_dir) if out_dir is not None else Subject(subject_dir).mda_dir
        stem = f"mda_curve-{Path(source).stem}"
        c["json"] = str(out / f"{stem}.json")
        png = plot_mda_curve(c, out / f"{stem}.png")
        c["png"] = str(png) if png is not None else None
        atomic_write_text(c["json"], json.dumps(c, indent=1))
        res["curve"] = c
    return res
