"""Robust pose prior: a VPoser-like VAE over Anny body poses (RAM-Avatar Sec. 3.3).

Sec. 3.3 first trains a VAE on a large mocap corpus to get a *robust pose encoder*; the
avatar-specific decoder (:mod:`ram_avatar.motion.mda`) is then trained on top of the frozen
encoder. The model follows VPoser (Pavlakos et al., CVPR 2019):

* input: the 18 anatomical joint-group rotations of a ``body_pose``
  (:func:`ram_avatar.motion.retarget.body_pose_to_groups`), each as the continuous 6D
  representation (first two matrix columns; Zhou et al. 2019): (B, 108);
* encoder: MLP (LeakyReLU, dropout) -> Gaussian ``q(z | pose)``, ``mu, logvar`` (B, D),
  D = 32 by default;
* decoder: MLP -> 6D -> Gram-Schmidt -> (B, 18, 3, 3) group rotations -> ``body_pose``;
* loss: ``w_rot * |R - R_hat|_F^2 + w_pos * |FK(R) - FK(R_hat)|^2 + w_kl * KL(q || N(0, I))``,
  FK being a light forward kinematics of the 18 group joints and segment tips on Anny's
  reference skeleton (metres, pelvis-relative), so errors at the hips count more than at the
  wrists as they move more of the body; left-right mirroring doubles the data.

The shipped prior (``ram_avatar/assets/motion_prior/``) was trained on the
Bandai-Namco-Research-Motiondataset (CC BY-NC 4.0: non-commercial use only, see its JSON);
:func:`train_prior` retrains from any BVH / AMASS files.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ram_avatar.errors import CheckpointError
from ram_avatar.motion.retarget import (GROUP_MIRROR, GROUP_NAMES, GROUP_PARENTS, NUM_GROUPS,
                                        _rotvec_to_rotmat, anny_reference, body_pose_to_groups,
                                        groups_to_body_pose)
from ram_avatar.utils import atomic_path, atomic_write_text, progress

log = logging.getLogger(__name__)

PRIOR_FORMAT = "ram-avatar-motion-prior"
PRIOR_VERSION = 1
WEIGHTS = "prior.safetensors"
META = "prior.json"
#: the prior shipped with the package
DEFAULT_PRIOR_DIR = Path(__file__).resolve().parent.parent / "assets" / "motion_prior"
FEATURES = NUM_GROUPS * 6


# ----------------------------------------------------------------------------------------------
# representations

def rotmat_to_6d(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 6): the first two columns, concatenated."""
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def sixd_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3) by Gram-Schmidt (Zhou et al. 2019)."""
    a, b = x[..., :3], x[..., 3:]
    c0 = nn.functional.normalize(a, dim=-1)
    c1 = nn.functional.normalize(b - (c0 * b).sum(-1, keepdim=True) * c0, dim=-1)
    c2 = torch.cross(c0, c1, dim=-1)
    return torch.stack([c0, c1, c2], dim=-1)


def geodesic_deg(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """Rotation angle of R1^T R2 in degrees, (..., 3, 3) -> (...)."""
    tr = (R1.transpose(-1, -2) @ R2).diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.rad2deg(torch.acos(((tr - 1) / 2).clamp(-1.0, 1.0)))


_MIRROR_S = torch.diag(torch.tensor([-1.0, 1.0, 1.0]))  # Anny's left axis is +x


def mirror_groups(R: torch.Tensor) -> torch.Tensor:
    """Left-right mirror of group rotations (..., 18, 3, 3): swap sides, ``S R S``."""
    S = _MIRROR_S.to(R)
    return (S @ R @ S)[..., GROUP_MIRROR, :, :]


class GroupFK(nn.Module):
    """Forward kinematics of the 18 group joints + segment tips on a fixed reference skeleton.

    Buffers ``offsets`` (18, 3) and ``tips`` (18, 3), metres (see
    :meth:`~ram_avatar.motion.retarget.AnnyReference.group_offsets`).
    """

    def __init__(self, offsets: torch.Tensor | None = None, tips: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("offsets", torch.zeros(NUM_GROUPS, 3) if offsets is None else offsets.float())
        self.register_buffer("tips", torch.zeros(NUM_GROUPS, 3) if tips is None else tips.float())

    def forward(self, R: torch.Tensor) -> torch.Tensor:
        """Group rotations relative to parents (B, 18, 3, 3) -> points (B, 36, 3), metres,
        pelvis-relative: the 18 group start joints then the 18 segment tips."""
        G: list[torch.Tensor] = []
        P: list[torch.Tensor] = []
        B = R.shape[0]
        eye = torch.eye(3, device=R.device, dtype=R.dtype).expand(B, 3, 3)
        zero = R.new_zeros(B, 3)
        for g in range(NUM_GROUPS):
            p = GROUP_PARENTS[g]
            Gp, Pp = (eye, zero) if p < 0 else (G[p], P[p])
            P.append(Pp + torch.einsum("bij,j->bi", Gp, self.offsets[g]))
            G.append(Gp @ R[:, g])
        starts = torch.stack(P, 1)
        tips = starts + torch.einsum("bgij,gj->bgi", torch.stack(G, 1), self.tips)
        return torch.cat([starts, tips], 1)


# ----------------------------------------------------------------------------------------------
# model

@dataclass
class PriorConfig:
    """Architecture and training settings of the pose VAE (saved in ``prior.json``).

    Attributes:
        latent_dim, hidden, layers, dropout: VAE size (encoder and decoder MLPs).
        w_rot, w_pos, w_kl, kl_warmup_steps: loss weights (rotation Frobenius, FK points in
            m^2, KL ramped up over the warm-up).
        lr, weight_decay, batch_size, steps, minutes: optimisation (AdamW, cosine decay; stops
            at whichever of steps / minutes comes first).
        mirror: left-right mirroring augmentation.
        jitter_deg: per-group rotation noise added to training poses (input and target),
            widening the modelled set around the mocap manifold so that noisier captured poses
            still encode well.
        holdout_every: every n-th clip is held out for the reported reconstruction error.
        max_fps: clips are subsampled to at most this frame rate.
        seed: random seed.
    """

    latent_dim: int = 32
    hidden: int = 512
    layers: int = 2
    dropout: float = 0.1
    w_rot: float = 1.0
    w_pos: float = 50.0
    w_kl: float = 1e-3
    kl_warmup_steps: int = 2000
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 256
    steps: int = 30000
    minutes: float | None = None
    mirror: bool = True
    jitter_deg: float = 8.0
    holdout_every: int = 10
    max_fps: float = 30.0
    seed: int = 0


def _mlp(n_in: int, hidden: int, layers: int, n_out: int, dropout: float) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = n_in
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.LeakyReLU(0.2), nn.Dropout(dropout)]
        d = hidden
    mods.append(nn.Linear(d, n_out))
    return nn.Sequential(*mods)


class PosePrior(nn.Module):
    """VPoser-like VAE over Anny body poses (Sec. 3.3 "robust pose encoder").

    Args:
        config: :class:`PriorConfig`.
        fk: :class:`GroupFK` for the position loss and metrics.
    """

    def __init__(self, config: PriorConfig | None = None, fk: GroupFK | None = None):
        super().__init__()
        self.config = config or PriorConfig()
        c = self.config
        self.encoder_net = _mlp(FEATURES, c.hidden, c.layers, 2 * c.latent_dim, c.dropout)
        self.decoder_net = _mlp(c.latent_dim, c.hidden, c.layers, FEATURES, c.dropout)
        self.fk = fk or GroupFK()

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def encode_groups(self, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Group rotations (B, 18, 3, 3) -> (mu, logvar), each (B, D)."""
        h = self.encoder_net(rotmat_to_6d(R).flatten(1))
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar.clamp(-10, 5)

    def decode_groups(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, D) -> group rotations (B, 18, 3, 3)."""
        return sixd_to_rotmat(self.decoder_net(z).view(-1, NUM_GROUPS, 6))

    def encode(self, body_pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``body_pose`` (B, 35, 3) axis-angle -> (mu, logvar) (B, D)."""
        return self.encode_groups(body_pose_to_groups(body_pose))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, D) -> ``body_pose`` (B, 35, 3) axis-angle (rotation on the anatomical bone
        of each group, :data:`~ram_avatar.motion.retarget.ANNY_GROUPS` weights)."""
        return groups_to_body_pose(self.decode_groups(z))

    def forward(self, R: torch.Tensor, sample: bool = True):
        """Reconstruct group rotations (B, 18, 3, 3); returns (R_hat, mu, logvar)."""
        mu, logvar = self.encode_groups(R)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        return self.decode_groups(z), mu, logvar

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` random poses from the prior, group rotations (n, 18, 3, 3)."""
        z = torch.randn(n, self.latent_dim, generator=generator).to(self.fk.offsets.device)
        return self.decode_groups(z)


