"""Training loop of the avatar renderer (v1 and the full RAM-Avatar renderer).

Loss (RAM-Avatar Eq. 3; every term switchable by its weight):

    L_G = w_l1 * SmoothL1_beta(rgb, image) + w_ssim * (1 - SSIM(rgb, image))
          + w_mask * BCE(alpha_logit, person_mask) + w_vgg * VGG19(rgb, image)
          + w_hand * P(hand crops of rgb, image) + w_gan(step) * softplus(-D(I[t-1], rgb, I[t+1]))
    L_D = softplus(-D(I[t-1], I[t], I[t+1])) + softplus(D(I[t-1], rgb, I[t+1]))
          + every r1_interval steps: r1_interval * gamma / 2 * ||grad D(real)||^2

where ``rgb`` is the person composited over the learned background, D the temporal
discriminator (Eq. 4; real frames really are the real sample here, unlike the released code,
which swaps them) and w_gan ramps from 1e-3 to 0.02 (losses.gan). Without VGG19 weights the VGG
term becomes 1 - SSIM (losses.perceptual); the hand distance is LPIPS, VGG19 or L1 (losses.hand).
Everything in the renderer, including the dual attention (which the released trainer never
gives to its optimiser), is optimised by one Adam with global gradient-norm clipping; the
discriminator has its own Adam. Optional EMA of the renderer's weights. Mixed precision on CUDA
only: bfloat16 autocast where the GPU supports it (no loss scaling needed), else float16
autocast + GradScaler.

Multi-GPU: run under ``torchrun --nproc_per_node N``. When ``WORLD_SIZE > 1`` the trainer joins
the process group (NCCL on CUDA, gloo on CPU), wraps the renderer in
DistributedDataParallel, gives each rank its own slice of every global batch (``batch_size``
items per rank; the slices partition the same seeded, step-indexed permutation a
DistributedSampler would shard, which keeps resuming exact) and averages the discriminator's
gradients with an all-reduce (its real and fake passes and the R1 double-backward do not fit
DDP's one-forward-one-backward reducer). Only rank 0 writes (config, checkpoints, TensorBoard,
previews) and validates.

Checkpoints: ``step_N.safetensors`` holds the renderer, its optimiser, AMP scaler and RNG states
(what :func:`ram_avatar.training.run.load_renderer` reads); when a discriminator or an EMA is
trained, ``step_N.aux.safetensors`` next to it holds the discriminator, its optimiser and
scaler, and the EMA weights (written first, so a main checkpoint always has its aux file).

A run directory holds ``config.yaml`` (the resolved config), ``checkpoints/`` (atomic,
last K kept), ``tb/`` (TensorBoard scalars and preview grids) and ``previews/`` (PNG grids:
conditioning maps | output | ground truth | alpha). Calling :func:`train` again on the same
run directory resumes exactly from the latest checkpoint: same step, weights, optimiser state,
RNG states and data order (the batch order is a pure function of seed and step).
"""

from __future__ import annotations

import contextlib
import copy
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
from ram_avatar.models.renderer import AvatarRenderer, RendererConfig, count_parameters
from ram_avatar.training.checkpoint import (CHECKPOINT_DIR, latest_checkpoint,
                                            list_checkpoints, load_checkpoint, read_checkpoint,
                                            read_metadata, save_checkpoint, save_run_checkpoint)
from ram_avatar.training.augment import BatchAugmenter, composite_solid
from ram_avatar.training.config import TrainConfig, save_config
from ram_avatar.training.pose_refine import (REFINED_POSES_FILE, PoseRefiner,
                                             RefinedMapRenderer, save_refined_poses)
from ram_avatar.utils import atomic_path, progress, resolve_device

log = logging.getLogger(__name__)

MAP_KEYS = ("uv", "body_mask", "hand", "face")
ITEM_KEYS = MAP_KEYS + ("image", "person_mask", "frame_index")
#: optional item keys per dataset extra (training.data / render.conditioning flags)
EXTRA_ITEM_KEYS = {
    "expanded": ("uv_expanded", "body_mask_expanded"),
    "canonical": ("canon",),
    "temporal": ("prev_uv", "prev_body_mask"),
    "neighbours": ("image_prev", "image_next"),
    "hand_boxes": ("hand_boxes", "hand_valid"),
}


