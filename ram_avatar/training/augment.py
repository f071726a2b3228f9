"""Training-time augmentation: random similarity warps and solid-colour backgrounds.

RAM-Avatar renders the person wherever the conditioning maps put them, but a renderer trained
only on the capture's framing sees the person at one position and scale: driven by another
person (other height, other distance to the camera, upper-body framing) it meets placements it
never saw. Two augmentations address this (issue 10, item 3):

Geometric (:func:`random_similarity`, :func:`warp_batch`)
    Each item of a batch gets its own random similarity ``x' = s R (x - c) + c + t`` about the
    image centre c (scale s, in-plane rotation R, shift t in pixels), applied identically to
    every conditioning map and to the target frame, its person mask, its neighbour frames and
    its hand boxes. For a pinhole camera this is exactly what a camera that zoomed, rolled
    about its optical axis and shifted its principal point would see, so warped maps are valid
    conditioning maps. Maps that carry surface coordinates (``uv*``, ``canon*``) and binary
    masks are resampled with nearest neighbour (bilinear would blend UVs across texture seams
    and blur the mask edge); colour images and the hand/face line drawings bilinearly.
    Pixels warped in from outside the frame are zero in every map and in the person mask.

Matting (:func:`composite_solid`)
    The person is composited over a random solid colour: target ``m I + (1 - m) c`` with the
    person mask m, render ``alpha fg + (1 - alpha) c`` with the renderer's own alpha. The learned
    background then cannot explain person pixels (nor the person the background), so alpha has
    to be right; every geometric warp uses it, since the warped target no longer lines up with
    the (static) learned background.

All functions are pure torch, batched, deterministic given a ``torch.Generator``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: batch keys resampled with nearest neighbour (surface coordinates and binary masks)
NEAREST_KEYS = ("uv", "uv_expanded", "prev_uv", "canon", "canon_expanded", "prev_canon",
                "body_mask", "body_mask_expanded", "prev_body_mask")
#: batch keys resampled bilinearly (colours, soft masks, line drawings)
BILINEAR_KEYS = ("image", "image_prev", "image_next", "person_mask", "hand", "face")


def random_similarity(batch_size: int, size: int, scale: tuple[float, float] = (0.75, 1.25),
                      max_rotation_deg: float = 10.0, max_shift: float = 0.15,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Random 2D similarity transforms about the image centre, as ``(B,2,3)`` matrices.

    The matrix A maps *output* pixel coordinates to *input* pixel coordinates
    (``x_in = A[:, :2] x_out + A[:, 2]``, pixels with centres at ``k + 0.5``), which is what
    resampling needs.

    Args:
        batch_size: B.
        size: S, the square image side in pixels.
        scale: range of the zoom factor s (s > 1 enlarges the person); log-uniform.
        max_rotation_deg: in-plane rotation drawn uniformly in [-max, max] degrees.
        max_shift: shift drawn uniformly in [-max, max] times S, per axis.
        generator: random generator (reproducible augmentation).

    Returns:
        ``(B,2,3)`` float32 output-to-input affine matrices.
    """
    g = generator
    lo, hi = math.log(scale[0]), math.log(scale[1])
    s = torch.exp(lo + (hi - lo) * torch.rand(batch_size, generator=g))
    ang = torch.deg2rad((2 * torch.rand(batch_size, generator=g) - 1) * max_rotation_deg)
    t = (2 * torch.rand(batch_size, 2, generator=g) - 1) * max_shift * size
    c = torch.full((batch_size, 2), size / 2.0)
    cos, sin = torch.cos(ang), torch.sin(ang)
    # forward: x_out = s R (x_in - c) + c + t  ->  inverse: x_in = R^T (x_out - c - t) / s + c
    Rt = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2) / s[:, None, None]
    offset = c - torch.einsum("bij,bj->bi", Rt, c + t)
    return torch.cat([Rt, offset[:, :, None]], dim=2).float()


def _pixel_to_grid(A: torch.Tensor, size: int) -> torch.Tensor:
    """Output->input pixel affine ``(B,2,3)`` -> ``affine_grid`` theta in normalised coords
    (``align_corners=False``: x_n = 2 x / S - 1)."""
    # x_in_n = 2/S * (M (S/2 (x_out_n + 1)) + b) - 1 = M x_out_n + M 1 + 2 b / S - 1
    M, b = A[:, :, :2], A[:, :, 2]
    ones = torch.ones(A.shape[0], 2, device=A.device, dtype=A.dtype)
    offset = torch.einsum("bij,bj->bi", M, ones) + 2.0 * b / size - 1.0
    return torch.cat([M, offset[:, :, None]], dim=2)


