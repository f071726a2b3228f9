"""Training augmentation (warps + solid backgrounds) and pose refinement (differentiable maps)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ram_avatar.render.differentiable import differentiable_bary
from ram_avatar.render.rasterizer import rasterize
from ram_avatar.training.augment import (BatchAugmenter, composite_solid, random_similarity,
                                         warp_batch)
from ram_avatar.training.pose_refine import PoseRefiner, RefinedMapRenderer

from test_trainer import SyntheticAvatar, tiny_config


def _batch(n=2):
    from torch.utils.data import default_collate

    items = [SyntheticAvatar(8)[i] for i in range(n)]
    b = default_collate(items)
    b["hand_boxes"] = torch.tensor([[[20.0, 20.0, 30.0, 28.0], [40.0, 10.0, 44.0, 16.0]]] * n)
    b["hand_valid"] = torch.ones(n, 2, dtype=torch.bool)
    return b


def _centroid(img: torch.Tensor) -> torch.Tensor:
    """(H,W) weights -> (x, y) centroid in pixel coordinates (centres at k + 0.5)."""
    H, W = img.shape
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    w = img.sum()
    return torch.stack([(img * xs).sum() / w, (img * ys).sum() / w])


def test_identity_warp_changes_nothing():
    b = _batch()
    A = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]]).repeat(2, 1, 1)
    out = warp_batch(b, A)
    for k in ("uv", "body_mask", "image", "person_mask", "hand", "face"):
        assert torch.allclose(out[k], b[k], atol=1e-5), k
    assert torch.allclose(out["hand_boxes"], b["hand_boxes"], atol=1e-4)
    assert out["valid"].min() == 1


def test_integer_shift_moves_maps_and_target_together():
    b = _batch()
    # output pixel x reads input pixel x - 5 (shift right by 5), y reads y + 3 (shift up by 3)
    A = torch.tensor([[[1.0, 0, -5.0], [0, 1.0, 3.0]]]).repeat(2, 1, 1)
    out = warp_batch(b, A)
    for k in ("uv", "body_mask", "image", "person_mask"):
        want = torch.zeros_like(b[k])
        want[..., :-3, 5:] = b[k][..., 3:, :-5]
        assert torch.allclose(out[k], want, atol=1e-5), k
    assert torch.allclose(out["hand_boxes"][0, 0], torch.tensor([25.0, 17.0, 35.0, 25.0]), atol=1e-4)
    assert out["valid"][0, 0, -3:, :].sum() == 0 and out["valid"][0, 0, :, :5].sum() == 0


def test_random_similarity_applied_identically_to_maps_and_target():
    b = _batch()
    g = torch.Generator().manual_seed(3)
    A = random_similarity(2, 64, (0.8, 1.25), 15.0, 0.1, generator=g)
    out = warp_batch(b, A)
    for i in range(2):
        # the person (body mask, nearest) and the target's person mask (bilinear) land at the
        # same place, and the target's colours follow the UVs (image = colour(uv) still holds)
        c_mask = _centroid(out["body_mask"][i, 0])
        c_person = _centroid(out["person_mask"][i, 0])
        assert torch.dist(c_mask, c_person) < 0.5
        m = out["body_mask"][i, 0] > 0.5
        inner = F.max_pool2d((~m).float()[None, None], 5, 1, 2)[0, 0] == 0  # away from edges
        u, v = out["uv"][i, 0][inner], out["uv"][i, 1][inner]
        red = 0.5 + 0.4 * torch.sin(2 * math.pi * u)
        assert (out["image"][i, 0][inner] - red).abs().mean() < 0.02
        # the transform really moved the person
        assert torch.dist(c_mask, _centroid(b["body_mask"][i, 0])) > 0.5


def test_batch_augmenter_is_reproducible_and_composites_over_solid_colour():
    cfg = tiny_config(augment_prob=1.0, solid_bg_prob=0.0)
    aug = BatchAugmenter(cfg)
    b = _batch()
    b1, c1 = aug(dict(b), 7)
    b2, c2 = aug(dict(b), 7)
    b3, c3 = aug(dict(b), 8)
    assert c1 is not None and torch.equal(c1, c2) and not torch.equal(c1, c3)
    assert torch.equal(b1["image"], b2["image"])
    # outside the (warped) person mask the target is exactly the solid colour
    out_mask = b1["person_mask"] == 0
    expected = c1.expand_as(b1["image"])
    assert torch.allclose(b1["image"][out_mask.expand_as(b1["image"])],
                          expected[out_mask.expand_as(b1["image"])], atol=1e-6)
    off = BatchAugmenter(tiny_config())
    b4, c4 = off(b, 7)
    assert c4 is None and b4 is b
    # composite of a render over the same colour: alpha 0 -> colour, alpha 1 -> fg
    fg = torch.rand(2, 3, 8, 8)
    assert torch.allclose(composite_solid(fg, torch.zeros(2, 1, 8, 8), c1), c1.expand(2, 3, 8, 8))
    assert torch.allclose(composite_solid(fg, torch.ones(2, 1, 8, 8), c1), fg)


@pytest.mark.slow
def test_training_with_augmentation_runs_and_loss_falls(tmp_path):
    from ram_avatar.training import train

    cfg = tiny_config(augment_prob=0.5, solid_bg_prob=0.3, log_interval=5)
    ds = SyntheticAvatar(6)
    # the training loss mixes augmented and plain steps: judge on the plain frames instead
    s1 = train(ds, ds, tmp_path / "one", cfg, steps=1, device="cpu", show_progress=False)
    s = train(ds, ds, tmp_path / "run", cfg, steps=30, device="cpu", show_progress=False)
    assert s["step"] == 30
    assert s["val_psnr"] > s1["val_psnr"] + 1.0, (s1["val_psnr"], s["val_psnr"])


# ---------------------------------------------------------------------------------------------
# pose refinement


def _camera_facing_params(body, B=1, z=2.6):
    p = body.zero_params(B)
    p.global_orient[:, 0] = math.pi / 2  # Anny: z up, facing -y -> camera: y down, facing -z
    p.transl[:, 2] = z
    return p


def test_differentiable_bary_matches_rasterizer(anny_body):
    p = _camera_facing_params(anny_body)
    with torch.no_grad():
        verts = anny_body(p).vertices
    K = torch.tensor([[120.0, 0, 48], [0, 120.0, 48], [0, 0, 1]])
    frags = rasterize(verts, anny_body.faces, K, (96, 96), backend="torch")
    v = verts.clone().requires_grad_(True)
    bary = differentiable_bary(frags.face_id, v, anny_body.faces, K)
    m = frags.face_id >= 0
    assert m.sum() > 500
    assert (bary[m] - frags.bary[m]).abs().max() < 1e-3
    assert torch.allclose(bary[m].sum(-1), torch.ones(int(m.sum())), atol=1e-5)
    bary[m][:, 0].sum().backward()
    assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def _smooth_texture(seed: int = 0) -> torch.Tensor:
    """(1,3,64,64) smooth random RGB texture in [0, 1] (bicubic upsampling of 8x8 noise)."""
    torch.manual_seed(seed)
    return F.interpolate(torch.rand(1, 3, 8, 8), size=(64, 64), mode="bicubic",
                         align_corners=False).clamp(0, 1)


class _TextureLookup(torch.nn.Module):
    """A frozen stand-in renderer for the test-time refinement: the RGB of a fixed smooth texture
    at the UV map, inside the body mask (the neural texture's lookup without the generator)."""

    def __init__(self, tex: torch.Tensor):
        super().__init__()
        self.tex = torch.nn.Parameter(tex)
        self.config = type("Cfg", (), {"expand_offset": None})()

    @staticmethod
    def input_names():
        return ["uv", "body_mask"]

    def forward_batch(self, b, frame_index):
        grid = torch.stack([b["uv"][:, 0] * 2 - 1, 1 - 2 * b["uv"][:, 1]], -1)
        rgb = F.grid_sample(self.tex.expand(len(grid), -1, -1, -1), grid, mode="bilinear",
                            align_corners=False)
        return {"rgb": rgb * b["body_mask"]}


@pytest.mark.slow
def test_pose_refinement_recovers_known_perturbation(anny_body):
    """Photometric refinement through a fixed texture pulls a perturbed translation and root
    orientation back toward the truth (the prior is off, so only the image decides)."""
    S = 96
    K = np.array([[150.0, 0, 48], [0, 150.0, 48], [0, 0, 1]])
    maps = RefinedMapRenderer(anny_body, K, S, backend="auto")
    model = _TextureLookup(_smooth_texture())

    def render(params):
        return model.forward_batch(maps(params), None)["rgb"]

    truth = _camera_facing_params(anny_body)
    with torch.no_grad():
        target = render(truth)
    start = _camera_facing_params(anny_body)
    start.transl[:, :2] += torch.tensor([0.02, -0.015])
    start.global_orient[:, 1] += 0.04
    refiner = PoseRefiner(1, truth.body_pose.shape[1], truth.betas.shape[1])
    opt = torch.optim.Adam(refiner.parameters(), lr=2e-3)
    idx = torch.zeros(1, dtype=torch.long)
    err0 = (start.transl - truth.transl).norm().item()
    rot0 = (start.global_orient - truth.global_orient).norm().item()
    for _ in range(60):
        p = refiner.refine(start, idx)
        loss = (render(p) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        refiner.body_pose.grad = None  # refine the root only: a well-posed toy problem
        refiner.betas.grad = None
        opt.step()
    p = refiner.refine(start, idx)
    err1 = (p.transl - truth.transl).norm().item()
    rot1 = (p.global_orient - truth.global_orient).norm().item()
    assert err1 < 0.4 * err0, (err0, err1)
    assert rot1 < 0.6 * rot0, (rot0, rot1)


class _HeldOut:
    """The attributes of a SubjectDataset that refine_heldout_poses reads (images given)."""

    def __init__(self, body, params, indices, images, K, S):
        self.body, self.params, self.K_crop, self.size, self.backend = body, params, K, S, "auto"
        self.indices = np.asarray(indices)
        self.images = images

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        S = self.size
        return {"uv": torch.zeros(2, S, S), "body_mask": torch.zeros(1, S, S),
                "image": self.images[i], "frame_index": int(self.indices[i])}


def test_heldout_refinement_recovers_a_known_offset(anny_body):
    """refine_heldout_poses (annealed Adam, temporal prior) moves three consecutive held-out
    frames, fitted 2.5 cm and 0.04 rad off, back toward the pose their images show, and leaves
    the other frames of the sequence as fitted."""
    from ram_avatar.training.pose_refine import refine_heldout_poses

    S = 96
    K = np.array([[150.0, 0, 48], [0, 150.0, 48], [0, 0, 1]])
    model = _TextureLookup(_smooth_texture())
    truth = _camera_facing_params(anny_body, B=5)
    held = [2, 3, 4]
    with torch.no_grad():
        maps = RefinedMapRenderer(anny_body, K, S)(truth.index(torch.tensor(held)))
        images = model.forward_batch(maps, None)["rgb"]
    fitted = _camera_facing_params(anny_body, B=5)
    fitted.transl[2:, :2] += torch.tensor([0.02, -0.015])
    fitted.global_orient[2:, 1] += 0.04
    out = refine_heldout_poses(model, _HeldOut(anny_body, fitted, held, images, K, S),
                               iterations=80, lr=2e-3, batch=2)
    err0 = (fitted.transl - truth.transl)[2:].norm(dim=1)
    err1 = (out.transl - truth.transl)[2:].norm(dim=1)
    assert (err1 < 0.4 * err0).all(), (err0, err1)
    rot0 = (fitted.global_orient - truth.global_orient)[2:].norm(dim=1)
    rot1 = (out.global_orient - truth.global_orient)[2:].norm(dim=1)
    assert (rot1 < 0.85 * rot0).all(), (rot0, rot1)
    render = RefinedMapRenderer(anny_body, K, S)
    with torch.no_grad():
        l1 = [(model.forward_batch(render(p.index(torch.tensor(held))), None)["rgb"] - images)
              .abs().mean().item() for p in (fitted, out)]
    print("translation error", err0.tolist(), "->", err1.tolist(), "rotation", rot0.tolist(),
          "->", rot1.tolist(), "image L1", l1)
    assert l1[1] < 0.4 * l1[0], l1
    assert torch.equal(out.transl[:2], fitted.transl[:2])  # frames not held out: as fitted
    assert all(p.requires_grad for p in model.parameters())  # the renderer is given back


def test_heldout_refinement_never_raises_a_frames_photometric_error(anny_body):
    """Images that carry no pose signal (noise): whatever the steps do, every frame keeps a
    pose whose photometric error is no higher than its fitted pose's."""
    from ram_avatar.training.pose_refine import refine_heldout_poses

    S = 64
    K = np.array([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]])
    torch.manual_seed(1)
    model = _TextureLookup(torch.rand(1, 3, 32, 32))
    held = [0, 1, 2, 3]
    fitted = _camera_facing_params(anny_body, B=4)
    images = torch.rand(4, 3, S, S)
    out = refine_heldout_poses(model, _HeldOut(anny_body, fitted, held, images, K, S),
                               iterations=3, lr=0.05, batch=2)
    render = RefinedMapRenderer(anny_body, K, S)
    with torch.no_grad():
        err = [(model.forward_batch(render(p), None)["rgb"] - images).abs().flatten(1).mean(1)
               for p in (fitted, out)]
    assert (err[1] <= err[0] + 1e-6).all(), err


def test_smoothness_prior_counts_consecutive_frames_only():
    r = PoseRefiner(6, 4, 2)
    with torch.no_grad():
        r.transl[3, 0] = 0.1
        r.global_orient[5, 2] = 0.5
    # frames 2, 3 and 5: one consecutive pair (2, 3), whose transl differs by 0.1 m
    assert abs(r.smoothness_loss(torch.tensor([5, 3, 2]), 1.0, 0.1).item() - 1.0) < 1e-6
    # pairs (2,3), (3,4) and (4,5): 1 + 1 + 0.25 over three pairs
    v = r.smoothness_loss(torch.tensor([2, 3, 4, 5]), 1.0, 0.1).item()
    assert abs(v - (1 + 1 + 0.25) / 3) < 1e-6
    assert r.smoothness_loss(torch.tensor([0, 2, 4]), 1.0, 0.1).item() == 0.0


def test_refiner_prior_and_arrays(anny_body):
    p = _camera_facing_params(anny_body, B=3)
    r = PoseRefiner(3, p.body_pose.shape[1], p.betas.shape[1])
    idx = torch.arange(3)
    assert r.prior_loss(idx, 0.05, 0.02, 0.05).item() == 0.0
    with torch.no_grad():
        r.transl[1, 0] = 0.02
    # |0.02 m|^2 / 0.02^2 = 1 on one of three frames
    assert abs(r.prior_loss(idx, 0.05, 0.02, 0.05).item() - 1 / 3) < 1e-6
    arr = r.refined_arrays(p)
    assert arr["transl"].shape == (3, 3) and abs(arr["transl"][1, 0] - 0.02) < 1e-7
    assert arr["delta_body_pose"].shape == tuple(p.body_pose.shape)


# ---------------------------------------------------------------------------------------------
# refined poses through a run: saved, read back by evaluate, opt-in test-time refinement


@pytest.mark.slow
def test_refined_poses_saved_and_used_by_evaluate(tmp_path, anny_body, monkeypatch):
    import ram_avatar.body
    import ram_avatar.render.sequence
    from tiny_subject import TINY_TRAIN, write_tiny_subject

    from ram_avatar.cli import main
    from ram_avatar.eval.evaluate import evaluate_subject
    from ram_avatar.io.sequence import load_sequence
    from ram_avatar.training.pose_refine import apply_refined_poses, load_refined_poses

    monkeypatch.setattr(ram_avatar.body, "load_body_model", lambda *a, **k: anny_body)
    monkeypatch.setattr(ram_avatar.render.sequence, "load_body_model", lambda *a, **k: anny_body)
    subject = write_tiny_subject(tmp_path / "s", anny_body, T=20, fps=10.0)
    sets = [x for s in TINY_TRAIN + ["pose_refine=true", "pose_refine_lr=0.01",
                                     "augment_prob=0.5", "solid_bg_prob=0.5"]
            for x in ("--set", s)]
    assert main(["train", str(subject), "--run", "r", "--steps", "6", "--device", "cpu",
                 "--preset", "cpu-256-v1", *sets]) == 0
    refined = load_refined_poses(subject / "runs" / "r" / "refined_poses.npz")
    assert int(refined["step"]) == 6
    seq = load_sequence(subject)
    val = np.flatnonzero(~np.isin(np.arange(20), np.arange(18)))  # tail 10 %: frames 18, 19
    moved = np.abs(refined["delta_transl"]).sum(-1)
    assert moved[:18].max() > 0 and moved[val].max() == 0  # held-out frames never trained
    assert np.abs(refined["delta_betas"]).max() > 0
    params = apply_refined_poses(seq.params, refined)
    assert torch.allclose(params.betas, torch.as_tensor(refined["betas"]))
    ev = evaluate_subject(subject, "r", device="cpu")
    assert "betas" in ev["pose_refinement"] and np.isfinite(ev["psnr_masked"])
    ev2 = evaluate_subject(subject, "r", device="cpu", refine_poses=1)
    assert ev2["pose_refinement"].startswith("held-out poses refined")
    assert np.isfinite(ev2["psnr_masked"])
    # the same call reports the fitted poses' scores too, equal to a plain evaluate's
    fitted = ev2["fitted_poses"]
    assert fitted["pose_refinement"] == ev["pose_refinement"]
    for k in ("psnr_masked", "ssim_masked", "temporal_stability"):
        assert abs(fitted[k] - ev[k]) < 1e-4, (k, fitted[k], ev[k])