def required_extras(config: TrainConfig) -> tuple[str, ...]:
    """Dataset extras a training config needs (pass them to ``SubjectDataset(extras=...)``):
    the model's (``expanded``, ``canonical``, ``temporal``) plus ``neighbours`` (images
    t-1, t+1) for the temporal discriminator and ``hand_boxes`` for the hand loss."""
    out = list(config.model.data_extras())
    if config.adversarial:
        out.append("neighbours")
    if config.hand_weight > 0:
        out.append("hand_boxes")
    return tuple(out)


def required_item_keys(config: TrainConfig) -> tuple[str, ...]:
    """Item keys training with ``config`` reads beyond :data:`ITEM_KEYS`."""
    keys: list[str] = []
    extras = required_extras(config)
    for extra in extras:
        keys += EXTRA_ITEM_KEYS[extra]
    if "canonical" in extras:  # triplane: canonical versions of the expanded/previous maps
        if "expanded" in extras:
            keys.append("canon_expanded")
        if "temporal" in extras:
            keys.append("prev_canon")
    return tuple(keys)


# ---------------------------------------------------------------------------------------------
# data helpers


class ResumableBatchSampler(Sampler):
    """Endless shuffled batches whose order depends only on ``(seed, step)``.

    Epoch ``e`` uses ``randperm(n)`` from a generator seeded with ``(seed, e)``; batch ``k`` of
    an epoch is its ``k``-th slice of ``batch_size`` indices (the incomplete tail is dropped).
    Starting at ``start_step`` yields exactly the batches an uninterrupted run would have seen
    from that step on, which makes resuming exact without saving loader state.

    With ``world_size > 1`` each global batch has ``batch_size * world_size`` indices and rank
    ``r`` gets the ``r``-th slice of ``batch_size`` (DDP data sharding).
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if num_items < 1 or batch_size < 1 or batch_size * world_size > num_items:
            raise ValueError(f"bad sampler sizes: {num_items} items, batch {batch_size} x "
                             f"{world_size} ranks")
        self.num_items = num_items
        self.rank_batch = batch_size
        self.rank = rank
        self.batch_size = batch_size * world_size
        self.seed = seed
        self.start_step = start_step
        self.batches_per_epoch = num_items // self.batch_size

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
            batch = perm[k * self.batch_size:(k + 1) * self.batch_size]
            yield batch[self.rank * self.rank_batch:(self.rank + 1) * self.rank_batch].tolist()
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


def _check_batch(batch: dict, resolution: int, num_frames: int, shapes: bool = True,
                 extra_keys: tuple[str, ...] = ()) -> None:
    missing = [k for k in ITEM_KEYS if k not in batch]
    if missing:
        raise RamAvatarError(f"training items lack {missing}; each item must be a dict with "
                             f"{list(ITEM_KEYS)} (see docs/INTERFACES.md)")
    missing = [k for k in extra_keys if k not in batch]
    if missing:
        raise RamAvatarError(
            f"training items lack {missing}, which this config needs (full renderer, temporal "
            "discriminator or hand loss); build the dataset with "
            "SubjectDataset(..., extras=required_extras(config)) from "
            "ram_avatar.training.trainer, or switch those parts off in the config")
    channels = {"uv": 2, "body_mask": 1, "hand": 5, "face": 3, "image": 3, "person_mask": 1,
                "uv_expanded": 2, "body_mask_expanded": 1, "prev_uv": 2, "prev_body_mask": 1,
                "canon": 3, "canon_expanded": 3, "prev_canon": 3, "image_prev": 3,
                "image_next": 3}
    channels = {k: c for k, c in channels.items() if k in ITEM_KEYS or k in extra_keys}
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


def compute_losses(out: dict, batch: dict, config: TrainConfig, vgg=None,
                   hand=None) -> dict[str, torch.Tensor]:
    """Weighted loss terms (float32) and their sum under ``"total"`` (generator side, no GAN).

    Terms: ``l1`` SmoothL1(beta) (plain L1 when beta is 0) on the composited RGB, ``ssim``
    1 - SSIM (``ram_avatar.eval.metrics.ssim``), ``mask`` BCE of the alpha logit against the
    person mask, ``vgg`` VGG19 perceptual loss when ``vgg`` (a VGGPerceptualLoss) is given, or
    ``vgg_fallback_ssim`` (1 - SSIM with the VGG weight) when it is None, ``hand`` the hand
    perceptual loss when ``hand`` (losses.hand.HandPerceptualLoss) is given and the batch has
    ``hand_boxes``. Values in the dict are unweighted; ``total`` is the weighted sum.
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
    if config.vgg_weight > 0:
        if vgg is not None:
            losses["vgg"] = vgg(rgb, image)
            total = total + config.vgg_weight * losses["vgg"]
        else:
            from ram_avatar.losses.perceptual import ssim_loss

            # the same 1 - SSIM as the ssim term: reuse it instead of computing it twice
            losses["vgg_fallback_ssim"] = losses["ssim"] if "ssim" in losses \
                else ssim_loss(rgb, image)
            total = total + config.vgg_weight * losses["vgg_fallback_ssim"]
    if config.hand_weight > 0 and hand is not None and "hand_boxes" in batch:
        losses["hand"] = hand(rgb, image, batch["hand_boxes"], batch.get("hand_valid"))
        total = total + config.hand_weight * losses["hand"]
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
    out = model.forward_batch(batch, fi)
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
        out = model.forward_batch(batch, None)
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
    """Adam groups: generator (with attention and branches) at ``lr``, body features (texture
    or triplane) and background at their multipliers."""
    texture = list(model.body_features.parameters())
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


