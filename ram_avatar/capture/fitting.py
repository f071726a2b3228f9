"""Fit a body model to per-frame 2D keypoints of a monocular video (RAM-Avatar Sec. 3.1, 4.1).

Energy (SMPLify-X style, Pavlakos et al. 2019, minimised with Adam, batched over all frames):

    E = sum_t sum_k c_tk * rho(||Pi(K, X_tk(theta_t, beta, R_t, t_t)) - x_tk|| / h_t)   reprojection
      + w_pose * ||theta||^2  + w_hand * ||theta_hand||^2                           pose prior
      + w_limit * sum relu(|angle| - limit)^2 + w_hinge * (knee hinge violations)   joint limits
      + w_beta * ||beta - beta_0||^2                                                shape prior
      + w_acc * sum_t ||X_{t+1} - 2 X_t + X_{t-1}||^2 + w_vel * ||theta_{t+1} - theta_t||^2  smoothness

with rho the Geman-McClure robust function, x_tk the MediaPipe keypoints, c_tk their
confidences, h_t the person's bounding-box height in pixels, Pi the pinhole projection. One
``beta`` is shared by the whole video; global orientation R_t, translation t_t, body pose and
finger poses are per frame. Stages: (1) orientation + translation on the torso, (2) full body
and shape, (3) body + fingers.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ram_avatar.body.base import BODY_LANDMARKS, HEAD_LANDMARKS, BodyModel, BodyParams
from ram_avatar.capture.keypoints import Keypoints2D
from ram_avatar.utils import progress

log = logging.getLogger(__name__)

TORSO = [11, 12, 23, 24]


@dataclass
class FitConfig:
    """Weights and schedule of the body fit (see module docstring)."""

    iters_global: int = 40
    iters_body: int = 150
    iters_hands: int = 80
    lr: float = 0.03
    sigma: float = 0.05            # Geman-McClure scale, fraction of bbox height
    min_visibility: float = 0.3    # pose landmarks below this visibility are ignored
    w_head: float = 0.5
    w_hand: float = 0.3
    w_pose_prior: float = 2e-3
    w_hand_prior: float = 2e-3
    w_limit: float = 1.0
    w_beta: float = 1e-2
    w_acc: float = 0.002
    w_vel: float = 2e-2
    body_angle_limit: float = 2.2  # radians, per joint
    hand_angle_limit: float = 1.6

    def to_dict(self) -> dict:
        return asdict(self)


def project(points: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Pinhole projection of camera-frame points.

    Args:
        points: (..., 3) OpenCV camera coordinates, metres (z > 0 in front).
        K: (3, 3) intrinsics in pixels.
    Returns:
        (..., 2) pixel coordinates (u = fx X/Z + cx).
    """
    z = points[..., 2:3].clamp(min=1e-3)
    uv = points[..., :2] / z
    return uv * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])


def bbox_heights(kp: Keypoints2D, min_visibility: float = 0.3) -> np.ndarray:
    """Per-frame height (pixels) of the visible pose keypoints' bounding box, (T,).

    Frames without a valid pose get the median height of the others (or 1.0 if none).
    """
    pose = kp.pose
    vis = (pose[..., 2] > min_visibility) & kp.pose_valid[:, None]
    h = np.zeros(len(pose))
    for t in range(len(pose)):
        if vis[t].sum() >= 2:
            y = pose[t, vis[t], 1]
            h[t] = y.max() - y.min()
    good = h > 1
    fill = float(np.median(h[good])) if good.any() else 1.0
    h[~good] = fill
    return h


def _gmof(r2: torch.Tensor, sigma: float) -> torch.Tensor:
    """Geman-McClure robust penalty of squared residuals r2 (scale sigma)."""
    s2 = sigma * sigma
    return s2 * r2 / (r2 + s2)


