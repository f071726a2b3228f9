"""Hand perceptual loss (RAM-Avatar Eq. 3): a perceptual distance on square crops around each
hand, so the few hundred hand pixels weigh as much as their visual importance.

Crops: for every item and hand, a ``crop x crop`` square (128 px at 1024^2, i.e. S/8) centred on
the box of the hand's projected joints (dataset key ``hand_boxes (B,2,4)`` = [x0, y0, x1, y1]
pixels at the training resolution, ``hand_valid (B,2)``), shifted to lie inside the image.
Hands that are invalid or whose box lies entirely outside the image are skipped.

Distance on the crops, first available of (``mode="auto"``):

1. LPIPS (:func:`ram_avatar.eval.metrics.load_lpips`, VGG16 then AlexNet backbone; the released
   code uses ``lpips.LPIPS(net='vgg')``) when its weights are present;
2. the VGG19 perceptual loss (:mod:`ram_avatar.losses.perceptual`) when its weights are present;
3. **documented fallback**: L1 on the crops (no pretrained network needed). A warning says so.

LPIPS and VGG are frozen; gradients flow to the prediction only.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HandPerceptualLoss", "hand_crops", "build_hand_loss"]

log = logging.getLogger(__name__)


def hand_crops(pred: torch.Tensor, target: torch.Tensor, boxes: torch.Tensor,
               valid: torch.Tensor | None, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Square crops around the hands.

    Args:
        pred, target: ``(B,3,H,W)``.
        boxes: ``(B,K,4)`` [x0, y0, x1, y1] pixels (K hands per item).
        valid: ``(B,K)`` bool or None (all valid).
        crop: side of the crops in pixels (clamped to min(H, W)).

    Returns:
        ``(N,3,crop,crop)`` crops of pred and target (N = kept hands, may be 0).
    """
    B, _, H, W = pred.shape
    crop = int(min(crop, H, W))
    boxes = boxes.detach().float().cpu()
    valid = torch.ones(boxes.shape[:2], dtype=torch.bool) if valid is None \
        else valid.detach().cpu().bool()
    ps, ts = [], []
    for b in range(B):
        for k in range(boxes.shape[1]):
            x0, y0, x1, y1 = boxes[b, k].tolist()
            if not valid[b, k] or x1 < 0 or y1 < 0 or x0 >= W or y0 >= H or \
                    not all(map(lambda v: v == v, (x0, y0, x1, y1))):
                continue
            cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
            left = int(round(min(max(cx - crop / 2, 0), W - crop)))
            top = int(round(min(max(cy - crop / 2, 0), H - crop)))
            ps.append(pred[b, :, top:top + crop, left:left + crop])
            ts.append(target[b, :, top:top + crop, left:left + crop])
    if not ps:
        empty = pred.new_zeros(0, pred.shape[1], crop, crop)
        return empty, empty
    return torch.stack(ps), torch.stack(ts)


class HandPerceptualLoss(nn.Module):
    """Perceptual loss on hand crops (module docstring).

    Args:
        crop: crop side in pixels.
        lpips: a loaded :class:`ram_avatar.eval.metrics.LPIPS` or None.
        vgg: a :class:`ram_avatar.losses.perceptual.VGGPerceptualLoss` or None.

    ``mode`` (``lpips``, ``vgg`` or ``l1``) says which distance is used.
    forward(pred, target, boxes, valid) -> scalar (0 with a graph to ``pred`` when no hand).
    """

    def __init__(self, crop: int, lpips: nn.Module | None = None, vgg: nn.Module | None = None):
        super().__init__()
        self.crop = int(crop)
        self.lpips = lpips
        self.vgg = vgg if lpips is None else None
        self.mode = "lpips" if lpips is not None else ("vgg" if vgg is not None else "l1")

    def forward(self, pred: torch.Tensor, target: torch.Tensor, boxes: torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        p, t = hand_crops(pred, target, boxes, valid, self.crop)
        if p.shape[0] == 0:
            return pred.sum() * 0.0
        p, t = p.float(), t.float()
        if self.mode == "lpips":
            return self.lpips(p.clamp(0, 1), t).mean()
        if self.mode == "vgg":
            return self.vgg(p, t)
        return F.l1_loss(p, t)


def build_hand_loss(crop: int, mode: str = "auto", vgg: nn.Module | None = None,
                    device: str | torch.device = "cpu",
                    try_vgg: bool = True) -> HandPerceptualLoss:
    """Hand loss with the best available distance (``mode``: auto, lpips, vgg, l1).

    ``vgg``: an already built VGG19 perceptual loss to reuse (saves memory); ``try_vgg=False``
    when the caller already failed to load it. ``lpips`` / ``vgg`` modes that cannot load their
    weights fall back like ``auto`` (with a warning).
    """
    if mode not in ("auto", "lpips", "vgg", "l1"):
        raise ValueError(f"hand loss mode must be auto, lpips, vgg or l1, got {mode!r}")
    lp = None
    if mode in ("auto", "lpips"):
        from ram_avatar.eval.metrics import load_lpips

        lp = load_lpips("vgg", device=device) or load_lpips("alex", device=device)
    if lp is None and mode in ("auto", "lpips", "vgg") and vgg is None and try_vgg:
        from ram_avatar.losses.perceptual import build_vgg_loss

        vgg = build_vgg_loss(allow_fallback=True, device=device)
    loss = HandPerceptualLoss(crop, lpips=lp, vgg=None if mode == "l1" else vgg)
    if loss.mode == "l1" and mode != "l1":
        log.warning("hand perceptual loss: no LPIPS or VGG19 ImageNet weights found; using L1 "
                    "on the %d px hand crops instead (documented fallback)", crop)
    return loss
