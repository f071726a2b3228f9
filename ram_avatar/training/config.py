"""Training configuration: nested, self-validating dataclasses, presets declared as literals,
YAML save/load with a safe loader, typed ``key=value`` overrides parsed by tyro.

Layout (``TrainConfig``; every section validates itself when it is built)::

    preset, seed, max_steps
    model       RendererConfig (ram_avatar.models.renderer)
    optim       OptimConfig      lr, per-group multipliers, betas, grad_clip, ema_decay, amp
    loss        LossConfig       L1 / SSIM / mask / VGG / hand-perceptual weights
    gan         GanConfig        GAN weight schedule, discriminator size and optimiser, R1
    log         LogConfig        scalar / preview / checkpoint / validation intervals
    data        DataConfig       batch, loader, held-out fraction, augmentation
    pose        PoseRefineConfig per-frame pose refinement (training.pose_refine)

Older flat keys keep working everywhere: a flat ``config.yaml`` written before the sections
existed loads into them (:data:`FLAT_KEYS`), ``--set lr=5e-4`` means ``--set optim.lr=5e-4``,
and ``config.lr`` reads and writes ``config.optim.lr`` (attribute aliases for callers not yet
moved to the sections).

Presets:
    ``cpu-256``    the full RAM-Avatar renderer (dual attention, face/hand branches, temporal
                   discriminator, EMA) with reduced channels at 256x256, for training on 2 CPU
                   cores (batch 2). On taiji.mp4, trained for the same 15 minutes as renderer
                   v1 (3x fewer steps), it had higher held-out PSNR and SSIM on two seeds
                   (closing note of issue 3). It starts from the texture baked from the video
                   (fixed RGB input + residual on its colours, learned features from zero) and
                   learns from warped views over random solid backgrounds part of the time
                   (issue 10). Round 2 of issue 10: the baked RGB texture is learned too (lr
                   1e-2), the generator's residual on it starts at zero, the expanded mesh is
                   sized from the subject's masks (loose clothes) and the alpha prior leaves
                   its shell to the generator, and the discriminator starts at step 2000
                   (about a fifth of each CPU step, with a GAN weight still 1e-3 before
                   then): +0.5 dB masked PSNR and +17% steps at 10 minutes on taiji (closing
                   note). Pose refinement stays a switch (``pose.refine``): at CPU budgets
                   each frame is visited only a few times, no gain was measured, and it
                   re-renders the maps every step.
    ``cpu-256-v1`` renderer v1 (neural texture + StyleUNet, no attention, no branches, no
                   discriminator) with the same channel sizes: about 3x more steps per minute
                   on a CPU; kept for comparison and for the fastest live rendering.
    ``gpu-512``    the full renderer at 512x512 for a 12-24 GB consumer GPU (module of
                   :func:`_gpu_512`).
    ``paper-1024`` the paper's full renderer (RAM-Avatar Sec. 3.2, 4.1 and released code):
                   48-channel 1024x1024 neural texture, dual attention at 256^2 (96 channels,
                   recurrence 2), face/hand shallow UNets to 16 channels, 1024x1024 output,
                   style_dim 512, channel multiplier 2 (64 channels at 512^2 ... 512 at
                   <= 64^2), temporal discriminator; Adam lr 1e-3, betas (0.9, 0.99), batch 2,
                   SmoothL1(beta 0.05) x5, VGG19 x0.03, hand perceptual x0.1 on 128 px crops,
                   GAN weight 1e-3 -> 0.02, R1 10 every 16 steps, grad clip 1, EMA 0.999.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import io
import os
import re
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from ram_avatar.errors import RamAvatarError
from ram_avatar.models.renderer import RendererConfig
from ram_avatar.utils import atomic_write_text


class ConfigError(RamAvatarError, ValueError):
    """A training config (preset name, YAML file, override) is invalid."""


def _require(checks: list[tuple[bool, str]], section: str) -> None:
    for ok, msg in checks:
        if not ok:
            raise ConfigError(f"invalid training config: {section}{msg}")


@dataclass
class OptimConfig:
    """Optimiser of the renderer (Adam, one group per part) and its weight averaging.

    Attributes:
        lr: Adam learning rate of the generator (and attention, branches).
        texture_lr_mult: learning-rate multiplier of the body features (texture or triplane).
        rgb_texture_lr_mult: learning-rate multiplier of the RGB texture baked from the video
            (``model.texture_rgb``); 0 keeps it fixed (as baked). > 0 lets training correct the
            baked colours texel by texel (DNR-style direct texture optimisation; issue 10).
        background_lr_mult: learning-rate multiplier of the background image.
        betas: Adam betas.
        grad_clip: max global gradient norm (0 disables clipping).
        ema_decay: decay of the exponential moving average of the renderer's weights (0 = no
            EMA). The EMA weights are saved next to each checkpoint (``*.aux.safetensors``).
        ema_warmup: the EMA's decay at step s is ``min(ema_decay, (1 + s) / (10 + s))``
            (TensorFlow's ``ExponentialMovingAverage(num_updates=s)``), so a short run's average
            is not dominated by its initial weights; and the run's renderer is its EMA weights
            wherever a trained renderer is loaded (evaluate, export, drive, live, benches:
            ``Run.load_renderer``). False: a fixed decay, and the raw weights are loaded (runs
            written before the switch keep both). Off in every preset: on taiji (``cpu-256``,
            882 steps) the EMA scored +0.18 dB masked PSNR and +0.018 masked SSIM on the
            held-out frames, but the avatar driven by basketball got blurrier (sharpness ratio
            0.66 -> 0.51, below the 0.6 target of issue 10).
        amp: mixed precision on CUDA only: bfloat16 autocast where the GPU supports it, else
            float16 autocast + GradScaler (training.distributed).
        cpu_bf16: bfloat16 autocast on a CPU whose oneDNN has native bfloat16 (AMX /
            AVX512-BF16; float32 elsewhere). On in the CPU presets: on taiji (``cpu-256``, 600
            steps, 1 thread) it trained 23 % more steps per second (0.717 -> 0.885) at the same
            held-out quality (masked PSNR 15.67 / 15.66 dB, SSIM 0.422 / 0.421).
        lr_decay_start: fraction of the run's budget (its ``--steps`` target, or its
            ``--minutes`` counted over every call of the run) after which every learning rate
            (renderer, pose corrections, discriminator) follows a half cosine from its value
            down to ``lr_final_mult`` times it at the end of the budget
            (:func:`~ram_avatar.training.state.lr_schedule_factor`; the cosine annealing of
            Loshchilov & Hutter, SGDR, ICLR 2017, without restarts). 1 = constant learning
            rates (the paper's code), in every preset. A budget extended later (the run trained
            again) starts from the new budget's fraction, as a warm restart does. Measured on
            ``cpu-256`` (0.5 against 1, 2026-12-04): masked SSIM +0.010 to +0.019 on the
            held-out frames in every pair (taiji and basketball, 400 steps, two seeds each;
            taiji 10 and 20 minutes), masked PSNR -0.11 to +0.18 dB (20 minutes: 15.96 / 0.450
            -> 16.09 / 0.464); the driven avatar's speckle falls (basketball on taiji, 20
            minutes: 1.12 -> 0.91) and so does its sharpness ratio (0.66 -> 0.51; 10 minutes
            0.68 -> 0.59), below issue 10's 0.6: the weight EMA's trade again, so it stays
            opt-in (``--set optim.lr_decay_start=0.5``).
        lr_final_mult: the learning rates' factor at the end of the budget (``lr_decay_start``).
        zero_init_residual: a new run starts the generator's ToRGB convolutions at zero
            (:meth:`AvatarRenderer.zero_init_residual`): with ``model.texture_rgb_skip`` the
            untrained renderer draws exactly the baked texture at the driven pose (a residual
            of zero, as ControlNet's zero convolutions and ReZero start a residual branch),
            without it a flat grey; gradients reach the layers below after the first step.
    """

    lr: float = 1e-3
    texture_lr_mult: float = 1.0
    rgb_texture_lr_mult: float = 0.0
    background_lr_mult: float = 1.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    ema_warmup: bool = False
    amp: bool = True
    cpu_bf16: bool = False
    lr_decay_start: float = 1.0
    lr_final_mult: float = 0.1
    zero_init_residual: bool = False

    def __post_init__(self) -> None:
        _require([
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.rgb_texture_lr_mult >= 0, "rgb_texture_lr_mult must be >= 0 (0 = fixed)"),
            (self.texture_lr_mult > 0 and self.background_lr_mult > 0,
             "texture_lr_mult and background_lr_mult must be > 0"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             f"betas must be two numbers in [0,1), got {self.betas}"),
            (self.grad_clip >= 0, "grad_clip must be >= 0"),
            (0 <= self.ema_decay < 1, f"ema_decay must be in [0,1), got {self.ema_decay}"),
            (0 <= self.lr_decay_start <= 1,
             f"lr_decay_start must be in [0,1] (1 = constant), got {self.lr_decay_start}"),
            (0 < self.lr_final_mult <= 1,
             f"lr_final_mult must be in (0,1], got {self.lr_final_mult}"),
        ], "optim.")


HAND_LOSSES = ("auto", "lpips", "vgg", "l1")


@dataclass
class LossConfig:
    """Generator loss weights (RAM-Avatar Eq. 3 without the GAN term; training.model).

    Attributes:
        l1_weight: weight of the photometric L1 term on the composited image.
        l1_beta: SmoothL1 beta (0 = plain L1); released code: SmoothL1(beta 0.05) x5.
        ssim_weight: weight of the (1 - SSIM) term (0 disables it).
        mask_weight: weight of BCE(alpha, person_mask) (0 disables it).
        vgg_weight: weight of the VGG19 perceptual loss (paper code 0.03; 0 disables). Without
            the ImageNet VGG19 file, ``1 - SSIM`` takes its place (losses.perceptual fallback).
        vgg_weights: path of ``vgg19-dcbb9e9d.pth`` (or a folder); None searches the defaults.
        hand_weight: weight of the hand perceptual loss on hand crops (paper code 0.1).
        hand_crop: hand crop side in pixels (0 = resolution // 8, i.e. 128 at 1024^2).
        hand_loss: hand crop distance: ``auto`` (LPIPS, else VGG19, else L1), ``lpips``,
            ``vgg``, ``l1`` (losses.hand).
    """

    l1_weight: float = 5.0
    l1_beta: float = 0.05
    ssim_weight: float = 1.0
    mask_weight: float = 1.0
    vgg_weight: float = 0.0
    vgg_weights: str | None = None
    hand_weight: float = 0.0
    hand_crop: int = 0
    hand_loss: str = "auto"

    def __post_init__(self) -> None:
        _require([
            (min(self.l1_weight, self.l1_beta, self.ssim_weight, self.mask_weight) >= 0,
             "l1_weight, l1_beta, ssim_weight and mask_weight must be >= 0"),
            (min(self.vgg_weight, self.hand_weight) >= 0, "vgg_weight and hand_weight must be >= 0"),
            (self.hand_crop >= 0, "hand_crop must be >= 0"),
            (self.hand_loss in HAND_LOSSES,
             f"hand_loss must be auto, lpips, vgg or l1, got {self.hand_loss!r}"),
        ], "loss.")


@dataclass
class GanConfig:
    """Temporal discriminator (Eq. 4) and its generator weight schedule (losses.gan).

    Attributes:
        weight_start: generator GAN weight at step 0 (paper code 1e-3).
        weight_max: cap of the GAN weight (paper code 0.02); 0 disables the discriminator.
        ramp_every: steps between GAN-weight increases (paper code 2000).
        ramp_factor: factor of each increase (paper code 1.1).
        disc_lr_mult: discriminator learning rate as a multiple of ``optim.lr``.
        disc_base_channels: discriminator channels at full resolution.
        disc_max_channels: cap on discriminator channels.
        r1_gamma: R1 penalty weight on real samples (0 disables).
        r1_interval: apply R1 every this many steps (lazy regularisation, scaled up to match).
        start_step: the discriminator is trained, and the generator's GAN term added, from this
            global step on (0 = from the start, as the released code). The weight starts at
            ``weight_start`` (1e-3) and grows 1.1x every 2000 steps, so before a few thousand
            steps the term barely moves the generator while the discriminator costs about a
            fifth of each CPU step (issue 10).
    """

    weight_start: float = 1e-3
    weight_max: float = 0.0
    ramp_every: int = 2000
    ramp_factor: float = 1.1
    disc_lr_mult: float = 1.0
    disc_base_channels: int = 32
    disc_max_channels: int = 512
    r1_gamma: float = 10.0
    r1_interval: int = 16
    start_step: int = 0

    @property
    def enabled(self) -> bool:
        """True when the temporal discriminator is trained (``weight_max > 0``)."""
        return self.weight_max > 0

    def __post_init__(self) -> None:
        _require([
            (min(self.weight_start, self.weight_max, self.r1_gamma) >= 0,
             "weight_start, weight_max and r1_gamma must be >= 0"),
            (self.start_step >= 0, f"start_step must be >= 0, got {self.start_step}"),
            (self.ramp_every >= 1 and self.ramp_factor >= 1 and self.r1_interval >= 1,
             "ramp_every and r1_interval must be >= 1, ramp_factor >= 1"),
            (self.disc_lr_mult > 0 and 1 <= self.disc_base_channels <= self.disc_max_channels,
             "disc_lr_mult must be > 0 and 1 <= disc_base_channels <= disc_max_channels"),
        ], "gan.")


@dataclass
class LogConfig:
    """What a run writes and how often (steps).

    Attributes:
        scalars_every: steps between TensorBoard scalar logs (loss means over the window).
        preview_every: steps between preview image grids (TensorBoard + PNG).
        checkpoint_every: steps between checkpoints (one is always written at the end).
        val_every: steps between validation passes (one always runs at the end).
        keep_checkpoints: how many most recent checkpoints to keep.
        val_items: held-out items used for validation PSNR (first N of the val set).
    """

    scalars_every: int = 10
    preview_every: int = 250
    checkpoint_every: int = 500
    val_every: int = 1000
    keep_checkpoints: int = 3
    val_items: int = 8

    def __post_init__(self) -> None:
        _require([
            (min(self.scalars_every, self.preview_every, self.checkpoint_every,
                 self.val_every) >= 1, "intervals must be >= 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
        ], "log.")


@dataclass
class DataConfig:
    """Batches, the held-out split and augmentation (training.augment).

    Attributes:
        batch_size: images per step and rank (capped to the training set size).
        num_workers: DataLoader workers.
        val_fraction: fraction of frames a new run holds out for validation (io.split).
        init_background: initialise the background from the training images' pixels outside
            the person mask (static camera); grey where no frame shows background.
        augment_prob: probability that a training step warps its batch by random similarities
            (each item its own scale/rotation/shift, maps and target alike) and composites the
            person over random solid colours. 0 disables augmentation.
        augment_scale: (min, max) zoom factor of the warp (log-uniform).
        augment_rotation_deg: max in-plane rotation of the warp, degrees.
        augment_shift: max shift of the warp, fraction of the image side.
        solid_bg_prob: probability that a step without a warp still composites the person
            over random solid colours (matting: alpha must separate person and background).
        expand_offset_from_masks: a new run measures ``model.expand_offset`` (the expanded
            mesh's offset, metres) on its own training frames: the ``expand_quantile`` of the
            distance from person-mask pixels outside the fitted mesh to the mesh, in metres at
            the person's depth (training.run.measure_expand_offset), so loose clothes and hair
            lie inside the expanded mesh. False keeps the model section's value.
        expand_quantile: the quantile of that distance (0.75: three quarters of the person's
            pixels outside the mesh lie within the offset).
    """

    batch_size: int = 2
    num_workers: int = 0
    val_fraction: float = 0.1
    init_background: bool = True
    augment_prob: float = 0.0
    augment_scale: tuple[float, float] = (0.8, 1.25)
    augment_rotation_deg: float = 10.0
    augment_shift: float = 0.1
    solid_bg_prob: float = 0.0
    expand_offset_from_masks: bool = False
    expand_quantile: float = 0.75

    def __post_init__(self) -> None:
        _require([
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (0 <= self.val_fraction < 1, "val_fraction must be in [0,1)"),
            (0 <= self.augment_prob <= 1 and 0 <= self.solid_bg_prob <= 1,
             "augment_prob and solid_bg_prob must be in [0,1]"),
            (len(self.augment_scale) == 2 and 0 < self.augment_scale[0] <= self.augment_scale[1],
             f"augment_scale must be (min, max) with 0 < min <= max, got {self.augment_scale}"),
            (self.augment_rotation_deg >= 0 and 0 <= self.augment_shift < 1,
             "augment_rotation_deg must be >= 0 and augment_shift in [0,1)"),
            (0 < self.expand_quantile < 1, "expand_quantile must be in (0,1)"),
        ], "data.")


@dataclass
class PoseRefineConfig:
    """Per-frame pose refinement (training.pose_refine).

    Attributes:
        refine: learn per-frame corrections of global_orient, body_pose and transl and a shared
            betas correction, re-rendering the UV maps every step.
        lr: Adam learning rate of the corrections.
        prior_weight: weight of the corrections' Gaussian prior in the loss.
        rot_sigma: prior std of each axis-angle correction, radians.
        transl_sigma: prior std of the translation correction, metres.
        betas_sigma: prior std of the shared shape correction, shape units.
    """

    refine: bool = False
    lr: float = 1e-4
    prior_weight: float = 1e-3
    rot_sigma: float = 0.05
    transl_sigma: float = 0.02
    betas_sigma: float = 0.05

    def __post_init__(self) -> None:
        _require([(self.lr > 0 and self.prior_weight >= 0
                   and min(self.rot_sigma, self.transl_sigma, self.betas_sigma) > 0,
                   "lr and the sigmas must be > 0, prior_weight >= 0")], "pose.")


#: sections of :class:`TrainConfig` (name -> dataclass)
SECTIONS: dict[str, type] = {"optim": OptimConfig, "loss": LossConfig, "gan": GanConfig,
                             "log": LogConfig, "data": DataConfig, "pose": PoseRefineConfig}

#: flat keys of configs written before the sections (and of ``--set``) -> their place now
FLAT_KEYS: dict[str, str] = {
    **{k: f"optim.{k}" for k in ("lr", "texture_lr_mult", "background_lr_mult", "betas",
                                 "grad_clip", "ema_decay", "amp")},
    **{k: f"loss.{k}" for k in ("l1_weight", "l1_beta", "ssim_weight", "mask_weight",
                                "vgg_weight", "vgg_weights", "hand_weight", "hand_crop",
                                "hand_loss")},
    "gan_weight_start": "gan.weight_start", "gan_weight_max": "gan.weight_max",
    "gan_ramp_every": "gan.ramp_every", "gan_ramp_factor": "gan.ramp_factor",
    **{k: f"gan.{k}" for k in ("disc_lr_mult", "disc_base_channels", "disc_max_channels",
                               "r1_gamma", "r1_interval")},
    "log_interval": "log.scalars_every", "preview_interval": "log.preview_every",
    "checkpoint_interval": "log.checkpoint_every", "val_interval": "log.val_every",
    "keep_checkpoints": "log.keep_checkpoints", "val_items": "log.val_items",
    **{k: f"data.{k}" for k in ("batch_size", "num_workers", "val_fraction", "init_background",
                                "augment_prob", "augment_scale", "augment_rotation_deg",
                                "augment_shift", "solid_bg_prob")},
    "pose_refine": "pose.refine", "pose_refine_lr": "pose.lr",
    "pose_prior_weight": "pose.prior_weight", "pose_rot_sigma": "pose.rot_sigma",
    "pose_transl_sigma": "pose.transl_sigma", "pose_betas_sigma": "pose.betas_sigma",
}


@dataclass
class TrainConfig:
    """Everything a training run needs besides the data (per-subject values live elsewhere).

    Sections are listed in the module docstring; building a section checks its values
    (:class:`ConfigError` naming the field), :meth:`validate` checks the whole config again
    after in-place edits.

    Attributes:
        preset: name of the preset this config started from (informational).
        seed: seed of model init, data order and augmentation.
        max_steps: total steps when ``train`` gets neither ``steps`` nor ``minutes``.
        model: renderer architecture (:class:`~ram_avatar.models.renderer.RendererConfig`).
        optim, loss, gan, log, data, pose: the sections.

    The flat names of :data:`FLAT_KEYS` (``config.lr``, ``config.batch_size``, ...) are
    read/write aliases of the section fields, kept for callers written before the sections.
    """

    preset: str = "custom"
    seed: int = 0
    max_steps: int = 5000
    model: RendererConfig = field(default_factory=RendererConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    gan: GanConfig = field(default_factory=GanConfig)
    log: LogConfig = field(default_factory=LogConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pose: PoseRefineConfig = field(default_factory=PoseRefineConfig)

    def __post_init__(self) -> None:
        _require([(self.max_steps >= 0, "max_steps must be >= 0")], "")

    @property
    def adversarial(self) -> bool:
        """True when the temporal discriminator is trained (``gan.weight_max > 0``)."""
        return self.gan.enabled

    # -- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain, YAML/JSON-safe nested dict (tuples become lists)."""
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Build from a dict as written by :meth:`to_dict`, or by versions before the sections
        (flat keys, :data:`FLAT_KEYS`). Missing keys take their defaults.

        Raises:
            ConfigError: unknown key, wrong type or invalid value.
        """
        if not isinstance(data, dict):
            raise ConfigError("a training config must be a mapping of fields")
        return _parse(cls(), _flatten(data))

    def validate(self) -> None:
        """Check every section again (after in-place edits); raises :class:`ConfigError`."""
        try:
            for f in fields(self):
                value = getattr(self, f.name)
                if dataclasses.is_dataclass(value):
                    value.__post_init__()
            self.__post_init__()
        except ValueError as exc:
            raise ConfigError(_config_message(exc)) from None

    def copy(self, **changes) -> "TrainConfig":
        """Deep copy with fields replaced: sections, top-level fields or flat alias names."""
        out = copy.deepcopy(self)
        for key, value in changes.items():
            setattr(out, key, value)
        return out


def _alias(path: str) -> property:
    section, name = path.split(".")

    def get(self):
        return getattr(getattr(self, section), name)

    def set_(self, value):
        setattr(getattr(self, section), name, value)

    return property(get, set_, doc=f"Alias of ``{path}`` (flat name of older configs).")


for _flat, _path in FLAT_KEYS.items():
    setattr(TrainConfig, _flat, _alias(_path))


# -- presets, declared as literals -------------------------------------------------------------

#: renderer sizes shared by the CPU presets (256x256, about 0.5M generator parameters)
_CPU_256_SIZES = dict(resolution=256, texture_channels=16, texture_size=256, texture_levels=4,
                      base_channels=16, max_channels=64, style_dim=64, latent_dim=32,
                      mapping_layers=2)

#: log intervals of the CPU presets
_CPU_LOG = LogConfig(scalars_every=10, preview_every=250, checkpoint_every=500, val_every=500)


def _cpu_256_v1() -> TrainConfig:
    # few thousand steps on CPU: the texture and the static background catch up with 10x / 30x
    # learning rates (the background sets most of the whole-crop SSIM; x30 measured better
    # than x10 and x1)
    return TrainConfig(
        preset="cpu-256-v1", max_steps=5000,
        model=RendererConfig(**_CPU_256_SIZES),
        optim=OptimConfig(texture_lr_mult=10.0, background_lr_mult=30.0, cpu_bf16=True),
        log=copy.deepcopy(_CPU_LOG),
        data=DataConfig(batch_size=2),
    )


def _cpu_256() -> TrainConfig:
    return TrainConfig(
        preset="cpu-256", max_steps=5000,
        model=RendererConfig(**_CPU_256_SIZES, variant="full", attention_channels=32,
                             attention_downsample=2, attention_recurrence=2, branch_channels=8,
                             branch_hidden=4, branch_depth=2,
                             # issue 10: start from the texture baked from the video
                             texture_rgb=True, texture_rgb_skip=True, texture_init_std=0.0,
                             # issue 10, round 2: the shell of loose clothes is the generator's
                             alpha_prior_shell=True),
        # issue 10, round 2: the baked colours are learned (lr 1e-2), the first render is the
        # baked texture (zero residual)
        optim=OptimConfig(texture_lr_mult=10.0, background_lr_mult=30.0, ema_decay=0.999,
                          rgb_texture_lr_mult=10.0, zero_init_residual=True, cpu_bf16=True),
        loss=LossConfig(vgg_weight=0.03, hand_weight=0.1),
        # issue 10, round 2: no discriminator before step 2000 (its weight is still 1e-3 there)
        gan=GanConfig(weight_max=0.02, disc_base_channels=8, disc_max_channels=64,
                      start_step=2000),
        log=copy.deepcopy(_CPU_LOG),
        # issue 10: warped views over random solid backgrounds part of the time; round 2: the
        # expanded mesh sized from the subject's own masks
        data=DataConfig(batch_size=2, augment_prob=0.3, solid_bg_prob=0.2,
                        expand_offset_from_masks=True),
    )


def _gpu_512() -> TrainConfig:
    """The full renderer at 512x512 for a 12-24 GB consumer GPU (RTX 3060 12 GB ... 4090 24 GB):
    between cpu-256 and paper-1024 in every width (texture 512^2 x 32, generator 32 channels at
    256^2 up to 256 at low resolution, style 256, attention 64 channels at 128^2), the paper's
    losses and optimiser at batch 2 (hand crops 64 px = S/8). Memory of one training step at
    batch 2, estimated on a CPU (fake tensors, ``ram_avatar.bench_gpu.estimate_train_memory``):
    see the README's "On a GPU" section; not yet measured on a GPU."""
    return TrainConfig(
        preset="gpu-512", max_steps=200_000,
        model=RendererConfig(resolution=512, texture_channels=32, texture_size=512,
                             texture_levels=4, base_channels=32, max_channels=256,
                             style_dim=256, latent_dim=256, mapping_layers=2, variant="full",
                             body_features="texture", triplane_channels=16, triplane_size=256,
                             attention_channels=64, attention_downsample=2,
                             attention_recurrence=2, branch_channels=16, branch_hidden=8,
                             branch_depth=2),
        optim=OptimConfig(ema_decay=0.999),
        loss=LossConfig(ssim_weight=0.0, vgg_weight=0.03, hand_weight=0.1, hand_crop=0),
        gan=GanConfig(weight_start=1e-3, weight_max=0.02, ramp_every=2000, ramp_factor=1.1,
                      disc_base_channels=32, disc_max_channels=256, r1_gamma=10.0,
                      r1_interval=16),
        log=LogConfig(scalars_every=20, preview_every=1000, checkpoint_every=5000,
                      val_every=2500),
        data=DataConfig(batch_size=2),
    )


def _paper_1024() -> TrainConfig:
    return TrainConfig(
        preset="paper-1024", max_steps=400_000,
        model=RendererConfig(resolution=1024, texture_channels=48, texture_size=1024,
                             texture_levels=4, base_channels=64, max_channels=512,
                             style_dim=512, latent_dim=512, mapping_layers=2, variant="full",
                             body_features="texture", triplane_channels=16, triplane_size=512,
                             attention_channels=96, attention_downsample=2,
                             attention_recurrence=2, branch_channels=16, branch_hidden=16,
                             branch_depth=2),
        optim=OptimConfig(lr=1e-3, betas=(0.9, 0.99), grad_clip=1.0, ema_decay=0.999),
        loss=LossConfig(l1_weight=5.0, l1_beta=0.05, ssim_weight=0.0, vgg_weight=0.03,
                        hand_weight=0.1, hand_crop=128),
        gan=GanConfig(weight_start=1e-3, weight_max=0.02, ramp_every=2000, ramp_factor=1.1,
                      disc_base_channels=32, disc_max_channels=512, r1_gamma=10.0,
                      r1_interval=16),
        log=LogConfig(scalars_every=20, preview_every=1000, checkpoint_every=10_000,
                      val_every=5000),
        data=DataConfig(batch_size=2),
    )


PRESETS: dict[str, typing.Callable[[], TrainConfig]] = {
    "cpu-256": _cpu_256,
    "cpu-256-v1": _cpu_256_v1,
    "gpu-512": _gpu_512,
    "paper-1024": _paper_1024,
}


def get_preset(name: str) -> TrainConfig:
    """A fresh :class:`TrainConfig` of the named preset.

    Raises:
        ConfigError: unknown name (the message lists the presets).
    """
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown training preset {name!r}; available presets: "
                          f"{', '.join(sorted(PRESETS))}") from None
    return factory()


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Write ``config`` as (nested) YAML atomically."""
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read a YAML config written by :func:`save_config`, or a flat one written before the
    sections existed (``yaml.safe_load``, then :meth:`TrainConfig.from_dict`).

    Raises:
        ConfigError: missing file, invalid YAML, unknown keys or wrong types.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read training config {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must contain a YAML mapping of config fields")
    try:
        return TrainConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def apply_overrides(config: TrainConfig, overrides: dict[str, object] | list[str]) -> TrainConfig:
    """Return a copy with overrides applied: dotted keys (``optim.lr``, ``model.base_channels``),
    the flat keys of older versions (``lr``, ``augment_prob``; :data:`FLAT_KEYS`) or a renderer
    field by its own name (``texture_rgb`` for ``model.texture_rgb``).

    ``overrides`` is a dict or a list of ``"key=value"`` strings whose values are parsed as YAML
    (``lr=2e-4`` a number, ``amp=false`` a bool, ``augment_scale=[0.7,1.3]`` a pair); the values
    are then checked against the fields' types by tyro.

    Raises:
        ConfigError: malformed item, unknown key or wrong value type.
    """
    if isinstance(overrides, (list, tuple)):
        parsed = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like key=value")
            key, value = item.split("=", 1)
            try:
                parsed[key.strip()] = yaml.safe_load(value)
            except yaml.YAMLError as exc:
                raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc})") \
                    from None
        overrides = parsed
    model_fields = {f.name for f in fields(RendererConfig)}
    items = {}
    for key, value in overrides.items():
        if key in model_fields:  # a renderer field by its own name: texture_rgb=true
            key = f"model.{key}"
        items.update(_flatten({key: value}))
    return _parse(config, items)


# -- parsing (tyro) ----------------------------------------------------------------------------

def _flatten(data: dict, prefix: str = "") -> dict[str, object]:
    """Nested or flat config dict -> ``{dotted.key: value}`` in the current layout (flat keys
    of older versions are moved to their section, :data:`FLAT_KEYS`)."""
    out: dict[str, object] = {}
    for key, value in data.items():
        key = str(key)
        if not prefix and key in FLAT_KEYS and not isinstance(value, dict):
            key = FLAT_KEYS[key]
        if not prefix and (key == "model" or key in SECTIONS) and isinstance(value, dict):
            out.update(_flatten(value, key + "."))
        else:
            out[prefix + key] = value
    return out


def _tokens(value) -> list[str]:
    """A YAML-typed value as tyro command-line tokens."""
    if value is None:
        return ["None"]
    if isinstance(value, bool):
        return [str(value)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tokens(v)]
    if isinstance(value, dict):
        raise ConfigError(f"expected a value, got a mapping {value!r}")
    return [repr(value) if isinstance(value, float) else str(value)]


def _known_keys() -> set[str]:
    keys = {f.name for f in fields(TrainConfig) if not dataclasses.is_dataclass(f.type)
            and f.name not in ("model", *SECTIONS)}
    keys |= {f"model.{f.name}" for f in fields(RendererConfig)}
    for name, cls in SECTIONS.items():
        keys |= {f"{name}.{f.name}" for f in fields(cls)}
    return keys


def _parse(base: TrainConfig, items: dict[str, object]) -> TrainConfig:
    """``base`` with the dotted ``items`` replaced: the ``model.*`` items by
    :meth:`RendererConfig.from_dict` (the model section's one loader, shared with
    :meth:`ram_avatar.io.subject.Run.renderer_config`), the others parsed and type-checked by
    tyro (``tyro.cli(TrainConfig, default=base, args=[...])``); sections validate themselves."""
    import tyro

    known = _known_keys()
    unknown = sorted(k for k in items if k not in known)
    if unknown:
        hints = [f"{k} (did you mean {', '.join(near)}?)" if near else k for k in unknown
                 for near in [difflib.get_close_matches(k, sorted(known | set(FLAT_KEYS)), 3)]]
        raise ConfigError(f"unknown config key(s) {'; '.join(hints)}. Keys are model.*, "
                          f"{', '.join(s + '.*' for s in SECTIONS)}, preset, seed, max_steps, "
                          "or the flat names of older configs (lr, batch_size, ...)")
    base = copy.deepcopy(base)
    model = {k[len("model."):]: v for k, v in items.items() if k.startswith("model.")}
    if model:  # the model section through its one loader (RendererConfig.from_dict)
        try:
            base.model = RendererConfig.from_dict({**base.model.to_dict(), **model})
        except ValueError as exc:
            raise ConfigError(_config_message(exc)) from None
    args: list[str] = []
    for key, value in items.items():
        if not key.startswith("model."):
            args += [f"--{key}", *_tokens(value)]
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
            return tyro.cli(TrainConfig, default=base, args=args,
                            config=(tyro.conf.FlagConversionOff,), use_underscores=True)
    except SystemExit:
        raise ConfigError(f"invalid training config: {_tyro_message(buf.getvalue())}") \
            from None
    except ConfigError:
        raise
    except ValueError as exc:  # a section's or the renderer's own check
        raise ConfigError(_config_message(exc)) from None


def _tyro_message(text: str) -> str:
    """tyro's boxed error text as one line: ``optim.lr: could not convert ...``."""
    blocks = re.split(r"\n\s*-{5,}\s*", text)
    msg = re.sub(r"\s+", " ", blocks[1] if len(blocks) > 1 else text).strip()
    m = re.match(r"Error parsing (--)?([\w.]+): (?:invalid training config: )?(.*)", msg)
    if m:
        msg = f"{m.group(2)}: {m.group(3)}" if m.group(1) else m.group(3)
    return msg or "bad value"


def _config_message(exc: Exception) -> str:
    msg = str(exc)
    return msg if msg.startswith("invalid training config") else f"invalid training config: {msg}"


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
