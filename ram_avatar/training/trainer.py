"""Training loop of the avatar renderer (renderer v1: texture + StyleUNet, no GAN yet).

Loss (RAM-Avatar Eq. 3 without the GAN, VGG and hand terms, which later versions add):

    L = w_l1 * SmoothL1_beta(rgb, image) + w_ssim * (1 - SSIM(rgb, image))
        + w_mask * BCE(alpha_logit, person_mask)

where ``rgb`` is the person composited over the learned background. Adam, global gradient-norm
clipping, float16 autocast + GradScaler on CUDA only.

A run directory holds ``config.yaml`` (the resolved config), ``checkpoints/`` (atomic,
last K kept), ``tb/`` (TensorBoard scalars and preview grids) and ``previews/`` (PNG grids:
conditioning maps | output | ground truth | alpha). Calling :func:`train` again on the same
run directory resumes exactly from the latest checkpoint: same step, weights, optimiser state,
RNG states and data order (the batch order is a pure function of seed and step).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ram_avatar.errors import CheckpointError, RamAvatarError, TrainingDivergedError
from ram_avatar.models.renderer import AvatarRenderer, count_parameters
from ram_avatar.training.checkpoint import (latest_checkpoint, load_checkpoint, read_metadata,
                                            save_run_checkpoint)
from ram_avatar.training.config import TrainConfig, save_config
from ram_avatar.utils import atomic_path, progress, resolve_device

log = logging.getLogger(__name__)

MAP_KEYS = ("uv", "body_mask", "hand", "face")
ITEM_KEYS = MAP_KEYS + ("image", "person_mask", "frame_index")


# ---------------------------------------------------------------------------------------------
# data helpers


class ResumableBatchSampler(Sampler):
    """Endless shuffled batches whose order depends only on ``(seed, step)``.

    Epoch ``e`` uses ``randperm(n)`` from a generator seeded with ``(seed, e)``; batch ``k`` of
    an epoch is its ``k``-th slice of ``batch_size`` indices (the incomplete tail is dropped).
    Starting at ``start_step`` yields exactly the batches an uninterrupted run would have seen
    from that step on, which makes resuming exact without saving loader state.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int = 0) -> None:
        if num_items < 1 or batch_size < 1 or batch_size > num_items:
            raise ValueError(f"bad sampler sizes: {num_items} items, batch {batch_size}")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.batches_per_epoch = num_items // batch_size

    def _perm(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=gen)

    def __iter__(self):
        step = self.start_step
        epoch, perm = None, None
        while True:
            e, k = divmod(step, self.batches_per_epoch)
            if e != epoch:
                epoch, perm = e, self._perm(e)
            yield perm[k * self.batch_size:(k + 1) * self.batch_size].tolist()
            step += 1


def split_train_val(dataset: Dataset, val_fraction: float) -> tuple[Subset, Subset]:
    """Hold out the last ``ceil(val_fraction * N)`` items (a contiguous block of frames).

    A temporally separate block measures generalisation to unseen poses better than every
    k-th frame (whose neighbours are in the training set).
    """
    n = len(dataset)
    n_val = min(n - 1, math.ceil(val_fraction * n)) if val_fraction > 0 else 0
    return Subset(dataset, range(n - n_val)), Subset(dataset, range(n - n_val, n))


def dataset_num_frames(*datasets: Dataset | None) -> int:
    """Rows needed in the per-frame latent table: ``max(frame_index) + 1`` over the datasets.

    Uses a dataset's ``num_frames`` or ``frame_indices`` attribute when present (also through
    ``Subset``); otherwise reads every item once (slow for lazily rendered datasets).
    """
    best = 0
    for ds in datasets:
        if ds is None or len(ds) == 0:
            continue
        base = ds
        while isinstance(base, Subset) and not hasattr(base, "num_frames"):
            base = base.dataset
        if isinstance(getattr(base, "num_frames", None), int):
            best = max(best, int(base.num_frames))
        elif getattr(base, "frame_indices", None) is not None:
            best = max(best, int(max(base.frame_indices)) + 1)
        else:
            log.info("scanning %d dataset items for frame indices (give the dataset a "
                     "'num_frames' attribute to skip this)", len(ds))
            best = max(best, max(int(ds[i]["frame_index"]) for i in range(len(ds))) + 1)
    return max(best, 1)