def prior_loss(model: PosePrior, R: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, dict]:
    """VAE loss on a batch of group rotations (B, 18, 3, 3) (module docstring)."""
    c = model.config
    R_hat, mu, logvar = model(R)
    rot = ((R_hat - R) ** 2).sum((-1, -2)).mean()
    with torch.no_grad():
        target = model.fk(R)
    pos = ((model.fk(R_hat) - target) ** 2).sum(-1).mean()
    kl = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(-1)).mean()
    loss = c.w_rot * rot + c.w_pos * pos + kl_weight * kl
    return loss, {"rot": float(rot.detach()), "pos_m2": float(pos.detach()), "kl": float(kl.detach())}


@torch.no_grad()
def reconstruction_error(model: PosePrior, R: torch.Tensor, chunk: int = 4096) -> dict:
    """Deterministic (z = mu) reconstruction error of group rotations (N, 18, 3, 3).

    Returns:
        ``angle_deg`` mean geodesic error over joints and frames, ``angle_p95_deg``,
        ``position_mm`` mean FK point error (pelvis-relative), ``n``.
    """
    was = model.training
    model.eval()
    angs, poss = [], []
    for s in range(0, R.shape[0], chunk):
        r = R[s:s + chunk]
        r_hat = model.decode_groups(model.encode_groups(r)[0])
        angs.append(geodesic_deg(r, r_hat))
        poss.append((model.fk(r_hat) - model.fk(r)).norm(dim=-1) * 1000)
    model.train(was)
    a, p = torch.cat(angs), torch.cat(poss)
    return {"angle_deg": float(a.mean()), "angle_p95_deg": float(a.flatten().quantile(0.95)) if a.numel() < 16_000_000 else float("nan"),
            "position_mm": float(p.mean()), "n": int(R.shape[0])}


