"""Training configuration: a dataclass, named presets, YAML save/load with a safe loader.

Presets:
    ``cpu-256``    the full RAM-Avatar renderer (dual attention, face/hand branches, temporal
                   discriminator, EMA) with reduced channels at 256x256, for training on 2 CPU
                   cores (batch 2). On taiji.mp4, trained for the same 15 minutes as renderer
                   v1 (3x fewer steps), it had higher held-out PSNR and SSIM on two seeds
                   (closing note of issue 3).
    ``cpu-256-v1`` renderer v1 (neural texture + StyleUNet, no attention, no branches, no
                   discriminator) with the same channel sizes: about 3x more steps per minute
                   on a CPU; kept for comparison and for the fastest live rendering.
    ``paper-1024`` the paper's full renderer (RAM-Avatar Sec. 3.2, 4.1 and released code):
                   48-channel 1024x1024 neural texture, dual attention at 256^2 (96 channels,
                   recurrence 2), face/hand shallow UNets to 16 channels, 1024x1024 output,
                   style_dim 512, channel multiplier 2 (64 channels at 512^2 ... 512 at
                   <= 64^2), temporal discriminator; Adam lr 1e-3, betas (0.9, 0.99), batch 2,
                   SmoothL1(beta 0.05) x5, VGG19 x0.03, hand perceptual x0.1 on 128 px crops,
                   GAN weight 1e-3 -> 0.02, R1 10 every 16 steps, grad clip 1, EMA 0.999.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from ram_avatar.errors import RamAvatarError
from ram_avatar.models.renderer import RendererConfig
from ram_avatar.utils import atomic_write_text


class ConfigError(RamAvatarError, ValueError):
    """A training config (preset name, YAML file, override) is invalid."""


@dataclass
class TrainConfig:
    """Everything a training run needs besides the data (per-subject values live elsewhere).

    Attributes:
        preset: name of the preset this config started from (informational).
        model: renderer architecture (:class:`~ram_avatar.models.renderer.RendererConfig`).
        lr: Adam learning rate (generator).
        texture_lr_mult: learning-rate multiplier of the neural texture.
        background_lr_mult: learning-rate multiplier of the background image.
        init_background: initialise the background from the training images' pixels outside
            the person mask (static camera); grey where no frame shows background.
        betas: Adam betas.
        batch_size: images per step (capped to the training set size).
        max_steps: total steps when ``train`` gets neither ``steps`` nor ``minutes``.
        l1_weight: weight of the photometric L1 term on the composited image.
        l1_beta: SmoothL1 beta (0 = plain L1); released code: SmoothL1(beta 0.05) x5.
        ssim_weight: weight of the (1 - SSIM) term (0 disables it).
        mask_weight: weight of BCE(alpha, person_mask) (0 disables it).
        grad_clip: max global gradient norm (0 disables clipping).
        val_fraction: fraction of frames the CLI holds out for validation.
        val_items: held-out items used for validation PSNR (first N of the val set).
        log_interval: steps between TensorBoard scalar logs.
        preview_interval: steps between preview image grids (TensorBoard + PNG).
        checkpoint_interval: steps between checkpoints (one is always written at the end).
        val_interval: steps between validation passes (one always runs at the end).
        keep_checkpoints: how many most recent checkpoints to keep.
        seed: seed of model init and data order.
        amp: mixed precision (float16 autocast + GradScaler), used on CUDA only.
        num_workers: DataLoader workers.
        vgg_weight: weight of the VGG19 perceptual loss (paper code 0.03; 0 disables). Without
            the ImageNet VGG19 file, ``1 - SSIM`` takes its place (losses.perceptual fallback).
        vgg_weights: path of ``vgg19-dcbb9e9d.pth`` (or a folder); None searches the defaults.
        hand_weight: weight of the hand perceptual loss on hand crops (paper code 0.1).
        hand_crop: hand crop side in pixels (0 = resolution // 8, i.e. 128 at 1024^2).
        hand_loss: hand crop distance: ``auto`` (LPIPS, else VGG19, else L1), ``lpips``,
            ``vgg``, ``l1`` (losses.hand).
        gan_weight_start: generator GAN weight at step 0 (paper code 1e-3).
        gan_weight_max: cap of the GAN weight (paper code 0.02); 0 disables the discriminator.
        gan_ramp_every: steps between GAN-weight increases (paper code 2000).
        gan_ramp_factor: factor of each increase (paper code 1.1).
        disc_lr_mult: discriminator learning rate as a multiple of ``lr``.
        disc_base_channels: discriminator channels at full resolution.
        disc_max_channels: cap on discriminator channels.
        r1_gamma: R1 penalty weight on real samples (0 disables).
        r1_interval: apply R1 every this many steps (lazy regularisation, scaled up to match).
        ema_decay: decay of the exponential moving average of the renderer's weights (0 = no
            EMA). The EMA weights are saved next to each checkpoint (``*.aux.safetensors``).
        augment_prob: probability that a training step warps its batch by random similarities
            (training.augment; each item its own scale/rotation/shift, maps and target alike)
            and composites the person over random solid colours. 0 disables augmentation.
        augment_scale: (min, max) zoom factor of the warp (log-uniform).
        augment_rotation_deg: max in-plane rotation of the warp, degrees.
        augment_shift: max shift of the warp, fraction of the image side.
        solid_bg_prob: probability that a step without a warp still composites the person
            over random solid colours (matting: alpha must separate person and background).
        pose_refine: learn per-frame corrections of global_orient, body_pose and transl and a
            shared betas correction (training.pose_refine), re-rendering the UV maps every step.
        pose_refine_lr: Adam learning rate of the corrections.
        pose_prior_weight: weight of the corrections' Gaussian prior in the loss.
        pose_rot_sigma: prior std of each axis-angle correction, radians.
        pose_transl_sigma: prior std of the translation correction, metres.
        pose_betas_sigma: prior std of the shared shape correction, shape units.
    """

    preset: str = "custom"
    model: RendererConfig = field(default_factory=RendererConfig)
    lr: float = 1e-3
    texture_lr_mult: float = 1.0
    background_lr_mult: float = 1.0
    init_background: bool = True
    betas: tuple[float, float] = (0.9, 0.99)
    batch_size: int = 2
    max_steps: int = 5000
    l1_weight: float = 5.0
    l1_beta: float = 0.05
    ssim_weight: float = 1.0
    mask_weight: float = 1.0
    grad_clip: float = 1.0
    val_fraction: float = 0.1
    val_items: int = 8
    log_interval: int = 10
    preview_interval: int = 250
    checkpoint_interval: int = 500
    val_interval: int = 1000
    keep_checkpoints: int = 3
    seed: int = 0
    amp: bool = True
    num_workers: int = 0
    vgg_weight: float = 0.0
    vgg_weights: str | None = None
    hand_weight: float = 0.0
    hand_crop: int = 0
    hand_loss: str = "auto"
    gan_weight_start: float = 1e-3
    gan_weight_max: float = 0.0
    gan_ramp_every: int = 2000
    gan_ramp_factor: float = 1.1
    disc_lr_mult: float = 1.0
    disc_base_channels: int = 32
    disc_max_channels: int = 512
    r1_gamma: float = 10.0
    r1_interval: int = 16
    ema_decay: float = 0.0
    augment_prob: float = 0.0
    augment_scale: tuple[float, float] = (0.8, 1.25)
    augment_rotation_deg: float = 10.0
    augment_shift: float = 0.1
    solid_bg_prob: float = 0.0
    pose_refine: bool = False
    pose_refine_lr: float = 1e-4
    pose_prior_weight: float = 1e-3
    pose_rot_sigma: float = 0.05
    pose_transl_sigma: float = 0.02
    pose_betas_sigma: float = 0.05

    @property
    def adversarial(self) -> bool:
        """True when the temporal discriminator is trained (``gan_weight_max > 0``)."""
        return self.gan_weight_max > 0

    # -- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain, YAML/JSON-safe dict (tuples become lists)."""
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Build from a dict as written by :meth:`to_dict`; unknown keys or wrong types raise.

        Missing keys take their defaults.

        Raises:
            ConfigError: unknown key, wrong type or invalid value.
        """
        cfg = _from_dict(cls, data, "")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check value ranges; raises :class:`ConfigError` naming the bad field."""
        m = self.model
        checks = [
            (m.resolution >= 16 and m.resolution & (m.resolution - 1) == 0,
             f"model.resolution must be a power of two >= 16, got {m.resolution}"),
            (m.texture_size >= 1 and (m.texture_size >> (m.texture_levels - 1)) >= 1,
             f"model.texture_size {m.texture_size} too small for {m.texture_levels} levels"),
            (m.texture_levels >= 1, "model.texture_levels must be >= 1"),
            (m.texture_channels >= 1, "model.texture_channels must be >= 1"),
            (m.base_channels >= 1 and m.max_channels >= m.base_channels,
             "model.base_channels must be >= 1 and <= model.max_channels"),
            (m.mapping_layers >= 1, "model.mapping_layers must be >= 1"),
            (m.num_frames is None or m.num_frames >= 1, "model.num_frames must be >= 1"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.texture_lr_mult > 0 and self.background_lr_mult > 0,
             "texture_lr_mult and background_lr_mult must be > 0"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             f"betas must be two numbers in [0,1), got {self.betas}"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.max_steps >= 0, "max_steps must be >= 0"),
            (0 <= self.val_fraction < 1, "val_fraction must be in [0,1)"),
            (min(self.log_interval, self.preview_interval, self.checkpoint_interval,
                 self.val_interval) >= 1, "intervals must be >= 1"),
            (self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1"),
            (min(self.l1_weight, self.l1_beta, self.ssim_weight, self.mask_weight,
                 self.grad_clip) >= 0, "loss weights, l1_beta and grad_clip must be >= 0"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (min(self.vgg_weight, self.hand_weight, self.gan_weight_start, self.gan_weight_max,
                 self.r1_gamma) >= 0, "vgg/hand/gan/r1 weights must be >= 0"),
            (self.hand_crop >= 0, "hand_crop must be >= 0"),
            (self.hand_loss in ("auto", "lpips", "vgg", "l1"),
             f"hand_loss must be auto, lpips, vgg or l1, got {self.hand_loss!r}"),
            (self.gan_ramp_every >= 1 and self.gan_ramp_factor >= 1 and self.r1_interval >= 1,
             "gan_ramp_every and r1_interval must be >= 1, gan_ramp_factor >= 1"),
            (self.disc_lr_mult > 0 and 1 <= self.disc_base_channels <= self.disc_max_channels,
             "disc_lr_mult must be > 0 and 1 <= disc_base_channels <= disc_max_channels"),
            (0 <= self.ema_decay < 1, f"ema_decay must be in [0,1), got {self.ema_decay}"),
            (0 <= self.augment_prob <= 1 and 0 <= self.solid_bg_prob <= 1,
             "augment_prob and solid_bg_prob must be in [0,1]"),
            (len(self.augment_scale) == 2 and 0 < self.augment_scale[0] <= self.augment_scale[1],
             f"augment_scale must be (min, max) with 0 < min <= max, got {self.augment_scale}"),
            (self.augment_rotation_deg >= 0 and 0 <= self.augment_shift < 1,
             "augment_rotation_deg must be >= 0 and augment_shift in [0,1)"),
            (self.pose_refine_lr > 0 and self.pose_prior_weight >= 0
             and min(self.pose_rot_sigma, self.pose_transl_sigma, self.pose_betas_sigma) > 0,
             "pose_refine_lr and the pose sigmas must be > 0, pose_prior_weight >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"invalid training config: {msg}")
        try:
            m.validate()
        except ValueError as exc:
            raise ConfigError(f"invalid training config: {exc}") from None

    def copy(self, **changes) -> "TrainConfig":
        """Deep copy with top-level fields replaced."""
        return dataclasses.replace(copy.deepcopy(self), **changes)


def _cpu_256_v1() -> TrainConfig:
    return TrainConfig(
        preset="cpu-256-v1",
        model=RendererConfig(resolution=256, texture_channels=16, texture_size=256,
                             texture_levels=4, base_channels=16, max_channels=64,
                             style_dim=64, latent_dim=32, mapping_layers=2),
        # few thousand steps on CPU: let the texture and the static background catch up (the
        # background sets most of the whole-crop SSIM; x30 measured better than x10 and x1)
        texture_lr_mult=10.0, background_lr_mult=30.0,
        batch_size=2, max_steps=5000,
        log_interval=10, preview_interval=250, checkpoint_interval=500, val_interval=500,
    )


def _paper_1024() -> TrainConfig:
    return TrainConfig(
        preset="paper-1024",
        model=RendererConfig(resolution=1024, texture_channels=48, texture_size=1024,
                             texture_levels=4, base_channels=64, max_channels=512,
                             style_dim=512, latent_dim=512, mapping_layers=2, variant="full",
                             body_features="texture", triplane_channels=16, triplane_size=512,
                             attention_channels=96, attention_downsample=2,
                             attention_recurrence=2, branch_channels=16, branch_hidden=16,
                             branch_depth=2),
        texture_lr_mult=1.0, batch_size=2, max_steps=400_000, ssim_weight=0.0,
        vgg_weight=0.03, hand_weight=0.1, hand_crop=128, gan_weight_start=1e-3,
        gan_weight_max=0.02, gan_ramp_every=2000, gan_ramp_factor=1.1,
        disc_base_channels=32, disc_max_channels=512, r1_gamma=10.0, r1_interval=16,
        ema_decay=0.999,
        log_interval=20, preview_interval=1000, checkpoint_interval=10_000,
        val_interval=5000,
    )


def _cpu_256() -> TrainConfig:
    cfg = _cpu_256_v1()
    cfg.preset = "cpu-256"
    cfg.model = dataclasses.replace(
        cfg.model, variant="full", attention_channels=32, attention_downsample=2,
        attention_recurrence=2, branch_channels=8, branch_hidden=4, branch_depth=2)
    cfg.vgg_weight = 0.03
    cfg.hand_weight = 0.1
    cfg.gan_weight_max = 0.02
    cfg.disc_base_channels = 8
    cfg.disc_max_channels = 64
    cfg.ema_decay = 0.999
    _appearance_from_video(cfg)
    return cfg


def _appearance_from_video(cfg: TrainConfig) -> None:
    """Issue 10's appearance settings of the product presets: the generator starts from the
    texture baked from the video (fixed RGB input + residual on its colours, learned features
    from zero instead of noise), and learns from warped views over random solid backgrounds
    part of the time. Pose refinement stays a switch (``pose_refine``): at CPU budgets each frame
    is visited only a few times, no gain was measured, and it re-renders the maps every step."""
    cfg.model = dataclasses.replace(cfg.model, texture_rgb=True, texture_rgb_skip=True,
                                    texture_init_std=0.0)
    cfg.augment_prob = 0.3
    cfg.solid_bg_prob = 0.2


def _gpu_512() -> TrainConfig:
    """The full renderer at 512x512 for a 12-24 GB consumer GPU (RTX 3060 12 GB ... 4090 24 GB):
    between cpu-256 and paper-1024 in every width (texture 512^2 x 32, generator 32 channels at
    256^2 up to 256 at low resolution, style 256, attention 64 channels at 128^2), the paper's
    losses and optimiser at batch 2 (hand crops 64 px = S/8). Memory of one training step at
    batch 2, estimated on a CPU (fake tensors, ``ram_avatar.bench_gpu.estimate_train_memory``):
    see the README's "On a GPU" section; not yet measured on a GPU."""
    return TrainConfig(
        preset="gpu-512",
        model=RendererConfig(resolution=512, texture_channels=32, texture_size=512,
                             texture_levels=4, base_channels=32, max_channels=256,
                             style_dim=256, latent_dim=256, mapping_layers=2, variant="full",
                             body_features="texture", triplane_channels=16, triplane_size=256,
                             attention_channels=64, attention_downsample=2,
                             attention_recurrence=2, branch_channels=16, branch_hidden=8,
                             branch_depth=2),
        texture_lr_mult=1.0, batch_size=2, max_steps=200_000, ssim_weight=0.0,
        vgg_weight=0.03, hand_weight=0.1, hand_crop=0, gan_weight_start=1e-3,
        gan_weight_max=0.02, gan_ramp_every=2000, gan_ramp_factor=1.1,
        disc_base_channels=32, disc_max_channels=256, r1_gamma=10.0, r1_interval=16,
        ema_decay=0.999,
        log_interval=20, preview_interval=1000, checkpoint_interval=5000, val_interval=2500,
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
    """Write ``config`` as YAML atomically."""
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read a YAML config written by :func:`save_config` (``yaml.safe_load``).

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
    """Return a copy with dotted-key overrides applied, e.g. ``{"model.base_channels": 32}``.

    ``overrides`` may also be a list of ``"key=value"`` strings (values parsed as YAML, so
    ``lr=2e-4`` gives a float and ``amp=false`` a bool).

    Raises:
        ConfigError: unknown key or wrong value type.
    """
    if isinstance(overrides, (list, tuple)):
        parsed = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like key=value")
            key, value = item.split("=", 1)
            parsed[key.strip()] = yaml.safe_load(value)
        overrides = parsed
    data = config.to_dict()
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config key {key!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"unknown config key {key!r}")
        node[parts[-1]] = list(value) if isinstance(value, tuple) else value
    return TrainConfig.from_dict(data)


# -- helpers ---------------------------------------------------------------------------------

def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check_type(value, tp, name: str):
    """Validate/coerce ``value`` against annotation ``tp`` (subset used by the configs)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{name}: bad value {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{name} must be a list of {len(args)} values, got {value!r}")
        return tuple(_check_type(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return _from_dict(tp, value, name + ".")
    raise ConfigError(f"{name}: unsupported field type {tp!r}")  # pragma: no cover


def _from_dict(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
                          f"valid keys: {', '.join(sorted(names))}")
    kwargs = {k: _check_type(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)