# ---------------------------------------------------------------------------------------------
# distributed / EMA / aux checkpoint helpers


class _Dist:
    """Process-group state from torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``)."""

    def __init__(self, device_arg) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.rank = int(os.environ.get("RANK", "0") or 0) if self.world > 1 else 0
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0) if self.world > 1 else 0
        self.device = resolve_device(device_arg)
        self.owns_group = False
        if self.world > 1:
            import torch.distributed as dist

            if self.device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
                self.owns_group = True
            self.world = dist.get_world_size()
            self.rank = dist.get_rank()

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def any(self, *flags: bool) -> list[bool]:
        """Logical OR of each flag over all ranks (so every rank stops / fails together)."""
        if not self.enabled:
            return list(flags)
        import torch.distributed as dist

        t = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def average_grads(self, module: torch.nn.Module) -> None:
        if not self.enabled:
            return
        import torch.distributed as dist

        for p in module.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenation of ``t`` (same shape on every rank) over the ranks."""
        if not self.enabled:
            return t
        import torch.distributed as dist

        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


class _AuxState(torch.nn.Module):
    """Container of what the aux checkpoint holds: discriminator, EMA renderer and/or the pose
    refiner's corrections (training.pose_refine)."""

    def __init__(self, discriminator=None, ema=None, pose_refiner=None) -> None:
        super().__init__()
        if discriminator is not None:
            self.discriminator = discriminator
        if ema is not None:
            self.ema = ema
        if pose_refiner is not None:
            self.pose_refiner = pose_refiner


def aux_checkpoint_path(main_checkpoint: str | os.PathLike) -> Path:
    """``step_N.aux.safetensors`` next to ``step_N.safetensors`` (discriminator, EMA)."""
    p = Path(main_checkpoint)
    return p.with_name(p.stem + ".aux.safetensors")


def load_ema_weights(checkpoint: str | os.PathLike, model: torch.nn.Module) -> bool:
    """Load the EMA renderer weights saved with ``checkpoint`` into ``model``.

    Returns:
        True when the checkpoint has EMA weights (loaded), False when it has none.
    Raises:
        CheckpointError: corrupt aux file or weights that do not match ``model``.
    """
    aux = aux_checkpoint_path(checkpoint)
    if not aux.is_file():
        return False
    tensors, _ = read_checkpoint(aux)
    state = {k[len("model.ema."):]: v for k, v in tensors.items() if k.startswith("model.ema.")}
    if not state:
        return False
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"EMA weights in {aux} do not match the model: {exc}") from None
    return True


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p.detach(), 1.0 - decay)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


def _set_requires_grad(module: torch.nn.Module | None, flag: bool) -> None:
    if module is not None:
        for p in module.parameters():
            p.requires_grad_(flag)


