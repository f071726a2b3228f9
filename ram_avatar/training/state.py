"""A run's checkpoints and the EMA of the renderer's weights, in one component.

``step_N.safetensors`` holds the renderer, its optimiser, AMP scaler and RNG states (what
:func:`ram_avatar.training.run.load_renderer` reads); when a discriminator, an EMA or pose
refinement is trained, ``step_N.aux.safetensors`` next to it holds the discriminator
(``model.discriminator.*``), its optimiser and scaler, the EMA weights (``model.ema.*``) and the
pose corrections (``model.pose_refiner.*``); it is written first, so a main checkpoint always
has its aux file. Key names are those of the trainer before issue 11 (old runs resume).
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import torch
from torch import nn

from ram_avatar.errors import CheckpointError
from ram_avatar.io.checkpoint import aux_checkpoint_path, load_ema_weights  # noqa: F401
from ram_avatar.training.checkpoint import (CHECKPOINT_DIR, list_checkpoints, load_checkpoint,
                                            read_checkpoint, save_checkpoint, save_run_checkpoint)
from ram_avatar.training.model import AvatarTrainingModel, renderer_param_groups, set_requires_grad

log = logging.getLogger(__name__)


class AuxState(nn.Module):
    """Container of what the aux checkpoint holds: discriminator, EMA renderer and/or the pose
    refiner's corrections (submodule names are the checkpoint's key prefixes)."""

    def __init__(self, discriminator=None, ema=None, pose_refiner=None) -> None:
        super().__init__()
        if discriminator is not None:
            self.discriminator = discriminator
        if ema is not None:
            self.ema = ema
        if pose_refiner is not None:
            self.pose_refiner = pose_refiner


def lr_schedule_factor(progress: float, start: float, final: float) -> float:
    """Learning-rate factor at ``progress`` (0..1, the fraction of the run's budget spent):
    1 before ``start``, then a half cosine down to ``final`` at 1 (cosine annealing,
    Loshchilov & Hutter, "SGDR", ICLR 2017, Eq. 5, one cycle); ``final`` after 1, and 1
    throughout when ``start`` is 1 (``optim.lr_decay_start``)."""
    if start >= 1.0 or progress <= start:
        return 1.0
    t = min(1.0, (progress - start) / (1.0 - start))
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))


class TrainingState:
    """Optimisers, scalers, EMA and checkpoints of one run (module docstring).

    Args:
        run_dir: the run directory.
        model: the :class:`~ram_avatar.training.model.AvatarTrainingModel`.
        optimizer, scaler: the generator's Adam and GradScaler (None on CPU).
        opt_d, scaler_d: the discriminator's (None without it).

    Attributes:
        ema: the EMA copy of the renderer (None when ``optim.ema_decay`` is 0); created by
            :meth:`start_ema` after the renderer's weights are final (fresh or resumed).
        last_checkpoint: path of the newest checkpoint written or resumed from.
    """

    def __init__(self, run_dir: Path, model: AvatarTrainingModel, optimizer, scaler,
                 opt_d=None, scaler_d=None) -> None:
        self.run_dir = Path(run_dir)
        self.model = model
        self.config = model.config
        self.optimizer, self.scaler = optimizer, scaler
        self.opt_d, self.scaler_d = opt_d, scaler_d
        self.ema: nn.Module | None = None
        self.aux: AuxState | None = None
        self.last_checkpoint: Path | None = None
        self._base_lrs: list[list[float]] | None = None

    def scale_learning_rates(self, factor: float) -> None:
        """Set every optimiser group's learning rate to ``factor`` times its configured value
        (the values after construction or :meth:`resume`; the schedule of
        :func:`lr_schedule_factor`)."""
        opts = [o for o in (self.optimizer, self.opt_d) if o is not None]
        if self._base_lrs is None:
            self._base_lrs = [[g["lr"] for g in o.param_groups] for o in opts]
        for o, base in zip(opts, self._base_lrs):
            for g, lr in zip(o.param_groups, base):
                g["lr"] = lr * factor

    def resume(self, path: Path) -> int:
        """Load the main checkpoint (weights, optimiser, scaler, RNG states) and restore the
        config's learning rates and betas (the config may have changed them); returns its step.

        Raises:
            CheckpointError: the checkpoint is damaged or does not match the model.
        """
        info = load_checkpoint(path, self.model.renderer, self.optimizer, self.scaler,
                               restore_rng=True)
        fresh = renderer_param_groups(self.model.renderer, self.config.optim)
        for group, new in zip(self.optimizer.param_groups, fresh):
            group["lr"], group["betas"] = new["lr"], self.config.optim.betas
        if self.model.refiner is not None:
            self.optimizer.param_groups[-1]["lr"] = self.config.pose.lr
        self.last_checkpoint = path
        return info.step

    def start_ema(self, resume_path: Path | None) -> None:
        """Create the EMA copy (when configured) and the aux container; with ``resume_path``
        load the aux checkpoint (discriminator, its optimiser, EMA, pose corrections)."""
        if self.config.optim.ema_decay > 0:
            self.ema = copy.deepcopy(self.model.renderer).eval()
            set_requires_grad(self.ema, False)
        m = self.model
        if m.discriminator is not None or self.ema is not None or m.refiner is not None:
            self.aux = AuxState(m.discriminator, self.ema, m.refiner)
        if resume_path is not None and self.aux is not None:
            self._load_aux(aux_checkpoint_path(resume_path))
            if self.opt_d is not None:
                for group in self.opt_d.param_groups:
                    group["lr"] = self.config.optim.lr * self.config.gan.disc_lr_mult
                    group["betas"] = self.config.optim.betas

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """``ema = d * ema + (1 - d) * renderer`` (buffers copied); no-op without EMA.

        ``d = ema_decay``, or with ``optim.ema_warmup`` ``min(ema_decay, (1 + step) / (10 +
        step))``: the warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=step)``,
        so that a short run's average is not dominated by the initial weights (with a fixed
        0.999, 0.999^1000 = 37 % of the average is still the step-0 renderer after 1000 steps).
        """
        if self.ema is None:
            return
        decay = self.config.optim.ema_decay
        if self.config.optim.ema_warmup:
            decay = min(decay, (1.0 + step) / (10.0 + step))
        for pe, p in zip(self.ema.parameters(), self.model.renderer.parameters()):
            pe.lerp_(p.detach(), 1.0 - decay)
        for be, b in zip(self.ema.buffers(), self.model.renderer.buffers()):
            be.copy_(b)

    def save(self, step: int, extra: dict) -> Path:
        """Write the aux checkpoint (if any) then ``step_N.safetensors`` (keeping the last
        ``log.keep_checkpoints``), drop orphaned aux files, and the refined poses.

        Raises:
            DiskFullError: see :func:`~ram_avatar.training.checkpoint.save_checkpoint`.
        """
        if self.aux is not None:  # aux first: a main checkpoint always has its aux file
            aux_path = aux_checkpoint_path(
                self.run_dir / CHECKPOINT_DIR / f"step_{int(step):08d}.safetensors")
            aux_path.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(aux_path, self.aux, self.opt_d, step, None, self.scaler_d,
                            {"parts": [n for n, _ in self.aux.named_children()]},
                            save_rng=False)
        path = save_run_checkpoint(self.run_dir, self.model.renderer, self.optimizer, step,
                                   self.config.to_dict(), self.scaler, extra,
                                   keep=self.config.log.keep_checkpoints)
        self._prune_aux()
        if self.model.refiner is not None:
            from ram_avatar.training.pose_refine import REFINED_POSES_FILE, save_refined_poses

            save_refined_poses(self.run_dir / REFINED_POSES_FILE, self.model.refiner,
                               self.model.seq_params, step)
        self.last_checkpoint = path
        return path

    def _prune_aux(self) -> None:
        folder = self.run_dir / CHECKPOINT_DIR
        if not folder.is_dir():
            return
        mains = {p.name for p in list_checkpoints(self.run_dir)}
        for aux in folder.glob("step_*.aux.safetensors"):
            if aux.name.replace(".aux", "") not in mains:
                try:
                    aux.unlink()
                except OSError as exc:  # pragma: no cover - best effort
                    log.warning("could not remove old aux checkpoint %s: %s", aux, exc)

    def _load_aux(self, path: Path) -> None:
        if not path.is_file():
            log.warning("%s is missing: the discriminator / EMA start fresh (the resume is not "
                        "exact for them)", path.name)
            return
        tensors, meta = read_checkpoint(path)
        for name, module in self.aux.named_children():
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
        if self.opt_d is not None and meta.get("optimizer") is not None:
            load_checkpoint(path, optimizer=self.opt_d, scaler=self.scaler_d)