# ----------------------------------------------------------------------------------------------
# data

def find_mocap_files(paths) -> list[Path]:
    """Expand files / directories (recursive) into sorted ``.bvh`` and ``.npz`` files.

    Raises:
        MocapFormatError: a path does not exist or no mocap file was found.
    """
    from ram_avatar.motion.bvh import MocapFormatError
    out: list[Path] = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in (".bvh", ".npz"))
        elif p.is_file():
            out.append(p)
        else:
            raise MocapFormatError(f"mocap path {p} does not exist")
    if not out:
        raise MocapFormatError(f"no .bvh or .npz mocap files under {paths}")
    return out


@dataclass
class MocapCorpus:
    """Retargeted poses of many clips.

    Attributes:
        groups: (N, 18, 3, 3) float32 group rotations of all frames.
        clip_index: (N,) int clip id per frame.
        clips: clip names (file names).
        sources: dataset name -> {"clips": n, "frames": n}.
    """

    groups: torch.Tensor
    clip_index: np.ndarray
    clips: list[str]
    sources: dict = field(default_factory=dict)


def _dataset_name(path: Path) -> str:
    for part in reversed(path.parts[:-1]):
        if part not in ("data", "dataset", "bvh", "npz"):
            return part
    return path.parent.name


def load_mocap_corpus(paths, max_fps: float = 30.0, calibration_clips: int = 60) -> MocapCorpus:
    """Read and retarget every BVH / AMASS clip under ``paths``.

    BVH clips are calibrated per skeleton family (pooled over up to ``calibration_clips``
    clips); AMASS npz files use the static SMPL calibration. Clips are subsampled to at most
    ``max_fps``.
    """
    from ram_avatar.motion.amass import retarget_amass
    from ram_avatar.motion.bvh import MocapFormatError, read_bvh
    from ram_avatar.motion.retarget import calibrate, detect_skeleton, retarget_bvh

    files = find_mocap_files(paths)
    bvh = [f for f in files if f.suffix.lower() == ".bvh"]
    npz = [f for f in files if f.suffix.lower() == ".npz"]
    cals = {}
    if bvh:
        fams: dict[str, list[Path]] = {}
        for f in bvh:
            m = read_bvh(f, max_frames=1)
            fams.setdefault(detect_skeleton(m.names).name, []).append(f)
        for fam, fs in fams.items():
            pick = fs[:: max(1, len(fs) // calibration_clips)][:calibration_clips]
            cals[fam] = calibrate([read_bvh(f) for f in pick])
            log.info("calibrated %s skeleton on %d clips", fam, len(pick))
    all_groups, clip_index, clips, sources = [], [], [], {}
    with progress() as bar:
        task = bar.add_task("retarget mocap", total=len(files), info="")
        for f in files:
            try:
                if f.suffix.lower() == ".bvh":
                    m = read_bvh(f)
                    step = max(1, int(round(m.fps / max_fps)))
                    m = m.subsample(step) if step > 1 else m
                    res = retarget_bvh(m, calibration=cals[detect_skeleton(m.names).name])
                else:
                    res = retarget_amass(f)
                    step = max(1, int(round(res.fps / max_fps)))
                    res.body_pose = res.body_pose[::step]
            except MocapFormatError as e:
                log.warning("skipping %s: %s", f, e)
                bar.advance(task)
                continue
            g = body_pose_to_groups(torch.from_numpy(res.body_pose).double()).float()
            all_groups.append(g)
            clip_index.append(np.full(g.shape[0], len(clips)))
            clips.append(f.name)
            ds = sources.setdefault(_dataset_name(f), {"clips": 0, "frames": 0})
            ds["clips"] += 1
            ds["frames"] += int(g.shape[0])
            bar.update(task, advance=1, info=f.name[:40])
    if not all_groups:
        raise MocapFormatError(f"no readable mocap clip under {paths}")
    return MocapCorpus(torch.cat(all_groups), np.concatenate(clip_index), clips, sources)


def merge_corpora(*corpora: MocapCorpus) -> MocapCorpus:
    """Concatenate corpora (e.g. loaded with different ``max_fps``), keeping clip ids unique."""
    groups, idx, clips, sources = [], [], [], {}
    for c in corpora:
        groups.append(c.groups)
        idx.append(c.clip_index + len(clips))
        clips += c.clips
        for k, v in c.sources.items():
            d = sources.setdefault(k, {"clips": 0, "frames": 0})
            d["clips"] += v["clips"]
            d["frames"] += v["frames"]
    return MocapCorpus(torch.cat(groups), np.concatenate(idx), clips, sources)


# ----------------------------------------------------------------------------------------------
# training, saving, loading

def _reference_fk() -> GroupFK:
    ref = anny_reference()
    return GroupFK(torch.from_numpy(ref.group_offsets()), torch.from_numpy(ref.group_tips()))


def train_prior(mocap_paths, out_dir: str | Path, steps: int | None = None,
                minutes: float | None = None, config: PriorConfig | None = None,
                device: str = "cpu", provenance: dict | None = None,
                corpus: MocapCorpus | None = None) -> dict:
    """Train the pose VAE on mocap files and write ``prior.safetensors`` + ``prior.json``.

    Args:
        mocap_paths: ``.bvh`` / AMASS ``.npz`` files or directories (searched recursively).
        out_dir: output directory (the shipped prior lives in ``DEFAULT_PRIOR_DIR``).
        steps: optimiser steps (default ``config.steps``).
        minutes: wall-clock budget; training stops at whichever of steps / minutes comes first.
        config: :class:`PriorConfig`.
        device: ``cpu`` / ``cuda`` / ``auto``.
        provenance: extra metadata merged into the JSON's ``data`` entry (licence, origin).
        corpus: pre-loaded :class:`MocapCorpus` (skips reading ``mocap_paths``).
    Returns:
        The metadata dict written to ``prior.json`` (includes held-out reconstruction errors).
    Raises:
        MocapFormatError: no readable mocap.
        TrainingDivergedError: non-finite loss.
    """
    from ram_avatar.errors import TrainingDivergedError
    from ram_avatar.utils import resolve_device

    cfg = config or PriorConfig()
    if steps is not None:
        cfg.steps = int(steps)
    if minutes is not None:
        cfg.minutes = float(minutes)
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    corpus = corpus or load_mocap_corpus(mocap_paths, max_fps=cfg.max_fps)
    n_clips = len(corpus.clips)
    held = set(range(cfg.holdout_every - 1, n_clips, cfg.holdout_every)) if cfg.holdout_every and n_clips >= 3 else set()
    is_val = np.isin(corpus.clip_index, sorted(held))
    X = corpus.groups[torch.from_numpy(~is_val)].to(dev)
    V = corpus.groups[torch.from_numpy(is_val)].to(dev)
    log.info("prior: %d training frames from %d clips, %d held-out frames from %d clips (%.0f s to load)",
             X.shape[0], n_clips - len(held), V.shape[0], len(held), time.time() - t0)
    model = PosePrior(cfg, _reference_fk()).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / max(cfg.steps, 1), 1.0))))
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    t_train = time.time()
    history = []
    step = 0
    with progress() as bar:
        task = bar.add_task("train prior", total=cfg.steps, info="")
        for step in range(1, cfg.steps + 1):
            idx = torch.randint(0, X.shape[0], (cfg.batch_size,), generator=gen).to(dev)
            R = X[idx]
            if cfg.mirror:
                flip = (torch.rand(cfg.batch_size, generator=gen) < 0.5).to(dev)
                R = torch.where(flip[:, None, None, None], mirror_groups(R), R)
            if cfg.jitter_deg > 0:  # widen the modelled set around the mocap manifold
                v = torch.randn(R.shape[:-2] + (3,), generator=gen).to(dev) * math.radians(cfg.jitter_deg) / math.sqrt(3)
                R = R @ _rotvec_to_rotmat(v)
            klw = cfg.w_kl * min(1.0, step / max(cfg.kl_warmup_steps, 1))
            loss, parts = prior_loss(model, R, klw)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(f"prior training diverged at step {step} (loss {float(loss)}); "
                                            "lower --lr or check the mocap data")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if step % 200 == 0 or step == 1:
                history.append({"step": step, "loss": float(loss.detach()), **parts})
                bar.update(task, completed=step, info=f"loss {float(loss.detach()):.4f} rot {parts['rot']:.4f} kl {parts['kl']:.1f}")
            if cfg.minutes is not None and time.time() - t_train > cfg.minutes * 60:
                log.info("prior: time budget reached at step %d", step)
                break
    model.eval()
    train_err = reconstruction_error(model, X[torch.randperm(X.shape[0], generator=gen)[:20000].to(dev)])
    val_err = reconstruction_error(model, V) if V.shape[0] else None
    meta = {
        "format": PRIOR_FORMAT, "version": PRIOR_VERSION,
        "model": "VPoser-like VAE over 18 Anny joint-group rotations (6D), RAM-Avatar Sec. 3.3",
        "groups": GROUP_NAMES,
        "config": asdict(cfg),
        "steps_done": step,
        "training_time_s": round(time.time() - t_train, 1),
        "trained_on": {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                       "device": str(dev), "host": platform.machine(), "torch": torch.__version__},
        "data": {"sources": corpus.sources, "clips": n_clips, "frames": int(corpus.groups.shape[0]),
                 "training_frames": int(X.shape[0]), "held_out_frames": int(V.shape[0]),
                 **(provenance or {})},
        "held_out_clips": [corpus.clips[i] for i in sorted(held)],
        "metrics": {"train_reconstruction": train_err, "held_out_reconstruction": val_err},
        "history": history[-50:],
    }
    save_prior(model, out_dir, meta)
    log.info("prior written to %s: held-out reconstruction %s", out_dir, val_err)
    return meta


