"""Fit a body model to per-frame 2D keypoints of a monocular video (RAM-Avatar Sec. 3.1, 4.1).

Energy (SMPLify-X style, Pavlakos et al. 2019, minimised with Adam, batched over all frames):

    E = sum_t sum_k c_tk * rho(||Pi(K, X_tk(theta_t, beta, R_t, t_t)) - x_tk|| / h_t)   reprojection
      + w_pose * ||theta||^2  + w_hand * ||theta_hand||^2                           pose prior
      + w_limit * sum relu(|angle| - limit)^2 + w_hinge * (knee hinge violations)   joint limits
      + w_beta * ||beta - beta_0||^2                                                shape prior
      + w_acc * sum_t ||X_{t+1} - 2 X_t + X_{t-1}||^2 + w_vel * ||theta_{t+1} - theta_t||^2  smoothness
      + w_depth * sum_t sum_b c_tb * (uz_tb(theta_t) - uz3d_tb)^2                   depth cue
      + E_sil (stage 4, when the person masks are given)                           silhouette

with rho the Geman-McClure robust function, x_tk the MediaPipe keypoints, c_tk their
confidences, h_t the person's bounding-box height in pixels, Pi the pinhole projection. One
``beta`` is shared by the whole video; global orientation R_t, translation t_t, body pose and
finger poses are per frame. Stages: (1) orientation + translation on the torso, (2) full body
and shape, (3) body + fingers, (4) with the person masks: body and shape again with the
silhouette term added (:class:`SilhouetteTargets`, :func:`silhouette_energy`): a symmetric
2D chamfer between the projected mesh and the mask, the distance-transform form of the
silhouette terms of Alldieck et al. 2018 ("Video Based Reconstruction of 3D People Models")
and of SMPLify's successors. Opt-in (``iters_silhouette``): on taiji, whose loose clothes the
body's shape cannot follow, 30 iterations raised the mesh-mask IoU only 0.825 -> 0.839.

The depth cue (:func:`bone_depths`) uses MediaPipe's 3D pose (``Keypoints2D.pose_world``,
camera-aligned axes): for each bone b of :data:`DEPTH_BONES` (torso, upper arms, forearms,
thighs, shins), ``uz`` is the camera-axis component of the unit bone vector and ``c_tb`` the
lowest confidence of its landmarks. 2D keypoints leave each bone's sign of depth (towards or
away from the camera) open: on basketball the 2D-only fit leaned the forward-bending player
backwards. Frames without a 3D pose (captures made before it was kept) have no such term.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ram_avatar.body.base import BODY_LANDMARKS, HEAD_LANDMARKS, BodyModel, BodyParams
from ram_avatar.capture.keypoints import Keypoints2D
from ram_avatar.io.masks import PersonMasks
from ram_avatar.utils import progress

log = logging.getLogger(__name__)

TORSO = [11, 12, 23, 24]

#: the bones of the depth cue: (start, end) pose landmarks, a bone end at the mean of several;
#: the torso from the hips' midpoint to the shoulders', then upper arm and forearm, thigh and
#: shin, left then right
DEPTH_BONES = (((23, 24), (11, 12)),
               ((11,), (13,)), ((13,), (15,)), ((12,), (14,)), ((14,), (16,)),
               ((23,), (25,)), ((25,), (27,)), ((24,), (26,)), ((26,), (28,)))


def _bone_matrix() -> torch.Tensor:
    """(B, 33): pose landmarks (33, 3) -> each depth-cue bone's vector (end - start)."""
    D = torch.zeros(len(DEPTH_BONES), 33)
    for k, (a, b) in enumerate(DEPTH_BONES):
        D[k, list(b)] += 1.0 / len(b)
        D[k, list(a)] -= 1.0 / len(a)
    return D


BONE_MATRIX = _bone_matrix()


def bone_depths(lm: torch.Tensor) -> torch.Tensor:
    """Camera-axis component of each :data:`DEPTH_BONES` bone's unit vector.

    Args:
        lm: (..., 33, 3) pose landmarks, camera frame (metres; or MediaPipe's 3D pose).
    Returns:
        (..., B) in [-1, 1]; > 0 where the bone points away from the camera.
    """
    u = torch.einsum("bl,...la->...ba", BONE_MATRIX.to(lm), lm)
    return u[..., 2] / u.norm(dim=-1).clamp(min=1e-6)