def warp_batch(batch: dict, A: torch.Tensor) -> dict:
    """Warp every image-like entry of a training batch by per-item similarities ``A``.

    Args:
        batch: dataset batch (docs/INTERFACES.md) with ``(B,C,S,S)`` maps and images; optional
            ``hand_boxes (B,2,4)`` [x0, y0, x1, y1] pixels and ``hand_valid (B,2)``.
        A: ``(B,2,3)`` output-to-input pixel affines (:func:`random_similarity`).

    Returns:
        A new dict: warped maps/images (module docstring), warped hand boxes (the bounding box
        of the warped corners; a hand whose box leaves the frame becomes invalid), and
        ``valid (B,1,S,S)`` = 1 where the output pixel comes from inside the frame. Other keys
        are passed through unchanged.
    """
    out = dict(batch)
    ref = batch["body_mask"]
    B, S = ref.shape[0], ref.shape[-1]
    theta = _pixel_to_grid(A.to(ref.device, torch.float32), S)
    grid = F.affine_grid(theta, [B, 1, S, S], align_corners=False)
    for keys, mode in ((NEAREST_KEYS, "nearest"), (BILINEAR_KEYS, "bilinear")):
        for k in keys:
            if k in batch and isinstance(batch[k], torch.Tensor) and batch[k].dim() == 4:
                v = batch[k]
                out[k] = F.grid_sample(v.float(), grid.to(v.device), mode=mode,
                                       padding_mode="zeros", align_corners=False).to(v.dtype)
    ones = torch.ones(B, 1, S, S, device=ref.device)
    out["valid"] = (F.grid_sample(ones, grid, mode="nearest", padding_mode="zeros",
                                  align_corners=False) > 0.5).float()
    if "hand_boxes" in batch:
        out["hand_boxes"], ok = _warp_boxes(batch["hand_boxes"], A.to(batch["hand_boxes"].device), S)
        if "hand_valid" in batch:
            out["hand_valid"] = batch["hand_valid"].bool() & ok
    return out


def _warp_boxes(boxes: torch.Tensor, A: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward-map boxes ``(B,2,4)`` through the inverse of the output->input affines."""
    M, b = A[:, :, :2], A[:, :, 2]
    Minv = torch.linalg.inv(M)
    x0, y0, x1, y1 = boxes.unbind(-1)
    corners = torch.stack([torch.stack([x0, y0], -1), torch.stack([x1, y0], -1),
                           torch.stack([x0, y1], -1), torch.stack([x1, y1], -1)], dim=2)  # (B,2,4,2)
    fwd = torch.einsum("bij,bhkj->bhki", Minv, corners - b[:, None, None, :])
    lo, hi = fwd.amin(dim=2), fwd.amax(dim=2)
    new = torch.cat([lo, hi], dim=-1)
    ok = (lo >= 0).all(-1) & (hi <= size).all(-1)
    return new, ok


def random_colours(batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random solid background colours ``(B,3,1,1)`` uniform in [0,1]^3."""
    return torch.rand(batch_size, 3, 1, 1, generator=generator)


def composite_solid(image: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """``mask * image + (1 - mask) * colour``: images ``(B,3,H,W)``, mask ``(B,1,H,W)`` in
    [0,1], colour ``(B,3,1,1)`` -> ``(B,3,H,W)``."""
    colour = colour.to(image)
    return mask * image + (1.0 - mask) * colour


class BatchAugmenter:
    """Applies the configured augmentation to training batches (module docstring).

    Args:
        config: a TrainConfig (``augment_prob``, ``augment_scale``, ``augment_rotation_deg``,
            ``augment_shift``, ``solid_bg_prob``, ``seed``).
        rank: distributed rank (each rank draws its own transforms).

    Calling ``augmenter(batch, step)`` returns ``(batch, colour)``: the (possibly warped) batch
    whose ``image`` is composited over solid colours, and the colours ``(B,3,1,1)`` the render
    must be composited over too; ``colour`` is None when the step is left as it is. The random
    draws are a pure function of (seed, rank, step), so a resumed run augments exactly as an
    uninterrupted one.
    """

    def __init__(self, config, rank: int = 0) -> None:
        self.config = config
        self.rank = int(rank)

    @property
    def enabled(self) -> bool:
        return self.config.augment_prob > 0 or self.config.solid_bg_prob > 0

    def __call__(self, batch: dict, step: int) -> tuple[dict, torch.Tensor | None]:
        cfg = self.config
        if not self.enabled:
            return batch, None
        g = torch.Generator().manual_seed((int(cfg.seed) * 1_000_003 + self.rank * 7_919
                                           + int(step)) % (2 ** 63))
        u_warp, u_bg = torch.rand(2, generator=g).tolist()
        warp = u_warp < cfg.augment_prob
        if not warp and u_bg >= cfg.solid_bg_prob:
            return batch, None
        B, S = batch["body_mask"].shape[0], batch["body_mask"].shape[-1]
        if warp:
            A = random_similarity(B, S, tuple(cfg.augment_scale), cfg.augment_rotation_deg,
                                  cfg.augment_shift, generator=g)
            batch = warp_batch(batch, A)
        colour = random_colours(B, generator=g).to(batch["image"].device)
        batch = dict(batch)
        batch["image"] = composite_solid(batch["image"], batch["person_mask"].clamp(0, 1),
                                         colour)
        return batch, colour