def save_prior(model: PosePrior, out_dir: str | Path, meta: dict, half: bool = True) -> None:
    """Write ``prior.safetensors`` (float16 unless ``half=False``) and ``prior.json`` atomically."""
    from safetensors.torch import save_file
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.detach().half() if half and k.startswith(("encoder_net", "decoder_net")) else v.detach().float()).cpu().contiguous()
          for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(sd, str(tmp), metadata={"format": PRIOR_FORMAT, "version": str(PRIOR_VERSION)})
    atomic_write_text(out / META, json.dumps(meta, indent=1))


def load_prior(path: str | Path | None = None, device: str | torch.device = "cpu") -> PosePrior:
    """Load a trained pose prior (default: the one shipped in ``ram_avatar/assets/motion_prior``).

    Args:
        path: directory with ``prior.safetensors`` + ``prior.json`` (or either file).
        device: torch device.
    Returns:
        :class:`PosePrior` in eval mode, float32, frozen; ``.meta`` holds the JSON.
    Raises:
        CheckpointError: files missing, wrong format/version or mismatching weights.
    """
    from safetensors.torch import load_file
    p = Path(path) if path is not None else DEFAULT_PRIOR_DIR
    d = p.parent if p.is_file() else p
    wpath, mpath = d / WEIGHTS, d / META
    if not wpath.is_file() or not mpath.is_file():
        raise CheckpointError(f"no motion prior in {d} (expected {WEIGHTS} and {META}); "
                              "train one with `ram-avatar train-prior --mocap PATH -o DIR`")
    try:
        meta = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{mpath} is not valid JSON: {e}") from e
    if meta.get("format") != PRIOR_FORMAT or meta.get("version") != PRIOR_VERSION:
        raise CheckpointError(f"{mpath}: not a version-{PRIOR_VERSION} {PRIOR_FORMAT} file "
                              f"(format {meta.get('format')!r}, version {meta.get('version')!r})")
    known = PriorConfig.__dataclass_fields__
    cfg = PriorConfig(**{k: v for k, v in meta.get("config", {}).items() if k in known})
    model = PosePrior(cfg)
    try:
        sd = {k: v.float() for k, v in load_file(str(wpath)).items()}
        model.load_state_dict(sd)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{wpath} does not match the prior architecture in {mpath}: {e}") from e
    model.eval().requires_grad_(False)
    model.meta = meta
    return model.to(device)


def default_prior_available() -> bool:
    """True when the package ships a trained prior."""
    return (DEFAULT_PRIOR_DIR / WEIGHTS).is_file() and (DEFAULT_PRIOR_DIR / META).is_file()


__all__ = ["PosePrior", "PriorConfig", "GroupFK", "train_prior", "load_prior", "save_prior", "prior_loss",
           "load_mocap_corpus", "merge_corpora", "MocapCorpus", "reconstruction_error", "rotmat_to_6d", "sixd_to_rotmat",
           "geodesic_deg", "mirror_groups", "find_mocap_files"]