def bone_confidence(c: torch.Tensor) -> torch.Tensor:
    """(..., 33) landmark confidences -> (..., B): each :data:`DEPTH_BONES` bone's lowest."""
    return torch.stack([c[..., list(a + b)].amin(-1) for a, b in DEPTH_BONES], -1)


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
    w_depth: float = 1.0           # depth cue from MediaPipe's 3D pose (module docstring)
    body_angle_limit: float = 2.2  # radians, per joint
    hand_angle_limit: float = 1.6
    # stage 4, silhouette (only when fit_sequence gets the person masks; off by default: on
    # taiji 30 iterations raised the mask IoU 0.825 -> 0.839 for 3 more minutes of capture)
    iters_silhouette: int = 0
    lr_silhouette: float = 0.01
    w_sil_out: float = 4.0         # mesh outside the mask (per frame, mean over vertices)
    w_sil_in: float = 4.0          # mask contour away from the mesh (mean over contour points)
    sil_sigma: float = 0.03        # Geman-McClure scale, fraction of bbox height
    sil_max_side: int = 480        # the masks' distance fields are computed at this size
    sil_points: int = 256          # contour points per frame
    sil_vertex_stride: int = 4     # every n-th vertex is a candidate for the contour matches

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
        # the depth cue's targets and confidences (0 in frames without a 3D pose)
        self.cue_t = bone_depths(f(kp.pose_world))                             # (T,B)
        self.cue_c = bone_confidence(self.pose_c) * f(kp.has_world)[:, None]   # (T,B)
        self.T = T


class SilhouetteTargets:
    """The person masks prepared for the silhouette term of the fit (stage 4).

    Per frame, at a reduced size (long side ``max_side`` pixels):
    - ``dist_out`` (T, 1, h, w): distance (full-resolution pixels) from each pixel to the
      nearest mask pixel, 0 inside the mask (``cv2.distanceTransform``). Sampled at the
      projected vertices it measures how far the mesh sticks out of the person.
    - ``contour`` (T, N, 2): up to N points evenly spaced along the mask's outer contours
      (``cv2.findContours``), full-resolution pixels; ``contour_w`` (T, N) is 1 for a real
      point, 0 for padding. Their distance to the nearest projected vertex measures how far the
      person reaches beyond the mesh.

    Frames whose mask is empty, or whose keypoint pose is not valid, get zero weight
    (``frame_w``). With lens distortion the masks are undistorted first (``cv2.undistort``),
    as the keypoints are.

    Args:
        masks: (T, H, W) uint8 person masks 0..255 (capture's Holistic segmentation).
        K: (3, 3) intrinsics, pixels. dist: OpenCV distortion coefficients or None.
        valid: (T,) bool, frames with a tracked pose.
        max_side: long side of the distance fields, pixels.
        points: N, contour points per frame.
        device: torch device.
    Raises:
        ValueError: masks not (T, H, W), or valid of another length.
    """

    def __init__(self, masks: np.ndarray, K: np.ndarray, dist: np.ndarray | None,
                 valid: np.ndarray, max_side: int = 480, points: int = 256, device="cpu"):
        import cv2

        masks = masks if isinstance(masks, PersonMasks) else np.asarray(masks)
        if masks.ndim != 3:
            raise ValueError(f"masks must be (T, H, W), got shape {masks.shape}")
        T, H, W = masks.shape
        if len(valid) != T:
            raise ValueError(f"valid has {len(valid)} frames, masks {T}")
        s = min(1.0, max_side / max(H, W))
        w, h = max(1, round(W * s)), max(1, round(H * s))
        sx, sy = w / W, h / H
        K = np.asarray(K, dtype=np.float64)
        undistort = dist is not None and np.any(np.asarray(dist) != 0)
        dist_out = np.zeros((T, 1, h, w), np.float32)
        contour = np.zeros((T, points, 2), np.float32)
        contour_w = np.zeros((T, points), np.float32)
        frame_w = np.zeros(T, np.float32)
        for t in range(T):
            m = masks[t]
            if undistort:
                m = cv2.undistort(m, K, np.asarray(dist, np.float64))
            small = (cv2.resize(m, (w, h), interpolation=cv2.INTER_AREA) > 127).astype(np.uint8)
            if not valid[t] or small.sum() < 16:
                continue
            # distance from the pixel centre to the mask's edge (half a pixel nearer than to
            # the nearest mask pixel's centre), in full-resolution pixels
            d = cv2.distanceTransform(1 - small, cv2.DIST_L2, 5)
            dist_out[t, 0] = np.maximum(d - 0.5, 0.0) / s
            cs, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            c = np.concatenate([x[:, 0] for x in cs]).astype(np.float32)
            pick = np.linspace(0, len(c), min(points, len(c)), endpoint=False).astype(int)
            c = c[pick]
            # pixel (x, y) covers [x, x+1) x [y, y+1) (the rasterizer's and MediaPipe's convention)
            contour[t, :len(c)] = np.stack([(c[:, 0] + 0.5) / sx, (c[:, 1] + 0.5) / sy], -1)
            contour_w[t, :len(c)] = 1.0
            frame_w[t] = 1.0
        f = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
        self.dist_out, self.contour, self.contour_w = f(dist_out), f(contour), f(contour_w)
        self.frame_w = f(frame_w)
        self.scale = (sx, sy)
        self.T = T

    def outside_distance(self, uv: torch.Tensor) -> torch.Tensor:
        """Distance (pixels) from projected points to the nearest mask pixel, bilinear.

        Args: uv: (T, P, 2) full-resolution pixel coordinates.
        Returns: (T, P); points beyond the image read the border's value (the mask cannot say
        what is outside the frame).
        """
        h, w = self.dist_out.shape[-2:]
        gx = uv[..., 0] * (self.scale[0] / w * 2) - 1
        gy = uv[..., 1] * (self.scale[1] / h * 2) - 1
        grid = torch.stack([gx, gy], -1)[:, :, None]                   # (T, P, 1, 2)
        return F.grid_sample(self.dist_out, grid, mode="bilinear", padding_mode="border",
                             align_corners=False)[:, 0, :, 0]