class _Targets:
    """Keypoint targets, confidences and normalisers as tensors on the fitting device."""

    def __init__(self, kp: Keypoints2D, body: BodyModel, cfg: FitConfig, device):
        T = kp.num_frames
        f = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
        self.h = f(bbox_heights(kp, cfg.min_visibility))                       # (T,)
        pose = kp.pose
        vis = pose[..., 2] * (pose[..., 2] > cfg.min_visibility) * kp.pose_valid[:, None]
        w = np.zeros(33)
        w[BODY_LANDMARKS] = 1.0
        w[HEAD_LANDMARKS] = cfg.w_head
        w = w * body.pose_landmark_mask.cpu().numpy()
        self.pose_xy = f(pose[..., :2])
        self.pose_c = f(vis * w[None])                                         # (T,33)
        hands = np.stack([kp.left_hand, kp.right_hand], 1)                     # (T,2,21,3)
        hvalid = np.stack([kp.left_hand_valid, kp.right_hand_valid], 1)        # (T,2)
        self.hand_xy = f(hands[..., :2])
        self.hand_c = f(hands[..., 2] * hvalid[..., None] * cfg.w_hand)        # (T,2,21)
        self.T = T


def _init_params(body: BodyModel, kp: Keypoints2D, K: torch.Tensor, device) -> BodyParams:
    """Initial per-frame orientation (facing or back to the camera) and translation.

    Depth from the torso's pixel length against the rest model's torso length; x/y by
    back-projecting the hip centre.
    """
    T = kp.num_frames
    p = body.zero_params(T, device=device)
    p.betas = p.betas[:1].clone()
    with torch.no_grad():
        rest = body(body.zero_params(1, device=device), return_vertices=False).pose_landmarks[0]
    mid = lambda a, i, j: 0.5 * (a[..., i, :] + a[..., j, :])  # noqa: E731
    torso_m = float(torch.linalg.norm(mid(rest, 11, 12) - mid(rest, 23, 24)))
    pose = torch.as_tensor(kp.pose, dtype=torch.float32, device=device)
    torso_px = torch.linalg.norm(mid(pose[..., :2], 11, 12) - mid(pose[..., :2], 23, 24), dim=-1)
    valid = torch.as_tensor(kp.pose_valid, device=device) & (torso_px > 5)
    med = torso_px[valid].median() if valid.any() else torch.tensor(200.0, device=device)
    torso_px = torch.where(valid, torso_px, med)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    z = fx * torso_m / torso_px
    hip = mid(pose[..., :2], 23, 24)
    hip = torch.where(valid[:, None], hip, hip[valid].median(0).values if valid.any() else
                      torch.stack([cx, cy]).expand_as(hip))
    rest_hip = mid(rest, 23, 24)  # model hip centre relative to the root (upright orientation)
    p.transl = torch.stack([(hip[:, 0] - cx) * z / fx, (hip[:, 1] - cy) * z / fy, z], -1)
    p.transl = p.transl - (rest_hip - body.zero_params(1, device=device).transl[0])[None]
    # facing away when the subject's left shoulder is on the image's left
    back = (pose[:, 11, 0] < pose[:, 12, 0]) & valid
    import roma

    R0 = roma.rotvec_to_rotmat(body.upright_orient.to(device))
    flip = roma.rotvec_to_rotmat(torch.tensor([0.0, np.pi, 0.0], device=device))
    R = torch.where(back[:, None, None], flip @ R0, R0.expand(T, 3, 3))
    p.global_orient = roma.rotmat_to_rotvec(R)
    return p


def _hinge_penalty(body: BodyModel, body_pose: torch.Tensor) -> torch.Tensor:
    """Knees bend one way only: flexion is +x in both backends' rest axes (see body docs)."""
    idx = getattr(body, "knee_joints", None)
    if not idx:
        return body_pose.new_zeros(())
    knees = body_pose[:, idx]                       # (T, 2, 3)
    return (torch.relu(-knees[..., 0]) ** 2).sum() + (knees[..., 1:] ** 2).sum()


