"""Retargeting onto the avatar's shape keeps the feet on the avatar's ground and the avatar framed."""

from __future__ import annotations

import numpy as np
import torch

from ram_avatar.runtime.retarget import FOOT_LANDMARKS, ground_level, retarget


def test_retarget_feet_on_ground_and_framed(anny_body):
    g = torch.Generator().manual_seed(0)
    T = 30
    avatar = anny_body.zero_params(20)
    avatar.betas = torch.tensor([[0.45, 0.5, 0.4, 0.7, 0.45, 0.5]])        # shorter avatar
    avatar.transl = torch.tensor([0.1, 0.2, 3.2]).expand(20, 3).clone()
    driver = anny_body.zero_params(T)
    driver.betas = torch.tensor([[0.3, 0.65, 0.35, 0.7, 0.95, 0.15]])      # taller driver
    driver.transl = torch.stack([torch.linspace(-0.5, 0.5, T), torch.full((T,), -0.3),
                                 torch.full((T,), 5.0)], -1)               # walks across, far away
    driver.body_pose = 0.05 * torch.randn(T, anny_body.num_body_joints, 3, generator=g)
    # the driver stands on their own floor (y = 1.4 m in their camera): feet in contact
    with torch.no_grad():
        dfeet = anny_body(driver, return_vertices=False).pose_landmarks[:, FOOT_LANDMARKS, 1].max(1).values
    driver.transl[:, 1] += 1.4 - dfeet
    out, _, info = retarget(driver, avatar, anny_body)
    assert torch.equal(out.betas, avatar.betas)
    assert torch.equal(out.body_pose, driver.body_pose)
    with torch.no_grad():
        lm = anny_body(out, return_vertices=False).pose_landmarks
    feet = lm[:, FOOT_LANDMARKS, 1].max(1).values.numpy()
    ground = ground_level(anny_body, avatar)
    # lowest foot within 1.5 cm of the avatar's training ground in every frame (the residual
    # comes from the different bone lengths under the same joint angles)
    assert np.abs(feet - ground).max() < 0.015, np.abs(feet - ground).max()
    # framed: the root stays around the avatar's training position; the walk is scaled by leg ratio
    assert abs(float(out.transl[:, 2].median()) - 3.2) < 1e-4
    assert 0.6 < info["scale"] < 1.0
    span = float(out.transl[-1, 0] - out.transl[0, 0])
    assert abs(span - info["scale"] * 1.0) < 1e-4
