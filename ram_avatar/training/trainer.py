"""Training loop of the avatar renderer (v1 and the full RAM-Avatar renderer), in the shape of
nerfstudio's trainer: :class:`Trainer` with ``setup`` / ``train_iteration`` / ``validate`` /
``save``, around

- :class:`~ram_avatar.training.model.AvatarTrainingModel`: renderer, discriminator, losses
  (RAM-Avatar Eq. 3 and 4; ``param_groups()``, ``loss_dict()``, ``discriminator_step()``);
- :class:`~ram_avatar.training.distributed.DistributedContext` and
  :class:`~ram_avatar.training.distributed.Precision`: DDP under torchrun and mixed precision;
- :class:`~ram_avatar.training.state.TrainingState`: optimiser states, EMA and checkpoints.

Everything in the renderer, including the dual attention (which the released trainer never
gives to its optimiser), is optimised by one Adam with global gradient-norm clipping; the
discriminator has its own Adam. Optional EMA of the renderer's weights. Mixed precision on CUDA:
bfloat16 autocast where the GPU supports it (no loss scaling needed), else float16
autocast + GradScaler; on a CPU with native bfloat16, bfloat16 autocast (``optim.cpu_bf16``,
on in the CPU presets).

Multi-GPU: run under ``torchrun --nproc_per_node N``. When ``WORLD_SIZE > 1`` the trainer joins
the process group (NCCL on CUDA, gloo on CPU), wraps the renderer in
DistributedDataParallel, gives each rank its own slice of every global batch (``batch_size``
items per rank; the slices partition the same seeded, step-indexed permutation a
DistributedSampler would shard, which keeps resuming exact) and averages the discriminator's
gradients with an all-reduce (its real and fake passes and the R1 double-backward do not fit
DDP's one-forward-one-backward reducer). Only rank 0 writes (config, checkpoints, TensorBoard,
previews) and validates.

A run directory holds ``config.yaml`` (the resolved config), ``checkpoints/`` (atomic,
last K kept; training.state), ``tb/`` (TensorBoard scalars and preview grids) and ``previews/``
(PNG grids: conditioning maps | output | ground truth | alpha). Calling :func:`train` again on
the same run directory resumes exactly from the latest checkpoint: same step, weights,
optimiser state, RNG states and data order (the batch order is a pure function of seed and
step).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ram_avatar.errors import CheckpointError, RamAvatarError, TrainingDivergedError
from ram_avatar.models.renderer import AvatarRenderer, RendererConfig, count_parameters
from ram_avatar.training.augment import BatchAugmenter
from ram_avatar.training.batches import (EXTRA_ITEM_KEYS, ITEM_KEYS, MAP_KEYS,  # noqa: F401
                                         ResumableBatchSampler, check_batch, dataset_num_frames,
                                         required_extras, required_item_keys, split_train_val,
                                         to_device)
from ram_avatar.training.checkpoint import latest_checkpoint, read_metadata
from ram_avatar.training.config import TrainConfig, save_config
from ram_avatar.training.distributed import DistributedContext, NonFiniteGradients, Precision
from ram_avatar.training.model import (AvatarTrainingModel, discriminator_update,  # noqa: F401
                                       gan_weight_at, reconstruction_losses,
                                       renderer_param_groups)
from ram_avatar.training.state import (TrainingState, aux_checkpoint_path,  # noqa: F401
                                       load_ema_weights, lr_schedule_factor)
from ram_avatar.utils import atomic_path, progress

log = logging.getLogger(__name__)

#: names importable from here (the trainer's public names before issue 11 included)
__all__ = ["EXTRA_ITEM_KEYS", "ITEM_KEYS", "MAP_KEYS", "ResumableBatchSampler", "Trainer",
           "aux_checkpoint_path", "compute_losses", "dataset_num_frames", "gan_weight_at",
           "init_background", "load_ema_weights", "maps_visual", "preview_grid",
           "required_extras", "required_item_keys", "split_train_val", "train", "validate"]

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
        batch = to_device(batch, device)
        out = model.forward_batch(batch, None)
        values.append(psnr(out["rgb"].float().clamp(0, 1), batch["image"].float()))
    model.train(was_training)
    return float(torch.cat(values).mean())


def _collate_items(dataset: Dataset, count: int) -> dict | None:
    if dataset is None or len(dataset) == 0:
        return None
    from torch.utils.data import default_collate

    return default_collate([dataset[i] for i in range(min(count, len(dataset)))])


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
# the trainer


class _LossWindow:
    """Means of the logged values over the steps since the last scalar log."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0
        self.t0 = time.perf_counter()

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1
        self.steps += 1

    def flush(self) -> tuple[dict[str, float], float]:
        """(mean of each value, steps per second) since the last flush; starts a new window."""
        now = time.perf_counter()
        means = {k: v / self.counts[k] for k, v in self.sums.items()}
        rate = self.steps / max(now - self.t0, 1e-9)
        self.sums, self.counts, self.steps, self.t0 = {}, {}, 0, now
        return means, rate