def reprojection_errors(body: BodyModel, params: BodyParams, kp: Keypoints2D, K: torch.Tensor,
                        min_visibility: float = 0.5) -> dict[str, np.ndarray]:
    """Per-frame median reprojection error per landmark group, as a fraction of bbox height.

    Args:
        body, params: fitted body and its (T-frame) parameters.
        kp: the keypoints the body was fitted to.
        K: (3, 3) intrinsics.
        min_visibility: pose landmarks below this visibility are not measured.
    Returns:
        dict ``body``, ``hands``, ``face`` -> (T,) arrays; NaN where nothing was measurable.
        ``face`` measures the head landmarks (nose, eyes, ears).
    """
    device = K.device
    with torch.no_grad():
        out = body(params.to(device), return_vertices=False)
        pose2d = project(out.pose_landmarks, K).cpu().numpy()
        hand2d = project(out.hand_landmarks, K).cpu().numpy()
    h = bbox_heights(kp)
    res = {}
    mask = body.pose_landmark_mask.cpu().numpy()
    for name, idx in (("body", BODY_LANDMARKS), ("face", HEAD_LANDMARKS)):
        idx = [i for i in idx if mask[i]]
        err = np.linalg.norm(pose2d[:, idx] - kp.pose[:, idx, :2], axis=-1) / h[:, None]
        ok = (kp.pose[:, idx, 2] > min_visibility) & kp.pose_valid[:, None]
        res[name] = np.array([np.median(e[o]) if o.any() else np.nan for e, o in zip(err, ok)])
    hands = np.stack([kp.left_hand, kp.right_hand], 1)
    hv = np.stack([kp.left_hand_valid, kp.right_hand_valid], 1)
    err = np.linalg.norm(hand2d - hands[..., :2], axis=-1) / h[:, None, None]   # (T,2,21)
    res["hands"] = np.array([np.median(e[v]) if v.any() else np.nan for e, v in zip(err, hv)])
    return res


def fit_sequence(body: BodyModel, kp: Keypoints2D, K: np.ndarray | torch.Tensor,
                 config: FitConfig | None = None, device="cpu",
                 init: BodyParams | None = None, show_progress: bool = True) -> BodyParams:
    """Fit ``body`` to a whole sequence of 2D keypoints, batched over frames.

    Args:
        body: body model backend (on ``device``).
        kp: Keypoints2D of T frames (pixels).
        K: (3, 3) camera intrinsics, pixels.
        config: FitConfig (defaults if None).
        device: torch device for the optimisation (CPU or CUDA).
        init: optional initial parameters (e.g. the previous frame's fit at runtime); when
            given, the global stage is skipped.
        show_progress: show a rich progress bar.
    Returns:
        BodyParams with ``betas`` (1, n_betas) and per-frame fields of batch T, on CPU.
    Raises:
        ValueError: K is not 3x3 or kp is empty.
    """
    cfg = config or FitConfig()
    device = torch.device(device)
    K = torch.as_tensor(np.asarray(K), dtype=torch.float32, device=device)
    if K.shape != (3, 3):
        raise ValueError(f"K must be 3x3, got {tuple(K.shape)}")
    if kp.num_frames == 0:
        raise ValueError("no frames to fit")
    tg = _Targets(kp, body, cfg, device)
    p = init.to(device) if init is not None else _init_params(body, kp, K, device)
    beta0 = body.default_betas.to(device)[None]
    is_anny = body.name == "anny"
    # Anny phenotypes live in [0, 1]: optimise their logits
    beta_free = torch.logit(p.betas.clamp(0.02, 0.98)) if is_anny else p.betas.clone()
    leaves = {
        "global_orient": p.global_orient.clone(), "transl": p.transl.clone(),
        "body_pose": p.body_pose.clone(), "left_hand_pose": p.left_hand_pose.clone(),
        "right_hand_pose": p.right_hand_pose.clone(), "betas": beta_free,
    }
    for v in leaves.values():
        v.requires_grad_(True)

    def params() -> BodyParams:
        betas = torch.sigmoid(leaves["betas"]) if is_anny else leaves["betas"]
        return BodyParams(betas=betas, global_orient=leaves["global_orient"],
                          body_pose=leaves["body_pose"], left_hand_pose=leaves["left_hand_pose"],
                          right_hand_pose=leaves["right_hand_pose"], jaw_pose=p.jaw_pose,
                          expression=p.expression, transl=leaves["transl"])

    torso_only = torch.zeros(33, device=device)
    torso_only[TORSO] = 1.0

    def energy(stage: str) -> tuple[torch.Tensor, dict]:
        q = params()
        out = body(q, return_vertices=False)
        h = tg.h[:, None]
        r2 = ((project(out.pose_landmarks, K) - tg.pose_xy) ** 2).sum(-1) / h ** 2
        c = tg.pose_c * (torso_only if stage == "global" else 1.0)
        e_pose = (c * _gmof(r2, cfg.sigma)).sum() / cfg.sigma ** 2
        terms = {"pose2d": e_pose}
        if stage == "hands":
            rh = ((project(out.hand_landmarks, K) - tg.hand_xy) ** 2).sum(-1) / h[..., None] ** 2
            terms["hand2d"] = (tg.hand_c * _gmof(rh, cfg.sigma)).sum() / cfg.sigma ** 2
            hp = torch.cat([q.left_hand_pose, q.right_hand_pose], 1)
            terms["hand_prior"] = cfg.w_hand_prior * (hp ** 2).sum()
            terms["hand_limit"] = cfg.w_limit * (torch.relu(hp.norm(dim=-1) - cfg.hand_angle_limit) ** 2).sum()
        if stage != "global":
            bp = q.body_pose
            terms["pose_prior"] = cfg.w_pose_prior * (bp ** 2).sum()
            terms["limit"] = cfg.w_limit * ((torch.relu(bp.norm(dim=-1) - cfg.body_angle_limit) ** 2).sum()
                                            + _hinge_penalty(body, bp))
            terms["beta"] = cfg.w_beta * ((q.betas - beta0) ** 2).sum() * tg.T
            if tg.T > 2:
                X = torch.cat([out.pose_landmarks, out.hand_landmarks.flatten(1, 2)], 1)
                acc = X[2:] - 2 * X[1:-1] + X[:-2]
                terms["acc"] = cfg.w_acc * (acc ** 2).sum() * 100.0
                terms["vel"] = cfg.w_vel * ((bp[1:] - bp[:-1]) ** 2).sum()
        elif tg.T > 2:
            tr = q.transl
            terms["acc"] = cfg.w_acc * ((tr[2:] - 2 * tr[1:-1] + tr[:-2]) ** 2).sum() * 100.0
        return sum(terms.values()), terms

    stages = []
    if init is None:
        stages.append(("global", cfg.iters_global, ["global_orient", "transl"]))
    stages.append(("body", cfg.iters_body, ["global_orient", "transl", "body_pose", "betas"]))
    stages.append(("hands", cfg.iters_hands, ["global_orient", "transl", "body_pose", "betas",
                                              "left_hand_pose", "right_hand_pose"]))
    stages = [s for s in stages if s[1] > 0]
    total = sum(s[1] for s in stages)
    # The fit is thousands of small tensor ops; on CPU intra-op threads only add
    # synchronisation (and stall badly when the cores are shared), so it runs single-threaded.
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        return _optimise(stages, total, leaves, energy, params, tg, cfg, show_progress)
    finally:
        torch.set_num_threads(threads)