def _prune_aux(run_dir: Path) -> None:
    folder = run_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return
    mains = {p.name for p in list_checkpoints(run_dir)}
    for aux in folder.glob("step_*.aux.safetensors"):
        if aux.name.replace(".aux", "") not in mains:
            try:
                aux.unlink()
            except OSError as exc:  # pragma: no cover - best effort
                log.warning("could not remove old aux checkpoint %s: %s", aux, exc)


def _load_aux(path: Path, aux: _AuxState, opt_d, scaler_d) -> None:
    if not path.is_file():
        log.warning("%s is missing: the discriminator / EMA start fresh (the resume is not "
                    "exact for them)", path.name)
        return
    tensors, meta = read_checkpoint(path)
    for name, module in aux.named_children():
        prefix = f"model.{name}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not state:
            log.warning("%s holds no %s state: it starts fresh", path.name, name)
            continue
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {path}: {name} does not match the config "
                                  f"({exc}); resume with the run's config.yaml") from None
    if opt_d is not None and meta.get("optimizer") is not None:
        load_checkpoint(path, optimizer=opt_d, scaler=scaler_d)


def _forward(model, batch: dict, frame_index):
    """Call ``model`` (possibly DDP-wrapped) on a batch: base maps + the extras it holds."""
    from ram_avatar.models.renderer import EXTRA_INPUTS

    inner = model.module if hasattr(model, "module") else model
    extra = {k: batch[k] for k in EXTRA_INPUTS if k in batch} \
        if inner.config.variant == "full" else {}
    return model(batch.get("uv"), batch["body_mask"], batch.get("hand"), batch.get("face"),
                 frame_index, **extra)


# ---------------------------------------------------------------------------------------------
# training


def train(train_set: Dataset, val_set: Dataset | None, run_dir: str | os.PathLike,
          config: TrainConfig, steps: int | None = None, minutes: float | None = None,
          device: str | torch.device = "auto", show_progress: bool = True,
          init_texture: torch.Tensor | None = None) -> dict:
    """Train (or resume training of) an :class:`AvatarRenderer` in ``run_dir``.

    Args:
        train_set: dataset of items as in docs/INTERFACES.md (``uv``, ``body_mask``, ``hand``,
            ``face``, ``image``, ``person_mask``, ``frame_index``) at ``config.model.resolution``,
            plus the optional keys of :func:`required_extras` (full renderer, discriminator,
            hand loss).
        val_set: held-out items for validation PSNR and previews (may be None or empty).
        run_dir: run directory; if it holds checkpoints, training resumes from the latest.
        config: training config; ``model.num_frames=None`` is resolved from the datasets.
        steps: train until the global step count reaches ``steps`` (a total, not an increment:
            calling again with a larger value continues the same run).
        minutes: wall-clock budget of this call; with ``steps`` too, whichever ends first.
            With neither, trains until ``config.max_steps``.
        device: ``auto|cpu|cuda[:N]`` or a torch.device (under torchrun: the local rank's GPU).
        show_progress: show the rich progress bar (rank 0 only).
        init_texture: ``(1,3,H,W)`` RGB texture in [0,1] baked from the video
            (render.texture_bake), loaded into the renderer's fixed RGB texture
            (``model.texture_rgb``) when a run starts; ignored when resuming.

    With ``config.pose_refine`` the training set must provide the attributes of
    :class:`ram_avatar.training.data.SubjectDataset` used for re-rendering (``body``,
    ``params``, ``K_crop``, ``backend``).

    Returns:
        Summary dict: ``step`` (final global step), ``start_step``, ``steps_run``,
        ``elapsed_s``, ``steps_per_s``, ``first_loss`` (total loss of this call's first step),
        ``losses`` (mean of each term over the last log window), ``val_psnr`` (dB or None),
        ``checkpoint`` (path of the latest checkpoint), ``run_dir``, ``num_parameters``,
        ``world_size``.

    Raises:
        TrainingDivergedError: the loss became NaN/Inf; nothing new is saved and the message
            names the step and the last good checkpoint (attributes ``step``, ``checkpoint``).
        CheckpointError: the run's latest checkpoint is corrupt or belongs to another model.
        RamAvatarError: empty training set or items of the wrong shape / lacking keys.
    """
    dist_ctx = _Dist(device)
    try:
        return _train(train_set, val_set, Path(run_dir), config, steps, minutes, dist_ctx,
                      show_progress, init_texture)
    finally:
        dist_ctx.close()


