"""Training data of one captured subject: cropped frames, person masks and conditioning maps.

Each item of :class:`SubjectDataset` is the dict of docs/INTERFACES.md:
``uv (2,S,S)``, ``body_mask (1,S,S)``, ``hand (5,S,S)``, ``face (3,S,S)`` conditioning maps
(render.conditioning), ``image (3,S,S)`` in [0, 1], ``person_mask (1,S,S)`` in [0, 1] and
``frame_index``. Frames are cropped with the subject's fixed square crop (manifest ``crop``)
and resized to S; maps are rendered with the matching intrinsics. Everything is rendered once
and kept in memory in compact dtypes (uint8 / float16), about 15 bytes per pixel per frame.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ram_avatar.body import load_body_model
from ram_avatar.capture.video import iter_frames
from ram_avatar.io.sequence import FittedSequence
from ram_avatar.render.conditioning import ConditioningRenderer, crop_intrinsics
from ram_avatar.utils import progress

log = logging.getLogger(__name__)


def split_frames(seq: FittedSequence, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Hold out the last ``val_fraction`` of the frames (temporal split, as in the paper's
    evaluation on unseen poses); only valid frames are returned.

    Returns:
        (train_indices, val_indices), frame indices into the sequence.
    """
    T = seq.num_frames
    n_val = max(1, int(round(T * val_fraction))) if val_fraction > 0 else 0
    cut = T - n_val
    frames = np.arange(T)
    return frames[:cut][seq.valid[:cut]], frames[cut:][seq.valid[cut:]]


def crop_resize(img: np.ndarray, crop: list[float], size: int, interpolation=cv2.INTER_AREA) -> np.ndarray:
    """Crop the square ``[x0, y0, side]`` (may extend past the image: zero padded) and resize to
    ``size`` x ``size``. Works for (H, W) and (H, W, C) arrays."""
    x0, y0, side = crop
    H, W = img.shape[:2]
    xa, ya = int(round(x0)), int(round(y0))
    s = int(round(side))
    pad = [max(0, -ya), max(0, ya + s - H), max(0, -xa), max(0, xa + s - W)]
    if any(pad):
        img = cv2.copyMakeBorder(img, *pad, cv2.BORDER_CONSTANT, value=0)
        xa, ya = xa + pad[2], ya + pad[0]
    return cv2.resize(img[ya:ya + s, xa:xa + s], (size, size), interpolation=interpolation)


def render_sequence_maps(seq: FittedSequence, indices: np.ndarray, size: int, body=None,
                         params=None, face_local=None, face_valid=None, backend: str = "auto",
                         chunk: int = 16, desc: str = "conditioning maps") -> dict[str, torch.Tensor]:
    """Conditioning maps for frames ``indices`` of ``seq`` (or for ``params`` when given,
    e.g. retargeted driving poses), in the subject's training crop at ``size``.

    Returns:
        dict ``uv`` (N,2,S,S) float16, ``body_mask`` (N,1,S,S) uint8 0/1, ``hand`` (N,5,S,S)
        uint8 0..255, ``face`` (N,3,S,S) uint8 0..255.
    """
    body = body or load_body_model(seq.manifest["body_model"]["name"],
                                   model_path=seq.manifest["body_model"].get("model_path"))
    params = seq.params if params is None else params
    face_local = seq.face_local if face_local is None else face_local
    face_valid = np.ones(len(face_local), bool) if face_valid is None else face_valid
    K = crop_intrinsics(seq.K, seq.manifest["crop"], size)
    cond = ConditioningRenderer(body, backend=backend)
    out = {k: [] for k in ("uv", "body_mask", "hand", "face")}
    with progress() as bar:
        task = bar.add_task(desc, total=len(indices), info="")
        for c in range(0, len(indices), chunk):
            idx = torch.as_tensor(indices[c:c + chunk])
            m = cond.render(params.index(idx), face_local[idx.numpy()], K, size, face_valid[idx.numpy()])
            out["uv"].append(m["uv"].half())
            out["body_mask"].append(m["body_mask"].to(torch.uint8))
            out["hand"].append((m["hand"] * 255).round().to(torch.uint8))
            out["face"].append((m["face"] * 255).round().to(torch.uint8))
            bar.advance(task, len(idx))
    return {k: torch.cat(v) for k, v in out.items()}


def maps_to_float(maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert compact maps (render_sequence_maps) to the float32 renderer inputs."""
    return {"uv": maps["uv"].float(), "body_mask": maps["body_mask"].float(),
            "hand": maps["hand"].float() / 255.0, "face": maps["face"].float() / 255.0}


class SubjectDataset(Dataset):
    """Frames ``indices`` of a captured subject at resolution ``size`` (module docstring).

    Args:
        seq: the FittedSequence (loaded with its ``root`` so frames and masks can be read).
        indices: frame indices to serve.
        size: S, the renderer resolution.
        backend: rasterizer backend.
    """

    def __init__(self, seq: FittedSequence, indices: np.ndarray, size: int, backend: str = "auto", body=None):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.num_frames = seq.num_frames  # rows of the per-frame latent table
        self.size = size
        crop = seq.manifest["crop"]
        start = seq.manifest["source"]["start"]
        wanted = set(self.indices.tolist())
        images, masks_out = {}, {}
        masks = seq.load_masks()
        for t, frame in enumerate(iter_frames(seq.source_video(), start, start + seq.num_frames)):
            if t in wanted:
                images[t] = crop_resize(frame, crop, size)
                masks_out[t] = crop_resize(masks[t], crop, size)
        self.images = torch.from_numpy(np.stack([images[t] for t in self.indices])).permute(0, 3, 1, 2).contiguous()
        self.masks = torch.from_numpy(np.stack([masks_out[t] for t in self.indices]))[:, None].contiguous()
        self.maps = render_sequence_maps(seq, self.indices, size, body=body, backend=backend)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        item = {k: v[0] for k, v in maps_to_float({k: m[i:i + 1] for k, m in self.maps.items()}).items()}
        item["image"] = self.images[i].float() / 255.0
        # selfie segmentation misses legs and feet: the fitted body's silhouette completes it
        item["person_mask"] = torch.maximum(self.masks[i].float() / 255.0, item["body_mask"])
        item["frame_index"] = int(self.indices[i])
        return item