def _optimise(stages, total, leaves, energy, params, tg, cfg, show_progress) -> BodyParams:
    """Run the Adam stages of :func:`fit_sequence` and return the fitted parameters on CPU."""
    with progress(disable=not show_progress) as bar:
        task = bar.add_task("fitting", total=total, info="")
        for stage, iters, names in stages:
            opt = torch.optim.Adam([leaves[n] for n in names], lr=cfg.lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters, eta_min=cfg.lr * 0.1)
            for it in range(iters):
                opt.zero_grad(set_to_none=True)
                loss, terms = energy(stage)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite fitting energy in stage {stage} iter {it}: "
                                             f"{ {k: float(v) for k, v in terms.items()} }")
                loss.backward()
                opt.step()
                sched.step()
                if it % 10 == 0 or it == iters - 1:
                    bar.update(task, info=f"{stage} E={float(loss.detach()) / tg.T:.4f}")
                bar.advance(task)
            log.debug("fit stage %s: %s", stage, {k: round(float(v.detach()) / tg.T, 5) for k, v in terms.items()})
    with torch.no_grad():
        q = params()
        return BodyParams(betas=q.betas.detach().cpu(), global_orient=q.global_orient.detach().cpu(),
                          body_pose=q.body_pose.detach().cpu(),
                          left_hand_pose=q.left_hand_pose.detach().cpu(),
                          right_hand_pose=q.right_hand_pose.detach().cpu(),
                          jaw_pose=q.jaw_pose.detach().cpu(), expression=q.expression.detach().cpu(),
                          transl=q.transl.detach().cpu())