def _train(train_set, val_set, run_dir: Path, config: TrainConfig, steps, minutes,
           dist_ctx: _Dist, show_progress: bool, init_texture=None) -> dict:
    device = dist_ctx.device
    main = dist_ctx.main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if len(train_set) == 0:
        raise RamAvatarError("the training set is empty; capture more frames or lower val_fraction")
    config = config.copy()
    config.validate()
    dist_ctx.barrier()
    resume_path = latest_checkpoint(run_dir)
    saved_model = None
    if resume_path is not None:
        meta = read_metadata(resume_path)
        saved_model = (meta.get("config") or {}).get("model")
        if saved_model is not None:  # configs written before a field existed: defaults
            try:
                saved_model = RendererConfig(**saved_model).to_dict()
            except TypeError:
                pass
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

    if main:
        save_config(config, run_dir / "config.yaml")

    _seed_everything(config.seed)
    model = AvatarRenderer(config.model).to(device)
    optimizer = torch.optim.Adam(_param_groups(model, config), lr=config.lr, betas=config.betas)
    use_amp = bool(config.amp and device.type == "cuda")
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scale_loss = use_amp and amp_dtype == torch.float16  # bf16 has float32's range
    scaler = torch.amp.GradScaler("cuda", enabled=scale_loss) if device.type == "cuda" else None
    disc = opt_d = scaler_d = None
    if config.adversarial:
        from ram_avatar.models.discriminator import TemporalDiscriminator

        disc = TemporalDiscriminator(config.model.resolution, frames=3,
                                     base_channels=config.disc_base_channels,
                                     max_channels=config.disc_max_channels).to(device)
        _set_requires_grad(disc, False)
        opt_d = torch.optim.Adam([{"params": list(disc.parameters()), "name": "discriminator"}],
                                 lr=config.lr * config.disc_lr_mult, betas=config.betas)
        scaler_d = torch.amp.GradScaler("cuda", enabled=scale_loss) if device.type == "cuda" \
            else None
    refiner = refine_maps = seq_params = None
    if config.pose_refine:
        refiner, refine_maps, seq_params = _setup_pose_refine(train_set, config, device)
        optimizer.add_param_group({"params": list(refiner.parameters()),
                                   "lr": config.pose_refine_lr, "name": "pose"})
    start_step = 0
    last_ckpt: Path | None = None
    if resume_path is None and config.init_background:
        init_background(model, train_set)
    if resume_path is None and init_texture is not None:
        if getattr(config.model, "texture_rgb", False):
            model.set_rgb_texture(init_texture.to(device))
        else:
            log.info("model.texture_rgb is off: the baked texture is not used")
    if resume_path is not None:
        info = load_checkpoint(resume_path, model, optimizer, scaler, restore_rng=True)
        start_step, last_ckpt = info.step, resume_path
        for group, fresh in zip(optimizer.param_groups, _param_groups(model, config)):
            group["lr"], group["betas"] = fresh["lr"], config.betas
        if refiner is not None:
            optimizer.param_groups[-1]["lr"] = config.pose_refine_lr
        log.info("resuming %s from step %d (%s)", run_dir, start_step, resume_path.name)
    ema = None
    if config.ema_decay > 0:
        ema = copy.deepcopy(model).eval()
        _set_requires_grad(ema, False)
    aux = _AuxState(disc, ema, refiner) \
        if (disc is not None or ema is not None or refiner is not None) else None
    if resume_path is not None and aux is not None:
        _load_aux(aux_checkpoint_path(resume_path), aux, opt_d, scaler_d)
        if opt_d is not None:
            for group in opt_d.param_groups:
                group["lr"], group["betas"] = config.lr * config.disc_lr_mult, config.betas

    vgg_loss = hand_loss = None
    if config.vgg_weight > 0 or (config.hand_weight > 0 and config.hand_loss in ("auto", "vgg")):
        from ram_avatar.losses.perceptual import build_vgg_loss

        vgg_loss = build_vgg_loss(config.vgg_weights, allow_fallback=True, device=device)
    if config.hand_weight > 0:
        from ram_avatar.losses.hand import build_hand_loss

        crop = config.hand_crop or max(16, config.model.resolution // 8)
        hand_loss = build_hand_loss(crop, config.hand_loss, vgg=vgg_loss, device=device,
                                    try_vgg=False)
        log.info("hand perceptual loss: %s on %d px crops", hand_loss.mode, crop)
    if config.vgg_weight <= 0:
        vgg_loss = None

    n_params = count_parameters(model)
    log.info("renderer (%s): %.2fM parameters (body features %.2fM, generator %.2fM%s) on %s",
             config.model.variant, n_params / 1e6, count_parameters(model.body_features) / 1e6,
             count_parameters(model.generator) / 1e6,
             f", attention {count_parameters(model.attention) / 1e6:.2f}M"
             if hasattr(model, "attention") else "", device)
    if disc is not None:
        log.info("temporal discriminator: %.2fM parameters", sum(p.numel() for p in
                                                                  disc.parameters()) / 1e6)

    train_model = model
    if dist_ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    target = steps if steps is not None else (None if minutes is not None else config.max_steps)
    deadline = time.monotonic() + minutes * 60.0 if minutes is not None else None

    batch_size = min(config.batch_size, len(train_set) // dist_ctx.world)
    if batch_size < 1:
        raise RamAvatarError(f"{len(train_set)} training items cannot feed {dist_ctx.world} ranks")
    sampler = ResumableBatchSampler(len(train_set), batch_size, config.seed, start_step,
                                    rank=dist_ctx.rank, world_size=dist_ctx.world)
    # own generator: creating the iterator must not consume the global RNG (exact resume);
    # worker seeds derive from (seed, start step)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=config.num_workers,
                        pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(config.seed * 7919 + start_step))
    preview_source = val_set if val_set is not None and len(val_set) > 0 else train_set
    preview_uses_latents = preview_source is train_set
    preview_batch = None
    extra_keys = required_item_keys(config)

    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step if start_step else None)
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if use_amp \
        else contextlib.nullcontext

    augmenter = BatchAugmenter(config, rank=dist_ctx.rank)
    step = start_step
    steps_run = 0
    first_loss: float | None = None
    window: dict[str, float] = {}
    window_count: dict[str, int] = {}
    window_n = 0
    window_t = time.perf_counter()
    last_losses: dict[str, float] = {}
    val_psnr: float | None = None
    t_start = time.perf_counter()
    elapsed = 0.0
    checked = False
    model.train()
    if disc is not None:
        disc.train()

    def save(step_: int) -> Path:
        extra = {"losses": last_losses, "val_psnr": val_psnr}
        if aux is not None:  # aux first: a main checkpoint always has its aux file
            aux_path = aux_checkpoint_path(
                run_dir / CHECKPOINT_DIR / f"step_{int(step_):08d}.safetensors")
            aux_path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(aux_path, aux, opt_d, step_, None, scaler_d,
                            {"parts": [n for n, _ in aux.named_children()]}, save_rng=False)
        path = save_run_checkpoint(run_dir, model, optimizer, step_, config.to_dict(), scaler,
                                   extra, keep=config.keep_checkpoints)
        _prune_aux(run_dir)
        if refiner is not None:
            save_refined_poses(run_dir / REFINED_POSES_FILE, refiner, seq_params, step_)
        return path

    def done() -> bool:
        if target is not None and step >= target:
            return True
        return deadline is not None and time.monotonic() >= deadline

    def clip_and_step(opt, sc, params, loss, what: str) -> None:
        if sc is not None and scale_loss:
            sc.scale(loss).backward()
            if what == "discriminator":
                dist_ctx.average_grads(disc)
            elif refiner is not None:
                dist_ctx.average_grads(refiner)
            if config.grad_clip > 0:
                sc.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            sc.step(opt)
            sc.update()
            return
        loss.backward()
        if what == "discriminator":
            dist_ctx.average_grads(disc)
        elif refiner is not None:
            dist_ctx.average_grads(refiner)
        if config.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            bad = dist_ctx.any(not bool(torch.isfinite(norm)))[0]
            if bad:
                raise _diverged(f"non-finite {what} gradients", step + 1, last_ckpt, config.lr)
        opt.step()

    bar_total = float(minutes * 60.0) if target is None else float(target)
    bar_ctx = progress() if (show_progress and main) else contextlib.nullcontext()
    try:
        with bar_ctx as bar:
            task = None
            if bar is not None:
                task = bar.add_task("train" if target is not None else "train (s)",
                                    total=bar_total,
                                    completed=float(start_step) if target is not None else 0.0,
                                    info="")
            data_iter = iter(loader) if not dist_ctx.any(done())[0] else None
            while data_iter is not None:
                batch = _to_device(next(data_iter), device)
                _check_batch(batch, config.model.resolution, config.model.num_frames,
                             shapes=not checked, extra_keys=extra_keys)
                checked = True
                frame_index = batch["frame_index"].long()
                if refiner is not None:  # re-render the surface maps from the refined poses
                    batch.update(refine_maps(refiner.refine(
                        seq_params.index(frame_index.cpu()).to(device), frame_index)))
                batch, colour = augmenter(batch, step)
                # ---- generator (renderer) step
                with autocast():
                    out = _forward(train_model, batch, frame_index)
                if colour is not None:  # matting: the person over a random solid colour
                    out = dict(out, rgb=composite_solid(out["fg"], out["alpha"], colour))
                losses = compute_losses(out, batch, config, vgg=vgg_loss, hand=hand_loss)
                total = losses["total"]
                if refiner is not None:
                    losses["pose_prior"] = refiner.prior_loss(
                        frame_index, config.pose_rot_sigma, config.pose_transl_sigma,
                        config.pose_betas_sigma)
                    total = total + config.pose_prior_weight * losses["pose_prior"]
                    losses["total"] = total
                # the discriminator judges real triplets only: steps whose target was warped
                # or re-composited skip it (its neighbour frames are not transformed)
                use_disc = disc is not None and colour is None
                if use_disc:
                    w_gan = gan_weight_at(config, step)
                    from ram_avatar.models.discriminator import stack_frames
                    from ram_avatar.losses.gan import g_nonsaturating_loss

                    fake = stack_frames(batch["image_prev"], out["rgb"], batch["image_next"])
                    with autocast():
                        fake_logits = disc(fake)
                    losses["gan_g"] = g_nonsaturating_loss(fake_logits.float())
                    total = total + w_gan * losses["gan_g"]
                    losses["total"] = total
                if dist_ctx.any(not bool(torch.isfinite(total)))[0]:
                    terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
                    raise _diverged(f"non-finite loss ({terms})", step + 1, last_ckpt, config.lr)
                optimizer.zero_grad(set_to_none=True)
                clip_and_step(optimizer, scaler, model.parameters(), total, "renderer")
                model.generator.mark_trained(dist_ctx.all_gather(frame_index))
                if ema is not None:
                    _ema_update(ema, model, config.ema_decay)
                # ---- discriminator step (real really real: Eq. 4)
                if use_disc:
                    d_terms = _discriminator_step(disc, opt_d, scaler_d, batch, out["rgb"],
                                                  config, step, autocast, clip_and_step)
                    losses.update(d_terms)
                step += 1
                steps_run += 1

                values = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
                          for k, v in losses.items()}
                if use_disc:
                    values["gan_weight"] = gan_weight_at(config, step - 1)
                if first_loss is None:
                    first_loss = values["total"]
                for k, v in values.items():
                    window[k] = window.get(k, 0.0) + v
                    window_count[k] = window_count.get(k, 0) + 1
                window_n += 1
                stop = dist_ctx.any(done())[0]

                if step % config.log_interval == 0 or stop:
                    now = time.perf_counter()
                    last_losses = {k: v / window_count[k] for k, v in window.items()}
                    window_count = {}
                    if writer is not None:
                        for k, v in last_losses.items():
                            writer.add_scalar(f"loss/{k}", v, step)
                        writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
                        writer.add_scalar("perf/steps_per_s",
                                          window_n / max(now - window_t, 1e-9), step)
                    window, window_n, window_t = {}, 0, now
                if main and step % config.preview_interval == 0:
                    if preview_batch is None:
                        preview_batch = _to_device(_collate_items(preview_source, 2), device)
                    grid = preview_grid(model, preview_batch, preview_uses_latents)
                    writer.add_image("preview", grid, step)
                    _save_png(grid, run_dir / "previews" / f"step_{step:08d}.png")
                if main and step % config.val_interval == 0:
                    val_psnr = validate(model, val_set, config.val_items, batch_size, device)
                    if val_psnr is not None:
                        writer.add_scalar("val/psnr", val_psnr, step)
                if step % config.checkpoint_interval == 0:
                    if main:
                        last_ckpt = save(step)
                    dist_ctx.barrier()

                if bar is not None:
                    elapsed = time.perf_counter() - t_start
                    info = f"step {step} loss {values['total']:.4f} {steps_run / elapsed:.2f} it/s"
                    if target is not None:
                        bar.update(task, completed=float(step), info=info)
                    else:
                        bar.update(task, completed=min(elapsed, bar_total), info=info)
                if stop:
                    break
        elapsed = time.perf_counter() - t_start
        if main and (steps_run == 0 or step % config.val_interval != 0):
            val_psnr = validate(model, val_set, config.val_items, batch_size, device)
            if val_psnr is not None and steps_run > 0:
                writer.add_scalar("val/psnr", val_psnr, step)
        if main and steps_run > 0 and (last_ckpt is None or _ckpt_step(last_ckpt) != step):
            last_ckpt = save(step)
        dist_ctx.barrier()
    finally:
        if writer is not None:
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
        "world_size": dist_ctx.world,
    }
    if main:
        log.info("trained %d steps (now at %d) in %.1fs, %.2f steps/s, loss %s, val PSNR %s",
                 steps_run, step, elapsed, summary["steps_per_s"],
                 f"{last_losses.get('total', float('nan')):.4f}" if last_losses else "-",
                 f"{val_psnr:.2f} dB" if val_psnr is not None else "-")
    return summary