def silhouette_energy(verts: torch.Tensor, K: torch.Tensor, st: SilhouetteTargets,
                      h: torch.Tensor, cfg: FitConfig) -> dict[str, torch.Tensor]:
    """Silhouette term of stage 4: a robust symmetric chamfer between mesh and person mask.

    ``sil_out`` = w_out * sum_t mean_v rho(d_out(Pi(v))^2 / h_t^2): vertices that project
    outside the mask, by their distance to it (every vertex counts: the silhouette of the mesh
    is the union of its projected faces). ``sil_in`` = w_in * sum_t mean_c rho(min_v
    ||c - Pi(v)||^2 / h_t^2): contour points of the mask, by their distance to the nearest
    projected vertex (``sil_vertex_stride``-th vertices; the match is re-found every call,
    without gradient). rho is Geman-McClure at ``sil_sigma`` (a fraction of the bbox height),
    so loose clothes and segmentation spill far from the body pull with bounded force.

    Args:
        verts: (T, V, 3) camera-frame vertices, metres.
        K: (3, 3) intrinsics. st: SilhouetteTargets of the same T frames.
        h: (T,) bbox heights, pixels. cfg: FitConfig (weights, sigma, stride).
    Returns:
        dict ``sil_out``, ``sil_in`` -> scalar energies.
    """
    uv = project(verts, K)                                            # (T, V, 2)
    s2 = cfg.sil_sigma ** 2
    d_out = st.outside_distance(uv) ** 2 / h[:, None] ** 2
    e_out = (_gmof(d_out, cfg.sil_sigma).mean(1) * st.frame_w).sum() / s2
    if cfg.w_sil_in == 0:
        return {"sil_out": cfg.w_sil_out * e_out}
    cand = uv[:, ::max(1, cfg.sil_vertex_stride)]
    with torch.no_grad():
        idx = torch.cat([torch.cdist(st.contour[i:i + 16], cand[i:i + 16].detach()).argmin(-1)
                         for i in range(0, st.T, 16)])                 # (T, N)
    near = torch.gather(cand, 1, idx[..., None].expand(-1, -1, 2))
    d_in = ((near - st.contour) ** 2).sum(-1) / h[:, None] ** 2
    n = st.contour_w.sum(1).clamp(min=1)
    e_in = ((_gmof(d_in, cfg.sil_sigma) * st.contour_w).sum(1) / n * st.frame_w).sum() / s2
    return {"sil_out": cfg.w_sil_out * e_out, "sil_in": cfg.w_sil_in * e_in}