def _check_batch(batch: dict, resolution: int, num_frames: int, shapes: bool = True) -> None:
    missing = [k for k in ITEM_KEYS if k not in batch]
    if missing:
        raise RamAvatarError(f"training items lack {missing}; each item must be a dict with "
                             f"{list(ITEM_KEYS)} (see docs/INTERFACES.md)")
    channels = {"uv": 2, "body_mask": 1, "hand": 5, "face": 3, "image": 3, "person_mask": 1}
    for key, c in (channels.items() if shapes else ()):
        shape = tuple(batch[key].shape[1:])
        if shape != (c, resolution, resolution):
            raise RamAvatarError(
                f"training item '{key}' has shape {shape}, expected ({c},{resolution},"
                f"{resolution}) for model.resolution={resolution}; render the dataset at the "
                "training resolution or change the config")
    fi = batch["frame_index"]
    if int(fi.min()) < 0 or int(fi.max()) >= num_frames:
        raise RamAvatarError(f"frame_index {int(fi.max())} out of range for model.num_frames="
                             f"{num_frames}; set model.num_frames to max frame index + 1 or "
                             "leave it empty to let training derive it from the data")


# ---------------------------------------------------------------------------------------------
# losses


def compute_losses(out: dict, batch: dict, config: TrainConfig) -> dict[str, torch.Tensor]:
    """Weighted loss terms (float32) and their sum under ``"total"``.

    Terms: ``l1`` SmoothL1(beta) (plain L1 when beta is 0) on the composited RGB, ``ssim``
    1 - SSIM (``ram_avatar.eval.metrics.ssim``), ``mask`` BCE of the alpha logit against the
    person mask. Values in the dict are unweighted; ``total`` is the weighted sum.
    """
    rgb = out["rgb"].float()
    image = batch["image"].float()
    losses: dict[str, torch.Tensor] = {}
    total = rgb.new_zeros(())
    if config.l1_weight > 0:
        if config.l1_beta > 0:
            losses["l1"] = F.smooth_l1_loss(rgb, image, beta=config.l1_beta)
        else:
            losses["l1"] = F.l1_loss(rgb, image)
        total = total + config.l1_weight * losses["l1"]
    if config.ssim_weight > 0:
        from ram_avatar.eval.metrics import ssim

        losses["ssim"] = 1.0 - ssim(rgb, image).mean()
        total = total + config.ssim_weight * losses["ssim"]
    if config.mask_weight > 0:
        losses["mask"] = F.binary_cross_entropy_with_logits(
            out["alpha_logit"].float(), batch["person_mask"].float().clamp(0, 1))
        total = total + config.mask_weight * losses["mask"]
    losses["total"] = total
    return losses


# ---------------------------------------------------------------------------------------------
# previews / validation


def maps_visual(batch: dict) -> torch.Tensor:
    """Conditioning maps as an RGB picture ``(B,3,H,W)``: (u, v, mask) tint, hands yellow, face cyan."""
    uv, mask = batch["uv"].float(), batch["body_mask"].float()
    base = torch.cat([uv * mask, mask * 0.5], dim=1) * 0.8
    hand = batch["hand"].float().amax(dim=1, keepdim=True).clamp(0, 1)
    face = batch["face"].float().amax(dim=1, keepdim=True).clamp(0, 1)
    yellow = torch.tensor([1.0, 1.0, 0.0], device=uv.device).view(1, 3, 1, 1)
    cyan = torch.tensor([0.0, 1.0, 1.0], device=uv.device).view(1, 3, 1, 1)
    vis = base * (1 - hand) + yellow * hand
    vis = vis * (1 - face) + cyan * face
    return vis.clamp(0, 1)


@torch.no_grad()
def preview_grid(model: AvatarRenderer, batch: dict, use_frame_latents: bool) -> torch.Tensor:
    """``(3, B*S, 4*S)`` grid, one row per item: maps | output | ground truth | alpha."""
    was_training = model.training
    model.eval()
    fi = batch["frame_index"] if use_frame_latents else None
    out = model(batch["uv"], batch["body_mask"], batch["hand"], batch["face"], fi)
    model.train(was_training)
    cols = [maps_visual(batch), out["rgb"].float(), batch["image"].float(),
            out["alpha"].float().expand(-1, 3, -1, -1)]
    rows = torch.cat(cols, dim=3)  # (B,3,S,4S)
    return torch.cat(list(rows), dim=1).clamp(0, 1).cpu()