def _setup_pose_refine(train_set: Dataset, config: TrainConfig, device: torch.device):
    """Pose refiner, its differentiable map renderer and the fitted parameters (on CPU)."""
    missing = [a for a in ("body", "params", "K_crop") if not hasattr(train_set, a)]
    if missing:
        raise RamAvatarError(f"pose_refine needs a SubjectDataset-like training set (missing "
                             f"{', '.join(missing)}); set pose_refine=false for this data")
    params = train_set.params
    body = train_set.body.to(device)
    refiner = PoseRefiner(params.batch_size, params.body_pose.shape[1],
                          params.betas.shape[1]).to(device)
    offset = config.model.expand_offset if "expanded" in config.model.data_extras() else None
    maps = RefinedMapRenderer(body, train_set.K_crop, config.model.resolution, offset,
                              backend=getattr(train_set, "backend", "auto"))
    return refiner, maps, params


def gan_weight_at(config: TrainConfig, step: int) -> float:
    """Generator GAN weight of ``config`` at ``step`` (losses.gan.gan_weight)."""
    from ram_avatar.losses.gan import gan_weight

    return gan_weight(step, config.gan_weight_start, config.gan_weight_max,
                      config.gan_ramp_every, config.gan_ramp_factor)


def _discriminator_step(disc, opt_d, scaler_d, batch: dict, rgb: torch.Tensor,
                        config: TrainConfig, step: int, autocast, clip_and_step) -> dict:
    """One discriminator update on (real, fake) triplets (Eq. 4) with lazy R1 on reals."""
    from ram_avatar.losses.gan import d_logistic_loss, r1_penalty
    from ram_avatar.models.discriminator import stack_frames

    _set_requires_grad(disc, True)
    try:
        real = stack_frames(batch["image_prev"], batch["image"], batch["image_next"]).float()
        fake = stack_frames(batch["image_prev"], rgb.detach(), batch["image_next"]).float()
        do_r1 = config.r1_gamma > 0 and step % config.r1_interval == 0
        if do_r1:
            real = real.detach().requires_grad_(True)
            real_logits = disc(real)  # float32 for the gradient penalty
        else:
            with autocast():
                real_logits = disc(real)
        with autocast():
            fake_logits = disc(fake)
        d_loss = d_logistic_loss(real_logits.float(), fake_logits.float())
        terms = {"gan_d": d_loss.detach(), "d_real": real_logits.detach().float().mean(),
                 "d_fake": fake_logits.detach().float().mean()}
        total = d_loss
        if do_r1:
            r1 = r1_penalty(real_logits, real)
            total = total + 0.5 * config.r1_gamma * config.r1_interval * r1
            terms["r1"] = r1.detach()
        opt_d.zero_grad(set_to_none=True)
        clip_and_step(opt_d, scaler_d, disc.parameters(), total, "discriminator")
    finally:
        _set_requires_grad(disc, False)
    return terms


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
