"""Hand loss (ram_avatar.losses.hand): hand crops and the L1 fallback without VGG weights."""

from __future__ import annotations

import pytest
import torch

from ram_avatar.losses.hand import HandPerceptualLoss, hand_crops


def test_hand_crops_and_l1_fallback():
    pred = torch.arange(64 * 64, dtype=torch.float32).view(1, 1, 64, 64).expand(1, 3, -1, -1)
    target = torch.zeros_like(pred)
    boxes = torch.tensor([[[10.0, 20.0, 14.0, 24.0], [60.0, 60.0, 70.0, 70.0]]])
    p, t = hand_crops(pred, target, boxes, torch.tensor([[True, True]]), crop=8)
    assert p.shape == (2, 3, 8, 8)
    assert p[0, 0, 0, 0] == 18 * 64 + 8        # centred on (12, 22)
    assert p[1, 0, -1, -1] == 63 * 64 + 63     # shifted inside the image
    p, _ = hand_crops(pred, target, boxes, torch.tensor([[False, True]]), crop=8)
    assert p.shape[0] == 1
    loss = HandPerceptualLoss(8)
    assert loss.mode == "l1"
    value = loss(pred, target, boxes, torch.tensor([[True, False]]))
    assert value == pytest.approx(float(pred[0, :, 18:26, 8:16].mean()))
    gone = torch.tensor([[[-50.0, -50.0, -40.0, -40.0], [100.0, 100.0, 110.0, 110.0]]])
    pr = pred.clone().requires_grad_(True)
    zero = loss(pr, target, gone)
    zero.backward()
    assert zero.item() == 0.0 and pr.grad is not None