class Trainer:
    """Trains (or resumes) an :class:`AvatarRenderer` in a run directory (module docstring).

    Use: ``trainer = Trainer(...); trainer.setup(); summary = trainer.fit(steps, minutes)``;
    :func:`train` does exactly that inside a :class:`DistributedContext`.

    Args:
        train_set, val_set, run_dir, config, init_texture: as in :func:`train`.
        dist: the process-group context (one rank outside torchrun).
        show_progress: show the rich progress bar (rank 0 only).

    Attributes (after :meth:`setup`):
        config: the resolved config (``model.num_frames`` set, written to ``config.yaml``).
        model: the :class:`AvatarTrainingModel`; state: the :class:`TrainingState`.
        step: the global step; start_step: the step this call started from.
    """

    def __init__(self, train_set: Dataset, val_set: Dataset | None, run_dir: str | os.PathLike,
                 config: TrainConfig, dist: DistributedContext, show_progress: bool = True,
                 init_texture: torch.Tensor | None = None) -> None:
        self.train_set, self.val_set = train_set, val_set
        self.run_dir = Path(run_dir)
        self.config = config
        self.dist = dist
        self.device = dist.device
        self.show_progress = show_progress
        self.init_texture = init_texture
        self.step = self.start_step = self.steps_run = 0
        # training seconds of the earlier calls of this run (from the resumed checkpoint) and
        # the start of this call's loop: checkpoints record their sum (``train_seconds``)
        self.seconds_before = 0.0
        self._fit_started: float | None = None
        self.first_loss: float | None = None
        self.last_losses: dict[str, float] = {}
        self.val_psnr: float | None = None

    # -- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        """Resolve the config against the run, build model, optimisers, EMA and data loader,
        and resume from the run's latest checkpoint when there is one.

        Raises:
            RamAvatarError: empty training set, too few items for the ranks.
            CheckpointError: the run holds another model, or its checkpoint is damaged.
        """
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if len(self.train_set) == 0:
            raise RamAvatarError("the training set is empty; capture more frames or lower "
                                 "val_fraction")
        resume_path = self._resolve_config()
        config = self.config
        if self.dist.main:
            save_config(config, self.run_dir / "config.yaml")
        _seed_everything(config.seed)
        self.precision = Precision(config.optim.amp, self.device, self.dist,
                                   config.optim.grad_clip, config.optim.cpu_bf16)
        self.model = model = AvatarTrainingModel(config, self.device, self.train_set,
                                                 self.precision.autocast)
        optimizer = torch.optim.Adam(model.param_groups(), lr=config.optim.lr,
                                     betas=config.optim.betas)
        opt_d = scaler_d = None
        if model.discriminator is not None:
            opt_d = torch.optim.Adam(model.discriminator_param_groups(),
                                     lr=config.optim.lr * config.gan.disc_lr_mult,
                                     betas=config.optim.betas)
            scaler_d = self.precision.scaler()
        self.state = TrainingState(self.run_dir, model, optimizer, self.precision.scaler(),
                                   opt_d, scaler_d)
        if resume_path is None:
            self._init_fresh()
        else:
            self.start_step = self.state.resume(resume_path)
            self.seconds_before = float(
                (read_metadata(resume_path).get("extra") or {}).get("train_seconds") or 0.0)
            log.info("resuming %s from step %d (%s)", self.run_dir, self.start_step,
                     resume_path.name)
        self.step = self.start_step
        self.state.start_ema(resume_path)
        model.build_losses()
        self.num_parameters = count_parameters(model.renderer)
        log.info("%s", model.describe())
        model.set_train_renderer(self.dist.wrap(model.renderer))
        self._setup_data()

    def _resolve_config(self) -> Path | None:
        """Copy and validate the config, take ``model.num_frames`` from the run or the data,
        refuse a run of another model; returns the checkpoint to resume from (or None)."""
        config = self.config = self.config.copy()
        config.validate()
        self.dist.barrier()
        resume_path = latest_checkpoint(self.run_dir)
        saved_model = None
        if resume_path is not None:
            saved_model = (read_metadata(resume_path).get("config") or {}).get("model")
            if saved_model is not None:  # configs written before a field existed: defaults
                try:
                    saved_model = RendererConfig(**saved_model).to_dict()
                except (TypeError, ValueError):
                    pass
            if config.model.num_frames is None and saved_model and saved_model.get("num_frames"):
                config.model = replace(config.model, num_frames=int(saved_model["num_frames"]))
        if config.model.num_frames is None:
            config.model = replace(config.model,
                                   num_frames=dataset_num_frames(self.train_set, self.val_set))
        if saved_model is not None and saved_model != config.model.to_dict():
            current = config.model.to_dict()
            diff = sorted(k for k in set(saved_model) | set(current)
                          if saved_model.get(k) != current.get(k))
            raise CheckpointError(
                f"{self.run_dir} holds a run with a different model config (differs in: "
                f"{', '.join(diff)}); resume with the run's config.yaml or use a new run "
                "directory")
        return resume_path

    def _init_fresh(self) -> None:
        """A new run: background from the training frames, baked RGB texture."""
        renderer = self.model.renderer
        if self.config.data.init_background:
            init_background(renderer, self.train_set)
        if self.init_texture is not None:
            if getattr(self.config.model, "texture_rgb", False):
                renderer.set_rgb_texture(self.init_texture.to(self.device))
            else:
                log.info("model.texture_rgb is off: the baked texture is not used")
        if self.config.optim.zero_init_residual:
            renderer.zero_init_residual()

    def _setup_data(self) -> None:
        """Sampler, loader, preview source, TensorBoard writer and augmenter."""
        config, dist = self.config, self.dist
        self.batch_size = min(config.data.batch_size, len(self.train_set) // dist.world)
        if self.batch_size < 1:
            raise RamAvatarError(f"{len(self.train_set)} training items cannot feed "
                                 f"{dist.world} ranks")
        sampler = ResumableBatchSampler(len(self.train_set), self.batch_size, config.seed,
                                        self.start_step, rank=dist.rank, world_size=dist.world)
        # own generator: creating the iterator must not consume the global RNG (exact resume);
        # worker seeds derive from (seed, start step)
        self.loader = DataLoader(
            self.train_set, batch_sampler=sampler, num_workers=config.data.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(config.seed * 7919 + self.start_step))
        has_val = self.val_set is not None and len(self.val_set) > 0
        self.preview_source = self.val_set if has_val else self.train_set
        self.preview_batch = None
        self.extra_keys = required_item_keys(config)
        self.checked = False
        self.writer = None
        if dist.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"),
                                        purge_step=self.start_step if self.start_step else None)
        self.augmenter = BatchAugmenter(config, rank=dist.rank)
        self.window = _LossWindow()

    # -- one step --------------------------------------------------------------------------
    def train_iteration(self, batch: dict) -> dict[str, float]:
        """One generator step (and discriminator step) on a collated batch; advances
        :attr:`step` and returns every loss term as a float (plus ``gan_weight``).

        Raises:
            TrainingDivergedError: NaN/Inf loss or gradients (nothing is stepped or saved).
            RamAvatarError: the batch lacks keys or has the wrong shapes.
        """
        model, state, step = self.model, self.state, self.step
        batch = to_device(batch, self.device)
        check_batch(batch, self.config.model.resolution, self.config.model.num_frames,
                    shapes=not self.checked, extra_keys=self.extra_keys)
        self.checked = True
        frame_index = batch["frame_index"].long()
        batch = model.refine_batch(batch, frame_index)
        batch, colour = self.augmenter(batch, step)
        out = model.forward(batch, frame_index, colour)
        # the discriminator judges real triplets only: steps whose target was warped or
        # re-composited skip it (its neighbour frames are not transformed)
        use_disc = (model.discriminator is not None and colour is None
                    and step >= self.config.gan.start_step)
        losses = model.loss_dict(batch, out, step, frame_index, use_disc)
        if self.dist.any(not bool(torch.isfinite(losses["total"])))[0]:
            terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
            raise self._diverged(f"non-finite loss ({terms})")
        state.optimizer.zero_grad(set_to_none=True)
        self._backward_step(state.optimizer, state.scaler, model.renderer.parameters(),
                            losses["total"], model.refiner, "renderer")
        model.renderer.generator.mark_trained(self.dist.all_gather(frame_index))
        state.update_ema(step)
        if use_disc:  # real really real: Eq. 4
            losses.update(model.discriminator_step(
                batch, out["rgb"], step, state.opt_d,
                lambda loss: self._backward_step(state.opt_d, state.scaler_d,
                                                 model.discriminator.parameters(), loss,
                                                 model.discriminator, "discriminator")))
        self.step += 1
        self.steps_run += 1
        values = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
                  for k, v in losses.items()}
        if use_disc:
            values["gan_weight"] = gan_weight_at(self.config, step)
        return values

    def _backward_step(self, optimizer, scaler, params, loss, average, what: str) -> None:
        try:
            self.precision.backward_step(optimizer, scaler, params, loss, average)
        except NonFiniteGradients:
            raise self._diverged(f"non-finite {what} gradients") from None

    def _diverged(self, what: str) -> TrainingDivergedError:
        step, last = self.step + 1, self.state.last_checkpoint
        where = (f"last good checkpoint: {last} (step {_ckpt_step(last)})"
                 if last is not None else "no checkpoint was saved yet")
        err = TrainingDivergedError(
            f"training diverged at step {step}: {what}; nothing was saved for this step; "
            f"{where}. Check the data for NaN/Inf values, or lower lr (now "
            f"{self.config.optim.lr:g}) and train again to resume from that checkpoint.")
        err.step = step
        err.checkpoint = last
        return err

    # -- validation, previews, checkpoints -------------------------------------------------
    def validate(self) -> float | None:
        """Validation PSNR (dB) of the renderer on the held-out items (:func:`validate`),
        logged to TensorBoard; None without held-out items."""
        psnr = validate(self.model.renderer, self.val_set, self.config.log.val_items,
                        self.batch_size, self.device)
        self.val_psnr = psnr
        return psnr

    def save(self) -> Path:
        """Checkpoint of the current step (training.state), with the last logged losses and
        validation PSNR."""
        return self.state.save(self.step, {"losses": self.last_losses,
                                           "val_psnr": self.val_psnr,
                                           "train_seconds": self.train_seconds()})

    def train_seconds(self) -> float:
        """Wall-clock seconds this run has trained, over every call (resumed runs add the
        ``train_seconds`` of the checkpoint they resumed from): what a time budget that
        survives interruptions counts (``ram-avatar create --minutes``)."""
        now = time.perf_counter()
        return self.seconds_before + (now - self._fit_started if self._fit_started else 0.0)

    def preview(self) -> None:
        """Write the preview grid (TensorBoard + ``previews/step_N.png``)."""
        if self.preview_batch is None:
            self.preview_batch = to_device(_collate_items(self.preview_source, 2), self.device)
        grid = preview_grid(self.model.renderer, self.preview_batch,
                            self.preview_source is self.train_set)
        self.writer.add_image("preview", grid, self.step)
        _save_png(grid, self.run_dir / "previews" / f"step_{self.step:08d}.png")

    def _after_iteration(self, values: dict[str, float], stop: bool) -> None:
        """Scalar logs, previews, validation and checkpoints due at this step."""
        log_cfg, step, main = self.config.log, self.step, self.dist.main
        if self.first_loss is None:
            self.first_loss = values["total"]
        self.window.add(values)
        if step % log_cfg.scalars_every == 0 or stop:
            self.last_losses, rate = self.window.flush()
            if self.writer is not None:
                for k, v in self.last_losses.items():
                    self.writer.add_scalar(f"loss/{k}", v, step)
                self.writer.add_scalar("train/lr", self.state.optimizer.param_groups[0]["lr"],
                                       step)
                self.writer.add_scalar("perf/steps_per_s", rate, step)
        if main and step % log_cfg.preview_every == 0:
            self.preview()
        if main and step % log_cfg.val_every == 0:
            if self.validate() is not None:
                self.writer.add_scalar("val/psnr", self.val_psnr, step)
        if step % log_cfg.checkpoint_every == 0:
            if main:
                self.save()
            self.dist.barrier()

    # -- the loop --------------------------------------------------------------------------
    def fit(self, steps: int | None = None, minutes: float | None = None) -> dict:
        """Train until the global step reaches ``steps`` or ``minutes`` have passed (whichever
        first; neither: ``max_steps``), then validate and save; returns the summary of
        :func:`train`.

        Ctrl-C (SIGINT, in the main thread) ends the loop after the current step, like a
        deadline: the final checkpoint is written, then KeyboardInterrupt is raised, so an
        interrupted run resumes from the step it reached instead of the last periodic
        checkpoint. A second Ctrl-C stops at once.

        Raises:
            KeyboardInterrupt: after the checkpoint, when interrupted.
        """
        target = steps if steps is not None else \
            (None if minutes is not None else self.config.max_steps)
        deadline = time.monotonic() + minutes * 60.0 if minutes is not None else None
        interrupted = []

        def done() -> bool:
            if interrupted or (target is not None and self.step >= target):
                return True
            return deadline is not None and time.monotonic() >= deadline

        def on_sigint(signum, frame) -> None:
            if interrupted:
                raise KeyboardInterrupt
            interrupted.append(signum)
            log.warning("interrupted: finishing step %d and saving a checkpoint (Ctrl-C again "
                        "to stop at once, losing the steps since the last checkpoint)",
                        self.step + 1)

        self.model.renderer.train()
        if self.model.discriminator is not None:
            self.model.discriminator.train()
        t_start = self._fit_started = time.perf_counter()
        # the budget the learning-rate schedule spans: this call's minutes on top of the run's
        # earlier training seconds (so `create --minutes`, which passes what is left, spans the
        # whole budget over every call)
        budget_s = self.seconds_before + minutes * 60.0 if minutes is not None else None
        bar_ctx = progress() if (self.show_progress and self.dist.main) \
            else contextlib.nullcontext()
        # installed right before the try whose finally restores it
        previous = (signal.signal(signal.SIGINT, on_sigint)
                    if threading.current_thread() is threading.main_thread() else None)
        try:
            with bar_ctx as bar:
                task = _add_task(bar, target, minutes, self.start_step)
                data_iter = iter(self.loader) if not self.dist.any(done())[0] else None
                while data_iter is not None:
                    self._schedule_lr(target, budget_s)
                    values = self.train_iteration(next(data_iter))
                    stop = self.dist.any(done())[0]
                    self._after_iteration(values, stop)
                    if bar is not None:
                        elapsed = time.perf_counter() - t_start
                        info = (f"step {self.step} loss {values['total']:.4f} "
                                f"{self.steps_run / elapsed:.2f} it/s")
                        bar.update(task, info=info, completed=float(self.step)
                                   if target is not None else min(elapsed, minutes * 60.0))
                    if stop:
                        break
            elapsed = time.perf_counter() - t_start
            self._finish()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            if self.writer is not None:
                self.writer.flush()
                self.writer.close()
        summary = self._summary(elapsed)
        if interrupted:
            log.warning("training stopped at step %d, saved in %s: run the same command again "
                        "to continue", self.step, summary["checkpoint"])
            raise KeyboardInterrupt
        return summary

    def _schedule_lr(self, target: int | None, budget_s: float | None) -> None:
        """Set the learning rates for the next step from the fraction of the budget spent
        (``optim.lr_decay_start``, :func:`~ram_avatar.training.state.lr_schedule_factor`): the
        larger of steps / ``target`` and training seconds / ``budget_s``, the largest over the
        ranks (their clocks differ slightly; their weights must not)."""
        optim = self.config.optim
        if optim.lr_decay_start >= 1.0:
            return
        progress = self.step / target if target else 0.0
        if budget_s:
            progress = max(progress, self.train_seconds() / budget_s)
            progress = float(self.dist.all_gather(torch.tensor([progress],
                                                               device=self.device)).max())
        self.state.scale_learning_rates(
            lr_schedule_factor(progress, optim.lr_decay_start, optim.lr_final_mult))

    def _finish(self) -> None:
        """Final validation and checkpoint (unless this step already has them)."""
        main, step = self.dist.main, self.step
        if main and (self.steps_run == 0 or step % self.config.log.val_every != 0):
            if self.validate() is not None and self.steps_run > 0:
                self.writer.add_scalar("val/psnr", self.val_psnr, step)
        last = self.state.last_checkpoint
        if main and self.steps_run > 0 and (last is None or _ckpt_step(last) != step):
            self.save()
        self.dist.barrier()

    def _summary(self, elapsed: float) -> dict:
        last = self.state.last_checkpoint
        summary = {
            "step": self.step, "start_step": self.start_step, "steps_run": self.steps_run,
            "elapsed_s": elapsed,
            "steps_per_s": self.steps_run / elapsed if elapsed > 0 else 0.0,
            "first_loss": self.first_loss, "losses": self.last_losses,
            "val_psnr": self.val_psnr, "checkpoint": str(last) if last is not None else None,
            "train_seconds": self.train_seconds(),
            "run_dir": str(self.run_dir), "num_parameters": self.num_parameters,
            "world_size": self.dist.world,
        }
        if self.dist.main:
            log.info("trained %d steps (now at %d) in %.1fs, %.2f steps/s, loss %s, val PSNR %s",
                     self.steps_run, self.step, elapsed, summary["steps_per_s"],
                     f"{self.last_losses.get('total', float('nan')):.4f}"
                     if self.last_losses else "-",
                     f"{self.val_psnr:.2f} dB" if self.val_psnr is not None else "-")
        return summary


def _add_task(bar, target: int | None, minutes: float | None, start_step: int):
    if bar is None:
        return None
    if target is not None:
        return bar.add_task("train", total=float(target), completed=float(start_step), info="")
    return bar.add_task("train (s)", total=float(minutes * 60.0), completed=0.0, info="")


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

    With ``config.pose.refine`` the training set must provide the attributes of
    :class:`ram_avatar.training.data.SubjectDataset` used for re-rendering (``body``,
    ``params``, ``K_crop``, ``backend``).

    Returns:
        Summary dict: ``step`` (final global step), ``start_step``, ``steps_run``,
        ``elapsed_s``, ``steps_per_s``, ``first_loss`` (total loss of this call's first step),
        ``losses`` (mean of each term over the last log window), ``val_psnr`` (dB or None),
        ``checkpoint`` (path of the latest checkpoint), ``run_dir``, ``num_parameters``,
        ``world_size``, ``train_seconds`` (wall-clock training seconds of the run over all its
        calls; every checkpoint's ``extra`` records it at its step).

    Raises:
        TrainingDivergedError: the loss became NaN/Inf; nothing new is saved and the message
            names the step and the last good checkpoint (attributes ``step``, ``checkpoint``).
        CheckpointError: the run's latest checkpoint is corrupt or belongs to another model.
        RamAvatarError: empty training set or items of the wrong shape / lacking keys.
    """
    dist = DistributedContext(device)
    try:
        trainer = Trainer(train_set, val_set, run_dir, config, dist, show_progress, init_texture)
        trainer.setup()
        return trainer.fit(steps, minutes)
    finally:
        dist.close()


