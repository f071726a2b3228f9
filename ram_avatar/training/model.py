"""The trainable model: the renderer with what training adds to it (nerfstudio's ``Model``).

:class:`AvatarTrainingModel` owns the :class:`~ram_avatar.models.renderer.AvatarRenderer`, the
temporal discriminator (Eq. 4) when the GAN term is on, the perceptual losses and the optional
pose refiner (training.pose_refine), and answers the trainer's three questions:
:meth:`~AvatarTrainingModel.param_groups` (what the optimiser steps, at which learning rate),
:meth:`~AvatarTrainingModel.loss_dict` (RAM-Avatar Eq. 3, generator side) and
:meth:`~AvatarTrainingModel.discriminator_step` (the discriminator's update).

Generator loss (every term switchable by its weight in ``config.loss`` / ``config.gan``)::

    L_G = w_l1 * SmoothL1_beta(rgb, image) + w_ssim * (1 - SSIM(rgb, image))
          + w_mask * BCE(alpha_logit, person_mask) + w_vgg * VGG19(rgb, image)
          + w_hand * P(hand crops of rgb, image) + w_gan(step) * softplus(-D(I[t-1], rgb, I[t+1]))
          + w_pose * prior(pose corrections)
    L_D = softplus(-D(I[t-1], I[t], I[t+1])) + softplus(D(I[t-1], rgb, I[t+1]))
          + every r1_interval steps: r1_interval * gamma / 2 * ||grad D(real)||^2

``rgb`` is the person composited over the learned background; real frames really are the real
sample (the released code swaps them); w_gan ramps from 1e-3 to 0.02 (losses.gan). Without VGG19
weights the VGG term becomes 1 - SSIM (losses.perceptual); the hand distance is LPIPS, VGG19 or
L1 (losses.hand).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ram_avatar.errors import RamAvatarError
from ram_avatar.models.renderer import EXTRA_INPUTS, AvatarRenderer, count_parameters
from ram_avatar.training.augment import composite_solid
from ram_avatar.training.config import LossConfig, OptimConfig, TrainConfig

log = logging.getLogger(__name__)


def renderer_param_groups(renderer: AvatarRenderer, optim: OptimConfig) -> list[dict]:
    """Adam groups of a renderer: ``generator`` (with attention and branches) at ``optim.lr``,
    ``texture`` (body features: texture or triplane) and ``background`` at their multipliers,
    and ``rgb_texture`` (the baked RGB texture) at ``optim.rgb_texture_lr_mult`` when that is
    > 0; otherwise the RGB texture stays fixed (``requires_grad`` off, in no group)."""
    rgb = renderer.rgb_texture_parameter()
    if rgb is not None:
        rgb.requires_grad_(optim.rgb_texture_lr_mult > 0)
    background = [renderer.background_logit]
    special = {id(p) for p in background + ([rgb] if rgb is not None else [])}
    texture = [p for p in renderer.body_features.parameters() if id(p) not in special]
    special |= {id(p) for p in texture}
    rest = [p for p in renderer.parameters() if id(p) not in special]
    groups = [
        {"params": rest, "lr": optim.lr, "name": "generator"},
        {"params": texture, "lr": optim.lr * optim.texture_lr_mult, "name": "texture"},
        {"params": background, "lr": optim.lr * optim.background_lr_mult, "name": "background"},
    ]
    if rgb is not None and optim.rgb_texture_lr_mult > 0:
        groups.append({"params": [rgb], "lr": optim.lr * optim.rgb_texture_lr_mult,
                       "name": "rgb_texture"})
    return groups


def renderer_inputs(batch: dict, renderer: AvatarRenderer) -> dict:
    """Keyword extras of the full renderer found in ``batch`` (:data:`EXTRA_INPUTS`)."""
    if renderer.config.variant != "full":
        return {}
    return {k: batch[k] for k in EXTRA_INPUTS if k in batch}


def reconstruction_losses(out: dict, batch: dict, loss: LossConfig, vgg=None,
                          hand=None) -> dict[str, torch.Tensor]:
    """Weighted reconstruction terms (float32) and their sum under ``"total"`` (no GAN term).

    Terms: ``l1`` SmoothL1(beta) (plain L1 when beta is 0) on the composited RGB, ``ssim``
    1 - SSIM (``ram_avatar.eval.metrics.ssim``), ``mask`` BCE of the alpha logit against the
    person mask, ``vgg`` VGG19 perceptual loss when ``vgg`` (a VGGPerceptualLoss) is given, or
    ``vgg_fallback_ssim`` (1 - SSIM with the VGG weight) when it is None, ``hand`` the hand
    perceptual loss when ``hand`` (losses.hand.HandPerceptualLoss) is given and the batch has
    ``hand_boxes``. Values in the dict are unweighted; ``total`` is the weighted sum.

    Args:
        out: renderer outputs ``rgb (B,3,H,W)``, ``alpha_logit (B,1,H,W)``.
        batch: ``image (B,3,H,W)`` in [0,1], ``person_mask (B,1,H,W)``, optional
            ``hand_boxes``/``hand_valid``.
        loss: the weights (:class:`~ram_avatar.training.config.LossConfig`).
    """
    rgb = out["rgb"].float()
    image = batch["image"].float()
    losses: dict[str, torch.Tensor] = {}
    total = rgb.new_zeros(())
    if loss.l1_weight > 0:
        if loss.l1_beta > 0:
            losses["l1"] = F.smooth_l1_loss(rgb, image, beta=loss.l1_beta)
        else:
            losses["l1"] = F.l1_loss(rgb, image)
        total = total + loss.l1_weight * losses["l1"]
    if loss.ssim_weight > 0:
        from ram_avatar.eval.metrics import ssim

        losses["ssim"] = 1.0 - ssim(rgb, image).mean()
        total = total + loss.ssim_weight * losses["ssim"]
    if loss.mask_weight > 0:
        losses["mask"] = F.binary_cross_entropy_with_logits(
            out["alpha_logit"].float(), batch["person_mask"].float().clamp(0, 1))
        total = total + loss.mask_weight * losses["mask"]
    if loss.vgg_weight > 0:
        if vgg is not None:
            losses["vgg"] = vgg(rgb, image)
            total = total + loss.vgg_weight * losses["vgg"]
        else:
            from ram_avatar.losses.perceptual import ssim_loss

            # the same 1 - SSIM as the ssim term: reuse it instead of computing it twice
            losses["vgg_fallback_ssim"] = losses["ssim"] if "ssim" in losses \
                else ssim_loss(rgb, image)
            total = total + loss.vgg_weight * losses["vgg_fallback_ssim"]
    if loss.hand_weight > 0 and hand is not None and "hand_boxes" in batch:
        losses["hand"] = hand(rgb, image, batch["hand_boxes"], batch.get("hand_valid"))
        total = total + loss.hand_weight * losses["hand"]
    losses["total"] = total
    return losses


def gan_weight_at(config: TrainConfig, step: int) -> float:
    """Generator GAN weight of ``config`` at ``step`` (losses.gan.gan_weight)."""
    from ram_avatar.losses.gan import gan_weight

    g = config.gan
    return gan_weight(step, g.weight_start, g.weight_max, g.ramp_every, g.ramp_factor)


def set_requires_grad(module: nn.Module | None, flag: bool) -> None:
    """Switch gradients of every parameter of ``module`` (None: nothing)."""
    if module is not None:
        for p in module.parameters():
            p.requires_grad_(flag)


def discriminator_update(disc: nn.Module, optimizer: torch.optim.Optimizer, step_fn: Callable,
                         batch: dict, rgb: torch.Tensor, config: TrainConfig, step: int,
                         autocast) -> dict:
    """One discriminator update on (real, fake) triplets (Eq. 4) with lazy R1 on reals.

    Args:
        disc: the temporal discriminator; its gradients are on only inside this call.
        optimizer: its optimiser (gradients zeroed here).
        step_fn: ``step_fn(loss)`` runs backward and the optimiser step.
        batch: ``image_prev``, ``image``, ``image_next`` ``(B,3,H,W)``.
        rgb: the generator's output ``(B,3,H,W)`` (detached here).
        config: ``config.gan`` (r1_gamma, r1_interval).
        step: global step (R1 runs when ``step % r1_interval == 0``).
        autocast: callable returning the autocast context.
    Returns:
        detached terms ``gan_d``, ``d_real``, ``d_fake`` (mean logits) and ``r1`` on R1 steps.
    """
    from ram_avatar.losses.gan import d_logistic_loss, r1_penalty
    from ram_avatar.models.discriminator import stack_frames

    gan = config.gan
    set_requires_grad(disc, True)
    try:
        real = stack_frames(batch["image_prev"], batch["image"], batch["image_next"]).float()
        fake = stack_frames(batch["image_prev"], rgb.detach(), batch["image_next"]).float()
        do_r1 = gan.r1_gamma > 0 and step % gan.r1_interval == 0
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
            total = total + 0.5 * gan.r1_gamma * gan.r1_interval * r1
            terms["r1"] = r1.detach()
        optimizer.zero_grad(set_to_none=True)
        step_fn(total)
    finally:
        set_requires_grad(disc, False)
    return terms


class AvatarTrainingModel:
    """Renderer + discriminator + loss modules + optional pose refiner (module docstring).

    Args:
        config: the resolved training config (``model.num_frames`` set).
        device: training device.
        train_set: the training set; needed only with ``config.pose.refine`` (a
            :class:`~ram_avatar.training.data.SubjectDataset`-like set with ``body``,
            ``params``, ``K_crop`` and ``backend``).
        autocast: callable returning the autocast context (training.distributed.Precision).

    Attributes:
        renderer: the :class:`AvatarRenderer`; ``train_renderer`` is what the step calls (the
            renderer itself or its DDP wrapper, :meth:`set_train_renderer`).
        discriminator: the temporal discriminator (None without the GAN term); frozen outside
            :meth:`discriminator_step`.
        refiner, refine_maps, seq_params: pose refinement (None when off).
        vgg_loss, hand_loss: perceptual loss modules (:meth:`build_losses`; None when off).

    Raises:
        RamAvatarError: pose refinement on a training set that cannot re-render its maps.
    """

    def __init__(self, config: TrainConfig, device: torch.device, train_set=None,
                 autocast=None) -> None:
        import contextlib

        self.config = config
        self.device = device
        self.autocast = autocast or contextlib.nullcontext
        self.renderer = AvatarRenderer(config.model).to(device)
        self.train_renderer: nn.Module = self.renderer
        self.discriminator = None
        if config.adversarial:
            from ram_avatar.models.discriminator import TemporalDiscriminator

            self.discriminator = TemporalDiscriminator(
                config.model.resolution, frames=3, base_channels=config.gan.disc_base_channels,
                max_channels=config.gan.disc_max_channels).to(device)
            set_requires_grad(self.discriminator, False)
        self.refiner = self.refine_maps = self.seq_params = None
        if config.pose.refine:
            self._setup_pose_refine(train_set)
        self.vgg_loss = self.hand_loss = None

    # -- parameters ------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """Adam groups of everything the generator step optimises: :func:`renderer_param_groups`
        plus ``pose`` (the pose corrections at ``pose.lr``) with pose refinement."""
        groups = renderer_param_groups(self.renderer, self.config.optim)
        if self.refiner is not None:
            groups.append({"params": list(self.refiner.parameters()),
                           "lr": self.config.pose.lr, "name": "pose"})
        return groups

    def discriminator_param_groups(self) -> list[dict]:
        """The discriminator's Adam group (``optim.lr * gan.disc_lr_mult``); [] without it."""
        if self.discriminator is None:
            return []
        return [{"params": list(self.discriminator.parameters()), "name": "discriminator",
                 "lr": self.config.optim.lr * self.config.gan.disc_lr_mult}]

    def set_train_renderer(self, module: nn.Module) -> None:
        """Use ``module`` (the renderer's DDP wrapper) for training forwards."""
        self.train_renderer = module

    def build_losses(self) -> None:
        """Load the VGG19 perceptual loss (``loss.vgg_weight``, or the hand loss's VGG mode)
        and the hand loss (``loss.hand_weight``); logs which distances are in use."""
        loss = self.config.loss
        vgg = None
        if loss.vgg_weight > 0 or (loss.hand_weight > 0 and loss.hand_loss in ("auto", "vgg")):
            from ram_avatar.losses.perceptual import build_vgg_loss

            vgg = build_vgg_loss(loss.vgg_weights, allow_fallback=True, device=self.device)
        if loss.hand_weight > 0:
            from ram_avatar.losses.hand import build_hand_loss

            crop = loss.hand_crop or max(16, self.config.model.resolution // 8)
            self.hand_loss = build_hand_loss(crop, loss.hand_loss, vgg=vgg, device=self.device,
                                             try_vgg=False)
            log.info("hand perceptual loss: %s on %d px crops", self.hand_loss.mode, crop)
        self.vgg_loss = vgg if loss.vgg_weight > 0 else None

    def describe(self) -> str:
        """One line: parameter counts of the renderer's parts (and the discriminator)."""
        r = self.renderer
        att = getattr(r, "attention", None)
        text = (f"renderer ({self.config.model.variant}): {count_parameters(r) / 1e6:.2f}M "
                f"parameters (body features {count_parameters(r.body_features) / 1e6:.2f}M, "
                f"generator {count_parameters(r.generator) / 1e6:.2f}M"
                + (f", attention {count_parameters(att) / 1e6:.2f}M" if att is not None else "")
                + f") on {self.device}")
        if self.discriminator is not None:
            n = sum(p.numel() for p in self.discriminator.parameters())
            text += f"; temporal discriminator: {n / 1e6:.2f}M parameters"
        return text

    # -- one step --------------------------------------------------------------------------
    def refine_batch(self, batch: dict, frame_index: torch.Tensor) -> dict:
        """With pose refinement, the batch with its surface maps re-rendered from the refined
        poses of ``frame_index``; otherwise ``batch`` unchanged."""
        if self.refiner is None:
            return batch
        params = self.seq_params.index(frame_index.cpu()).to(self.device)
        batch.update(self.refine_maps(self.refiner.refine(params, frame_index)))
        return batch

    def forward(self, batch: dict, frame_index: torch.Tensor,
                colour: torch.Tensor | None = None) -> dict:
        """Training forward (autocast) of the renderer on ``batch``; with ``colour`` (B,3,1,1)
        the person is composited over those solid colours instead of the background."""
        r = self.train_renderer
        with self.autocast():
            out = r(batch.get("uv"), batch["body_mask"], batch.get("hand"), batch.get("face"),
                    frame_index, **renderer_inputs(batch, self.renderer))
        if colour is not None:  # matting: the person over a random solid colour
            out = dict(out, rgb=composite_solid(out["fg"], out["alpha"], colour))
        return out

    def loss_dict(self, batch: dict, outputs: dict, step: int, frame_index: torch.Tensor,
                  use_discriminator: bool) -> dict[str, torch.Tensor]:
        """Generator loss terms (module docstring) and their weighted sum ``total``.

        ``use_discriminator`` adds the GAN term ``gan_g`` at the weight of ``step``; the
        pose-refinement prior ``pose_prior`` is added with pose refinement.
        """
        losses = reconstruction_losses(outputs, batch, self.config.loss, vgg=self.vgg_loss,
                                       hand=self.hand_loss)
        total = losses["total"]
        if self.refiner is not None:
            p = self.config.pose
            losses["pose_prior"] = self.refiner.prior_loss(frame_index, p.rot_sigma,
                                                           p.transl_sigma, p.betas_sigma)
            total = total + p.prior_weight * losses["pose_prior"]
            losses["total"] = total
        if use_discriminator:
            from ram_avatar.losses.gan import g_nonsaturating_loss
            from ram_avatar.models.discriminator import stack_frames

            fake = stack_frames(batch["image_prev"], outputs["rgb"], batch["image_next"])
            with self.autocast():
                fake_logits = self.discriminator(fake)
            losses["gan_g"] = g_nonsaturating_loss(fake_logits.float())
            total = total + gan_weight_at(self.config, step) * losses["gan_g"]
            losses["total"] = total
        return losses

    def discriminator_step(self, batch: dict, rgb: torch.Tensor, step: int,
                           optimizer: torch.optim.Optimizer,
                           step_fn: Callable[[torch.Tensor], None]) -> dict:
        """The discriminator's update on this batch (:func:`discriminator_update`):
        ``optimizer`` is the discriminator's, ``step_fn(loss)`` its backward + step."""
        return discriminator_update(self.discriminator, optimizer, step_fn, batch, rgb,
                                    self.config, step, self.autocast)

    # -- setup helpers ---------------------------------------------------------------------
    def _setup_pose_refine(self, train_set) -> None:
        from ram_avatar.training.pose_refine import PoseRefiner, RefinedMapRenderer

        missing = [a for a in ("body", "params", "K_crop") if not hasattr(train_set, a)]
        if missing:
            raise RamAvatarError(f"pose_refine needs a SubjectDataset-like training set (missing "
                                 f"{', '.join(missing)}); set pose_refine=false for this data")
        params = train_set.params
        body = train_set.body.to(self.device)
        self.refiner = PoseRefiner(params.batch_size, params.body_pose.shape[1],
                                   params.betas.shape[1]).to(self.device)
        m = self.config.model
        offset = m.expand_offset if "expanded" in m.data_extras() else None
        self.refine_maps = RefinedMapRenderer(body, train_set.K_crop, m.resolution, offset,
                                              backend=getattr(train_set, "backend", "auto"))
        self.seq_params = params
