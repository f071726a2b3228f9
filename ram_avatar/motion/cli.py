"""Command-line verbs of Motion Distribution Alignment (RAM-Avatar Sec. 3.3).

``register(subparsers)`` adds to the ``ram-avatar`` parser:

* ``train-prior --mocap PATH... [-o DIR] [--minutes M] [--steps N]``: train the VPoser-like pose
  prior from BVH / AMASS npz files or folders;
* ``fit-mda SUBJECT_DIR [--minutes M] [--steps N] [--prior DIR] [--mode part|global]``: train the
  avatar-specific decoder on the subject's captured training poses (writes ``SUBJECT_DIR/mda/``;
  ``--mode`` is the filter's default in drive / live: ``part`` aligns only the body parts out of
  the subject's pose distribution, ``global`` every part);
* ``retarget MOCAP [-o OUT.npz] [--png STRIP.png]``: retarget one clip to Anny parameters and
  print its joint-direction / twist errors (a check for new mocap data).

Each sub-parser sets ``func``: the main CLI calls ``args.func(args)``, which returns an exit
status (0 on success). User errors raise :class:`~ram_avatar.errors.RamAvatarError`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")


def register(subparsers) -> None:
    """Add ``train-prior``, ``fit-mda`` and ``retarget`` to an argparse sub-parser set."""
    p = subparsers.add_parser(
        "train-prior", help="train the motion prior (VPoser-like VAE, Sec. 3.3) on mocap",
        description="Train the pose VAE of motion-distribution alignment on BVH (Bandai-Namco, CMU, "
                    "Mixamo skeletons) and/or AMASS SMPL-H/SMPL-X npz files. Mind the licence of "
                    "your mocap: the trained prior inherits it.")
    p.add_argument("--mocap", nargs="+", required=True, metavar="PATH",
                   help="mocap files or folders (searched recursively for .bvh / .npz)")
    p.add_argument("-o", "--out", default="motion_prior", metavar="DIR",
                   help="output folder for prior.safetensors + prior.json (default: ./motion_prior)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default 30000)")
    p.add_argument("--max-fps", type=float, default=30.0, help="subsample clips to at most this rate")
    p.add_argument("--licence", default=None, help="licence of the mocap, recorded in prior.json")
    _add_device(p)
    p.set_defaults(func=_train_prior_cmd)

    p = subparsers.add_parser(
        "fit-mda", help="train the avatar-specific pose decoder of a subject (Sec. 3.3)",
        description="Freeze the prior's encoder and train a decoder p(pose_t | z, pose_t-1) on the "
                    "subject's captured training poses: the frames the avatar's run trained on, "
                    "holding out the same frames (the run's split.json).")
    p.add_argument("subject", metavar="SUBJECT_DIR")
    p.add_argument("--run", default=None,
                   help="run whose held-out split to follow (default: the exported run, else 'default')")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default 3000)")
    p.add_argument("--prior", default=None, metavar="DIR", help="prior folder (default: the shipped prior)")
    p.add_argument("--mode", default="part", choices=["part", "global"],
                   help="default filter of drive / live: part = align only the body parts out of the "
                        "subject's pose distribution (default), global = align every part")
    _add_device(p)
    p.set_defaults(func=_fit_mda_cmd)

    p = subparsers.add_parser(
        "retarget", help="retarget a mocap clip to the body model and check it",
        description="Retarget a BVH or AMASS npz clip to Anny and report joint-direction and "
                    "twist errors in degrees; optionally save the parameters and a PNG strip.")
    p.add_argument("mocap", metavar="MOCAP")
    p.add_argument("-o", "--out", default=None, metavar="OUT.npz", help="write body parameters (npz)")
    p.add_argument("--png", default=None, metavar="STRIP.png", help="write source | Anny drawings")
    p.add_argument("--up-axis", default=None, help="world up axis of the file (default y for BVH, z for npz)")
    p.set_defaults(func=_retarget_cmd)


def _train_prior_cmd(args) -> int:
    from ram_avatar.motion.prior import PriorConfig, train_prior
    cfg = PriorConfig(max_fps=args.max_fps)
    prov = {"licence": args.licence} if args.licence else None
    meta = train_prior(args.mocap, args.out, steps=args.steps, minutes=args.minutes, config=cfg,
                       device=args.device, provenance=prov)
    m = meta["metrics"]["held_out_reconstruction"] or meta["metrics"]["train_reconstruction"]
    log.info("prior in %s: %d clips, %d frames; held-out reconstruction %.1f deg, %.0f mm",
             args.out, meta["data"]["clips"], meta["data"]["frames"], m["angle_deg"], m["position_mm"])
    return 0


def _fit_mda_cmd(args) -> int:
    from ram_avatar.io.subject import Subject
    from ram_avatar.motion.mda import MDAConfig, fit_mda
    meta = fit_mda(args.subject, steps=args.steps, minutes=args.minutes, prior=args.prior, device=args.device,
                   config=MDAConfig(mode=getattr(args, "mode", "part")), run=getattr(args, "run", None))
    split = meta["split"]
    log.info("fit-mda: %d training poses (run %s, %s split, %d held out), %d steps in %.0f s -> %s",
             meta["frames"]["train"], split["run"], split["method"], meta["frames"]["held_out"],
             meta["steps_done"], meta["training_time_s"], Subject(args.subject).mda_dir)
    return 0


def _retarget_cmd(args) -> int:
    import numpy as np

    from ram_avatar.motion.retarget import plot_retarget_strip, retarget_bvh, retarget_report
    path = Path(args.mocap)
    if path.suffix.lower() == ".npz":
        from ram_avatar.motion.amass import retarget_amass
        res = retarget_amass(path, up_axis=args.up_axis or "z")
    else:
        res = retarget_bvh(path, up_axis=args.up_axis or "y")
    rep = retarget_report(res)
    log.info("%s: %d frames; direction error mean %.2f / max %.2f deg; twist mean %.2f deg",
             path.name, rep["frames"], rep["direction_mean"], rep["direction_max"], rep["twist_mean"])
    sys.stdout.write(json.dumps(rep, indent=1) + "\n")  # the report is the command's output
    if args.out:
        from ram_avatar.utils import atomic_path
        with atomic_path(args.out) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, body_pose=res.body_pose, global_orient=res.global_orient,
                         transl=res.transl, fps=np.float32(res.fps))
    if args.png:
        plot_retarget_strip(res, args.png)
    return 0