def _save_png(grid: torch.Tensor, path: Path) -> None:
    from PIL import Image

    arr = (grid.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


@torch.no_grad()
def validate(model: AvatarRenderer, val_set: Dataset | None, max_items: int, batch_size: int,
             device: torch.device) -> float | None:
    """Mean PSNR (dB) of the composited output on the first ``max_items`` held-out items.

    Held-out frames have no trained per-frame latent, so the mean latent is used
    (``frame_index=None``), as at test time.
    """
    if val_set is None or len(val_set) == 0 or max_items <= 0:
        return None
    from ram_avatar.eval.metrics import psnr

    n = min(len(val_set), max_items)
    # own generator: creating the iterator must not consume the global RNG (exact resume)
    loader = DataLoader(Subset(val_set, range(n)), batch_size=batch_size, shuffle=False,
                        num_workers=0, generator=torch.Generator())
    was_training = model.training
    model.eval()
    values = []
    for batch in loader:
        batch = _to_device(batch, device)
        out = model(batch["uv"], batch["body_mask"], batch["hand"], batch["face"], None)
        values.append(psnr(out["rgb"].float().clamp(0, 1), batch["image"].float()))
    model.train(was_training)
    return float(torch.cat(values).mean())


def _to_device(batch: dict, device: torch.device) -> dict:
    non_blocking = device.type == "cuda"
    return {k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()}


def _collate_items(dataset: Dataset, count: int) -> dict | None:
    if dataset is None or len(dataset) == 0:
        return None
    from torch.utils.data import default_collate

    return default_collate([dataset[i] for i in range(min(count, len(dataset)))])


# ---------------------------------------------------------------------------------------------
# training


def _param_groups(model: AvatarRenderer, config: TrainConfig) -> list[dict]:
    """Adam groups: generator at ``lr``, texture and background at their multipliers."""
    texture = list(model.texture.parameters())
    background = [model.background_logit]
    special = {id(p) for p in texture + background}
    rest = [p for p in model.parameters() if id(p) not in special]
    return [
        {"params": rest, "lr": config.lr, "name": "generator"},
        {"params": texture, "lr": config.lr * config.texture_lr_mult, "name": "texture"},
        {"params": background, "lr": config.lr * config.background_lr_mult, "name": "background"},
    ]


@torch.no_grad()
def init_background(model: AvatarRenderer, dataset: Dataset, max_items: int = 16) -> None:
    """Set the learned background to the mean of pixels outside the person mask.

    Uses up to ``max_items`` evenly spaced items; pixels that are covered by the person in all
    of them stay grey (0.5). Assumes a static camera, as in the captured monocular videos.
    """
    n = len(dataset)
    if n == 0:
        return
    idx = sorted({round(k * (n - 1) / max(1, min(n, max_items) - 1)) for k in range(min(n, max_items))})
    acc = weight = None
    for i in idx:
        item = dataset[i]
        image = torch.as_tensor(item["image"]).float()
        keep = 1.0 - (torch.as_tensor(item["person_mask"]).float() > 0.5).float()
        acc = image * keep if acc is None else acc + image * keep
        weight = keep if weight is None else weight + keep
    s = model.config.resolution
    if acc.shape[-2:] != (s, s):
        return  # shape problems are reported by the first training batch
    bg = torch.where(weight > 0, acc / weight.clamp_min(1e-6), torch.full_like(acc, 0.5))
    bg = bg.clamp(0.02, 0.98)
    model.background_logit.copy_(torch.logit(bg)[None].to(model.background_logit))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def train(train_set: Dataset, val_set: Dataset | None, run_dir: str | os.PathLike,
          config: TrainConfig, steps: int | None = None, minutes: float | None = None,
          device: str | torch.device = "auto", show_progress: bool = True) -> dict:
    """Train (or resume training of) an :class:`AvatarRenderer` in ``run_dir``.

    Args:
        train_set: dataset of items as in docs/INTERFACES.md (``uv``, ``body_mask``, ``hand``,
            ``face``, ``image``, ``person_mask``, ``frame_index``) at ``config.model.resolution``.
        val_set: held-out items for validation PSNR and previews (may be None or empty).
        run_dir: run directory; if it holds checkpoints, training resumes from the latest.
        config: training config; ``model.num_frames=None`` is resolved from the datasets.
        steps: train until the global step count reaches ``steps`` (a total, not an increment:
            calling again with a larger value continues the same run).
        minutes: wall-clock budget of this call; with ``steps`` too, whichever ends first.
            With neither, trains until ``config.max_steps``.
        device: ``auto|cpu|cuda[:N]`` or a torch.device.
        show_progress: show the rich progress bar.

    Returns:
        Summary dict: ``step`` (final global step), ``start_step``, ``steps_run``,
        ``elapsed_s``, ``steps_per_s``, ``first_loss`` (total loss of this call's first step),
        ``losses`` (mean of each term over the last log window), ``val_psnr`` (dB or None),
        ``checkpoint`` (path of the latest checkpoint), ``run_dir``, ``num_parameters``.

    Raises:
        TrainingDivergedError: the loss became NaN/Inf; nothing new is saved and the message
            names the step and the last good checkpoint (attributes ``step``, ``checkpoint``).
        CheckpointError: the run's latest checkpoint is corrupt or belongs to another model.
        RamAvatarError: empty training set or items of the wrong shape.
    """
    device = resolve_device(device)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if len(train_set) == 0:
        raise RamAvatarError("the training set is empty; capture more frames or lower val_fraction")
    config = config.copy()
    config.validate()
    resume_path = latest_checkpoint(run_dir)
    saved_model = None
    if resume_path is not None:
        meta = read_metadata(resume_path)
        saved_model = (meta.get("config") or {}).get("model")
        if config.model.num_frames is None and saved_model and saved_model.get("num_frames"):
            config.model = replace(config.model, num_frames=int(saved_model["num_frames"]))
    if config.model.num_frames is None:
        config.model = replace(config.model, num_frames=dataset_num_frames(train_set, val_set))
    if saved_model is not None and saved_model != config.model.to_dict():
        current = config.model.to_dict()
        diff = sorted(k for k in set(saved_model) | set(current)
                      if saved_model.get(k) != current.get(k))
        raise CheckpointError(
            f"{run_dir} holds a run with a different model config (differs in: "
            f"{', '.join(diff)}); resume with the run's config.yaml or use a new run directory")

    save_config(config, run_dir / "config.yaml")

    _seed_everything(config.seed)
    model = AvatarRenderer(config.model).to(device)
    optimizer = torch.optim.Adam(_param_groups(model, config), lr=config.lr, betas=config.betas)
    use_amp = bool(config.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp) if device.type == "cuda" else None
    start_step = 0
    last_ckpt: Path | None = None
    if resume_path is None and config.init_background:
        init_background(model, train_set)
    if resume_path is not None:
        info = load_checkpoint(resume_path, model, optimizer, scaler, restore_rng=True)
        start_step, last_ckpt = info.step, resume_path
        for group, fresh in zip(optimizer.param_groups, _param_groups(model, config)):
            group["lr"], group["betas"] = fresh["lr"], config.betas
        log.info("resuming %s from step %d (%s)", run_dir, start_step, resume_path.name)
    n_params = count_parameters(model)
    log.info("renderer: %.2fM parameters (texture %.2fM, generator %.2fM) on %s",
             n_params / 1e6, count_parameters(model.texture) / 1e6,
             count_parameters(model.generator) / 1e6, device)

    target = steps if steps is not None else (None if minutes is not None else config.max_steps)
    deadline = time.monotonic() + minutes * 60.0 if minutes is not None else None

    batch_size = min(config.batch_size, len(train_set))
    sampler = ResumableBatchSampler(len(train_set), batch_size, config.seed, start_step)
    # own generator: creating the iterator must not consume the global RNG (exact resume);
    # worker seeds derive from (seed, start step)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=config.num_workers,
                        pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(config.seed * 7919 + start_step))
    preview_source = val_set if val_set is not None and len(val_set) > 0 else train_set
    preview_uses_latents = preview_source is train_set
    preview_batch = None

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step if start_step else None)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if use_amp \
        else contextlib.nullcontext

    step = start_step
    steps_run = 0
    first_loss: float | None = None
    window: dict[str, float] = {}
    window_n = 0
    window_t = time.perf_counter()
    last_losses: dict[str, float] = {}
    val_psnr: float | None = None
    t_start = time.perf_counter()
    checked = False
    model.train()

    def save(step_: int) -> Path:
        extra = {"losses": last_losses, "val_psnr": val_psnr}
        return save_run_checkpoint(run_dir, model, optimizer, step_, config.to_dict(), scaler,
                                   extra, keep=config.keep_checkpoints)

    def done() -> bool:
        if target is not None and step >= target:
            return True
        return deadline is not None and time.monotonic() >= deadline

    bar_total = float(minutes * 60.0) if target is None else float(target)
    bar_ctx = progress() if show_progress else contextlib.nullcontext()
    try:
        with bar_ctx as bar:
            task = None
            if bar is not None:
                task = bar.add_task("train" if target is not None else "train (s)",
                                    total=bar_total,
                                    completed=float(start_step) if target is not None else 0.0,
                                    info="")
            data_iter = iter(loader) if not done() else None
            while not done():
                batch = _to_device(next(data_iter), device)
                _check_batch(batch, config.model.resolution, config.model.num_frames,
                             shapes=not checked)
                checked = True
                frame_index = batch["frame_index"].long()
                with autocast():
                    out = model(batch["uv"], batch["body_mask"], batch["hand"], batch["face"],
                                frame_index)
                losses = compute_losses(out, batch, config)
                total = losses["total"]
                if not bool(torch.isfinite(total)):
                    terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
                    raise _diverged(f"non-finite loss ({terms})", step + 1, last_ckpt, config.lr)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None and use_amp:
                    scaler.scale(total).backward()
                    if config.grad_clip > 0:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    total.backward()
                    if config.grad_clip > 0:
                        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                        if not bool(torch.isfinite(norm)):
                            raise _diverged("non-finite gradients", step + 1, last_ckpt,
                                            config.lr)
                    optimizer.step()
                model.generator.mark_trained(frame_index)
                step += 1
                steps_run += 1

                values = {k: float(v.detach()) for k, v in losses.items()}
                if first_loss is None:
                    first_loss = values["total"]
                for k, v in values.items():
                    window[k] = window.get(k, 0.0) + v
                window_n += 1

                if step % config.log_interval == 0 or done():
                    now = time.perf_counter()
                    last_losses = {k: v / window_n for k, v in window.items()}
                    for k, v in last_losses.items():
                        writer.add_scalar(f"loss/{k}", v, step)
                    writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
                    writer.add_scalar("perf/steps_per_s", window_n / max(now - window_t, 1e-9),
                                      step)
                    window, window_n, window_t = {}, 0, now
                if step % config.preview_interval == 0:
                    if preview_batch is None:
                        preview_batch = _to_device(_collate_items(preview_source, 2), device)
                    grid = preview_grid(model, preview_batch, preview_uses_latents)
                    writer.add_image("preview", grid, step)
                    _save_png(grid, run_dir / "previews" / f"step_{step:08d}.png")
                if step % config.val_interval == 0:
                    val_psnr = validate(model, val_set, config.val_items, batch_size, device)
                    if val_psnr is not None:
                        writer.add_scalar("val/psnr", val_psnr, step)
                if step % config.checkpoint_interval == 0:
                    last_ckpt = save(step)

                if bar is not None:
                    elapsed = time.perf_counter() - t_start
                    info = f"step {step} loss {values['total']:.4f} {steps_run / elapsed:.2f} it/s"
                    if target is not None:
                        bar.update(task, completed=float(step), info=info)
                    else:
                        bar.update(task, completed=min(elapsed, bar_total), info=info)
        elapsed = time.perf_counter() - t_start
        if steps_run == 0 or step % config.val_interval != 0:
            val_psnr = validate(model, val_set, config.val_items, batch_size, device)
            if val_psnr is not None and steps_run > 0:
                writer.add_scalar("val/psnr", val_psnr, step)
        if steps_run > 0 and (last_ckpt is None or _ckpt_step(last_ckpt) != step):
            last_ckpt = save(step)
    finally:
        writer.flush()
        writer.close()

    summary = {
        "step": step,
        "start_step": start_step,
        "steps_run": steps_run,
        "elapsed_s": elapsed,
        "steps_per_s": steps_run / elapsed if elapsed > 0 else 0.0,
        "first_loss": first_loss,
        "losses": last_losses,
        "val_psnr": val_psnr,
        "checkpoint": str(last_ckpt) if last_ckpt is not None else None,
        "run_dir": str(run_dir),
        "num_parameters": n_params,
    }
    log.info("trained %d steps (now at %d) in %.1fs, %.2f steps/s, loss %s, val PSNR %s",
             steps_run, step, elapsed, summary["steps_per_s"],
             f"{last_losses.get('total', float('nan')):.4f}" if last_losses else "-",
             f"{val_psnr:.2f} dB" if val_psnr is not None else "-")
    return summary


def _diverged(what: str, step: int, last_ckpt: Path | None, lr: float) -> TrainingDivergedError:
    where = (f"last good checkpoint: {last_ckpt} (step {_ckpt_step(last_ckpt)})"
             if last_ckpt is not None else "no checkpoint was saved yet")
    err = TrainingDivergedError(
        f"training diverged at step {step}: {what}; nothing was saved for this step; {where}. "
        f"Check the data for NaN/Inf values, or lower lr (now {lr:g}) and train again to resume "
        "from that checkpoint.")
    err.step = step
    err.checkpoint = last_ckpt
    return err


def _ckpt_step(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return int(path.stem.split("_", 1)[1])
    except (IndexError, ValueError):
        return None