def silhouette_iou(body: BodyModel, params: BodyParams, masks: np.ndarray, K: np.ndarray,
                   frames, max_side: int = 480) -> np.ndarray:
    """IoU of the fitted mesh's silhouette with the person mask (> 127), per frame.

    Rasterised with :func:`ram_avatar.render.rasterizer.rasterize` at the masks' size scaled
    to ``max_side`` on the long side.

    Args:
        body, params: the fitted body and its T-frame parameters.
        masks: (T, H, W) uint8. K: (3, 3) intrinsics of the full-size frames.
        frames: indices of the frames to measure.
    Returns:
        (len(frames),) IoU in [0, 1] (NaN where both are empty).
    """
    import cv2

    from ram_avatar.render.rasterizer import rasterize

    T, H, W = masks.shape
    s = min(1.0, max_side / max(H, W))
    w, h = max(1, round(W * s)), max(1, round(H * s))
    Ks = torch.as_tensor(np.asarray(K), dtype=torch.float32).clone()
    Ks[0] *= w / W
    Ks[1] *= h / H
    frames = np.asarray(frames)
    out = np.full(len(frames), np.nan)
    faces = body.faces
    for a in range(0, len(frames), 16):
        fr = frames[a:a + 16]
        with torch.no_grad():
            v = body(params.index(torch.as_tensor(fr))).vertices
        mesh = (rasterize(v, faces, Ks, (h, w)).face_id >= 0).cpu().numpy()
        for j, t in enumerate(fr):
            m = cv2.resize(masks[t], (w, h), interpolation=cv2.INTER_AREA) > 127
            u = (mesh[j] | m).sum()
            if u:
                out[a + j] = (mesh[j] & m).sum() / u
    return out


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
                 init: BodyParams | None = None, show_progress: bool = True,
                 masks: np.ndarray | None = None, dist: np.ndarray | None = None) -> BodyParams:
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
        masks: optional (T, H, W) uint8 person masks of the same frames: adds stage 4, the
            silhouette term (``config.iters_silhouette`` iterations; 0 skips it).
        dist: the camera's distortion coefficients (the masks are undistorted with them).
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
        # the silhouette stage needs the skinned mesh; the others only the landmarks
        out = body(q, return_vertices=stage == "silhouette")
        h = tg.h[:, None]
        r2 = ((project(out.pose_landmarks, K) - tg.pose_xy) ** 2).sum(-1) / h ** 2
        c = tg.pose_c * (torso_only if stage == "global" else 1.0)
        e_pose = (c * _gmof(r2, cfg.sigma)).sum() / cfg.sigma ** 2
        terms = {"pose2d": e_pose}
        if stage in ("hands", "silhouette"):
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
            if cfg.w_depth > 0:
                dz = bone_depths(out.pose_landmarks) - tg.cue_t
                terms["depth"] = cfg.w_depth * (tg.cue_c * dz * dz).sum()
            if tg.T > 2:
                X = torch.cat([out.pose_landmarks, out.hand_landmarks.flatten(1, 2)], 1)
                acc = X[2:] - 2 * X[1:-1] + X[:-2]
                terms["acc"] = cfg.w_acc * (acc ** 2).sum() * 100.0
                terms["vel"] = cfg.w_vel * ((bp[1:] - bp[:-1]) ** 2).sum()
        elif tg.T > 2:
            tr = q.transl
            terms["acc"] = cfg.w_acc * ((tr[2:] - 2 * tr[1:-1] + tr[:-2]) ** 2).sum() * 100.0
        if stage == "silhouette":
            terms.update(silhouette_energy(out.vertices, K, sil, tg.h, cfg))
        return sum(terms.values()), terms

    stages = []
    if init is None:
        stages.append(("global", cfg.iters_global, ["global_orient", "transl"]))
    stages.append(("body", cfg.iters_body, ["global_orient", "transl", "body_pose", "betas"]))
    stages.append(("hands", cfg.iters_hands, ["global_orient", "transl", "body_pose", "betas",
                                              "left_hand_pose", "right_hand_pose"]))
    sil = None
    if masks is not None and cfg.iters_silhouette > 0:
        if len(masks) != kp.num_frames:
            raise ValueError(f"masks have {len(masks)} frames, keypoints {kp.num_frames}")
        sil = SilhouetteTargets(masks, K.cpu().numpy(), dist, kp.pose_valid, cfg.sil_max_side,
                                cfg.sil_points, device)
        stages.append(("silhouette", cfg.iters_silhouette,
                       ["global_orient", "transl", "body_pose", "betas"]))
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
            lr = cfg.lr_silhouette if stage == "silhouette" else cfg.lr
            opt = torch.optim.Adam([leaves[n] for n in names], lr=lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters, eta_min=lr * 0.1)
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
