"""Body models: the :class:`BodyModel` interface and its backends (``anny``, ``smplx``)."""

from __future__ import annotations

from ram_avatar.body.base import (BODY_LANDMARKS, HEAD_LANDMARKS, MEDIAPIPE_HAND_NAMES,
                                  MEDIAPIPE_POSE_NAMES, PARAM_NAMES, BodyModel, BodyOutput,
                                  BodyParams)
from ram_avatar.errors import RamAvatarError

BODY_MODELS = ("anny", "smplx")


def load_body_model(name: str = "anny", model_path=None, device="cpu", **kwargs) -> BodyModel:
    """Build a body-model backend.

    Args:
        name: ``anny`` (embedded default) or ``smplx`` (needs ``model_path``: a directory with
            ``SMPLX_NEUTRAL.npz`` or ``smplx/SMPLX_NEUTRAL.npz``, or the file itself).
        model_path: see ``name``.
        device: torch device.
    Raises:
        RamAvatarError: unknown backend name.
        ModelFileError: SMPL-X files missing or malformed.
    """
    if name == "anny":
        from ram_avatar.body.anny_backend import AnnyBodyModel

        model = AnnyBodyModel()
    elif name == "smplx":
        from ram_avatar.body.smplx_backend import SMPLXBodyModel

        model = SMPLXBodyModel(model_path, **kwargs)
    else:
        raise RamAvatarError(f"unknown body model {name!r}; choose one of {', '.join(BODY_MODELS)}")
    return model.to(device)


__all__ = ["BodyModel", "BodyOutput", "BodyParams", "load_body_model", "BODY_MODELS",
           "MEDIAPIPE_POSE_NAMES", "MEDIAPIPE_HAND_NAMES", "BODY_LANDMARKS", "HEAD_LANDMARKS",
           "PARAM_NAMES"]
