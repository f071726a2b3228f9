"""A tiny synthetic captured subject (no MediaPipe, no real video) for split / bench tests.

``write_tiny_subject`` writes ``<dir>/sequence/`` as ``ram-avatar capture`` would: an Anny
FittedSequence whose arms swing (and are raised high during ``raised`` frames), a 96x96 H.264
source video of a coloured figure moving with the pose, person masks, and a manifest with the
training crop. ``TINY_TRAIN`` is a ``--set`` list that shrinks the ``cpu-256-v1`` renderer to
32x32 so a few training steps take about a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: ``--set`` overrides of a 32x32 renderer v1 without perceptual losses (seconds per run)
TINY_TRAIN = ["model.resolution=32", "model.texture_size=32", "model.texture_levels=2",
              "model.base_channels=8", "model.max_channels=16", "model.style_dim=16",
              "model.latent_dim=8", "vgg_weight=0", "hand_weight=0", "batch_size=2",
              "log_interval=1", "preview_interval=1000", "val_interval=1000",
              "checkpoint_interval=1000", "val_items=2"]


def tiny_poses(body, T: int, raised: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Fitted parameters (smplx names, numpy) of T frames: upright, 2.5 m from the camera,
    upper arms swinging +-0.3 rad with a period of 12 frames; frames ``raised`` = [a, b) lift
    both upper arms by 1.4 rad (a pose the rest of the clip never shows)."""
    p = body.zero_params(T)
    arr = {k: v.copy() for k, v in p.as_numpy().items()}
    arr["betas"] = arr["betas"][:1]
    arr["transl"][:, 2] = 2.5
    names = body.body_joint_names
    swing = 0.3 * np.sin(2 * np.pi * np.arange(T) / 12.0)
    for side, sign in (("L", 1.0), ("R", -1.0)):
        j = names.index(f"upperarm01.{side}")
        arr["body_pose"][:, j, 0] = swing
        if raised is not None:
            arr["body_pose"][raised[0]:raised[1], j, 2] = sign * 1.4
    return arr


def write_tiny_subject(directory: Path, body, T: int = 30, fps: float = 10.0, size: int = 96,
                       raised: tuple[int, int] | None = None, invalid: tuple[int, ...] = ()) -> Path:
    """Write a captured subject of ``T`` frames into ``directory`` (module docstring).

    Returns:
        ``directory``.
    """
    import torch

    from ram_avatar.body.base import BodyParams
    from ram_avatar.capture.keypoints import Keypoints2D
    from ram_avatar.capture.video import VideoWriter
    from ram_avatar.io.sequence import FittedSequence

    directory = Path(directory)
    arr = tiny_poses(body, T, raised)
    params = BodyParams.from_numpy(arr)
    K = np.array([[size * 1.2, 0, size / 2], [0, size * 1.2, size / 2], [0, 0, 1.0]])
    # the figure: projected pose landmarks drawn as discs (colour per landmark)
    with torch.no_grad():
        lm = body(params.expand_betas(), return_vertices=False).pose_landmarks.numpy()
    uv = lm[..., :2] / lm[..., 2:3] * K[0, 0] + K[:2, 2]
    yy, xx = np.mgrid[0:size, 0:size]
    frames, masks = [], []
    rng = np.random.default_rng(0)
    colours = rng.integers(60, 255, size=(33, 3))
    for t in range(T):
        img = np.full((size, size, 3), 235, np.uint8)
        mask = np.zeros((size, size), np.uint8)
        for j in range(33):
            if not body.pose_landmark_mask[j]:
                continue
            disc = (xx - uv[t, j, 0]) ** 2 + (yy - uv[t, j, 1]) ** 2 < 16
            img[disc] = colours[j]
            mask[disc] = 255
        frames.append(img)
        masks.append(mask)
    seq_dir = directory / "sequence"
    seq_dir.mkdir(parents=True, exist_ok=True)
    with VideoWriter(seq_dir / "source.mp4", fps, (size, size)) as w:
        for f in frames:
            w.write(f)
    valid = np.ones(T, bool)
    valid[list(invalid)] = False
    manifest = {"fps": fps, "width": size, "height": size, "frames": T,
                "camera": {"K": K.tolist()}, "crop": [0.0, 0.0, float(size)],
                "source": {"name": "synthetic", "start": 0, "end": T},
                "masks": {"source": "synthetic"},
                "body_model": {"name": "anny", "num_betas": int(arr["betas"].shape[1]),
                               "num_body_joints": int(arr["body_pose"].shape[1]),
                               "num_expression": int(arr["expression"].shape[1])}}
    z = np.zeros
    seq = FittedSequence(params=params, keypoints=Keypoints2D.empty(T), valid=valid,
                         face_local=z((T, 478, 3), np.float32), manifest=manifest)
    seq.save(seq_dir, masks=np.stack(masks))
    return directory
