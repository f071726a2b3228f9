"""A run's refined body parameters (``<run>/refined_poses.npz``), read without training.

Training with pose refinement (:mod:`ram_avatar.training.pose_refine`, which writes the file and
re-exports these names) saves the refined sequence in the ``smplx`` vocabulary; ``evaluate``
and anything else rendering a run's frames apply it with :func:`apply_refined_poses`
(:meth:`ram_avatar.io.subject.Run.refined_params`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ram_avatar.body.base import BodyParams
from ram_avatar.errors import CheckpointError

__all__ = ["REFINED_POSES_FILE", "load_refined_poses", "apply_refined_poses"]

#: file name of the refined parameters in a run directory
REFINED_POSES_FILE = "refined_poses.npz"


def load_refined_poses(path) -> dict[str, np.ndarray] | None:
    """Read ``refined_poses.npz`` written by :func:`save_refined_poses`; None when absent.

    Raises:
        ram_avatar.errors.CheckpointError: the file exists but cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc}); delete it to use the fitted poses") \
            from None


def apply_refined_poses(params: BodyParams, refined: dict[str, np.ndarray] | None) -> BodyParams:
    """The sequence's fitted ``params`` (T frames) with a run's refinement applied: refined
    ``global_orient``, ``body_pose``, ``transl`` per frame (frames never trained on have zero
    corrections, so they keep their fitted pose) and the refined shared ``betas``.

    Raises:
        ram_avatar.errors.CheckpointError: ``refined`` does not fit ``params`` (another subject).
    """
    if refined is None:
        return params
    T = params.batch_size
    want = {"global_orient": (T, 3), "body_pose": tuple(params.body_pose.shape),
            "transl": (T, 3), "betas": (1, params.betas.shape[1])}
    for k, shape in want.items():
        if k not in refined or tuple(refined[k].shape[-len(shape):]) != shape[-len(shape):] \
                or (k != "betas" and refined[k].shape[0] != T):
            raise CheckpointError(f"refined poses do not fit this subject ({k}: expected "
                                  f"{shape}, got {None if k not in refined else refined[k].shape})"
                                  "; delete the run's refined_poses.npz or retrain")
    t = {k: torch.as_tensor(refined[k], dtype=params.global_orient.dtype) for k in want}
    betas = t["betas"][:1] if params.betas.shape[0] == 1 else t["betas"][:1].expand_as(params.betas)
    return BodyParams(betas=betas, global_orient=t["global_orient"], body_pose=t["body_pose"],
                      left_hand_pose=params.left_hand_pose, right_hand_pose=params.right_hand_pose,
                      jaw_pose=params.jaw_pose, expression=params.expression, transl=t["transl"])
