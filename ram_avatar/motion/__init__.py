"""Motion Distribution Alignment (RAM-Avatar Sec. 3.3) and the mocap tooling it needs.

* :mod:`.bvh` — BVH reader with vectorised forward kinematics.
* :mod:`.amass` — AMASS-style SMPL-H / SMPL-X npz reader.
* :mod:`.retarget` — mocap skeletons -> Anny ``body_pose`` (joint groups, rest-pose alignment,
  root handling) with numeric (direction / twist errors) and visual (PNG strip) checks.
* :mod:`.prior` — VPoser-like VAE pose prior (``train_prior``, ``load_prior``); a prior trained
  on the Bandai-Namco-Research-Motiondataset (CC BY-NC 4.0, non-commercial) ships in
  ``ram_avatar/assets/motion_prior``.
* :mod:`.mda` — avatar-specific decoder (``fit_mda``) and runtime filter (``MotionAligner``;
  ``mode="part"`` gates each body part by its own out-of-distribution distance, ``PartGate``).
* :mod:`.metrics` — ``mda_metrics``: in-distribution change, out-of-distribution
  nearest-training-pose distance, arm correlation, acceleration / jerk; ``mda_curve`` /
  ``plot_mda_curve``: their trade-off over strengths for both modes.
* :mod:`.cli` — ``register(subparsers)`` adds ``train-prior``, ``fit-mda`` and ``retarget``.

Imports are lazy so that ``import ram_avatar.motion`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "read_bvh": "bvh", "BVHMotion": "bvh", "MocapFormatError": "bvh",
    "read_amass": "amass", "retarget_amass": "amass",
    "retarget_bvh": "retarget", "calibrate": "retarget", "MocapPoses": "retarget",
    "direction_errors": "retarget", "twist_errors": "retarget", "retarget_report": "retarget",
    "plot_retarget_strip": "retarget", "ANNY_GROUPS": "retarget",
    "body_pose_to_groups": "retarget", "groups_to_body_pose": "retarget",
    "PosePrior": "prior", "PriorConfig": "prior", "train_prior": "prior", "load_prior": "prior",
    "MotionAligner": "mda", "MDAConfig": "mda", "fit_mda": "mda", "PartGate": "mda",
    "mda_metrics": "metrics", "mda_curve": "metrics", "plot_mda_curve": "metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