# ---------------------------------------------------------------------------------------------
# names of the trainer before issue 11 (kept for callers: bench_gpu, tests)


def compute_losses(out: dict, batch: dict, config: TrainConfig, vgg=None,
                   hand=None) -> dict[str, torch.Tensor]:
    """:func:`~ram_avatar.training.model.reconstruction_losses` with ``config.loss``."""
    return reconstruction_losses(out, batch, config.loss, vgg=vgg, hand=hand)


def _param_groups(model: AvatarRenderer, config: TrainConfig) -> list[dict]:
    """:func:`~ram_avatar.training.model.renderer_param_groups` with ``config.optim``."""
    return renderer_param_groups(model, config.optim)


def _discriminator_step(disc, opt_d, scaler_d, batch: dict, rgb: torch.Tensor,
                        config: TrainConfig, step: int, autocast, clip_and_step) -> dict:
    """:func:`~ram_avatar.training.model.discriminator_update` with the old step callback
    ``clip_and_step(optimizer, scaler, params, loss, what)``."""
    return discriminator_update(
        disc, opt_d, lambda loss: clip_and_step(opt_d, scaler_d, disc.parameters(), loss,
                                                "discriminator"),
        batch, rgb, config, step, autocast)


def _ckpt_step(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return int(path.stem.split("_", 1)[1])
    except (IndexError, ValueError):
        return None
