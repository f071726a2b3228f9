"""Conditioning maps and cropped frames of a captured sequence (the data side of the renderer).

Everything that renders the renderer's inputs for many frames of a subject lives here, so the
training, evaluation, export, ``drive`` and bench paths share one implementation and no
inference path imports ``ram_avatar.training`` (issue 11, item 2). Map names, channels,
compact dtypes, which render option produces which map and the previous-frame rule are the
renderer-input contract of :mod:`ram_avatar.models.inputs`.

- :func:`render_sequence_maps`: compact maps of frames of a sequence (or of driven poses) in the
  subject's training crop; :func:`maps_to_float` turns them into renderer inputs;
- :func:`map_render_options`: which render options a renderer's inputs need;
- :func:`add_previous_maps`: the previous-frame maps of a consecutive stream;
- :func:`crop_resize`: the subject's square crop of a frame or mask;
- :class:`SubjectDataset`: cropped frames, person masks and maps of chosen frames (the training
  and evaluation data).

Training data of one captured subject: cropped frames, person masks and conditioning maps.

Each item of :class:`SubjectDataset` is the dict of docs/INTERFACES.md:
``uv (2,S,S)``, ``body_mask (1,S,S)``, ``hand (5,S,S)``, ``face (3,S,S)`` conditioning maps
(render.conditioning), ``image (3,S,S)`` in [0, 1], ``person_mask (1,S,S)`` in [0, 1] and
``frame_index``. Frames are cropped with the subject's fixed square crop (manifest ``crop``)
and resized to S; maps are rendered with the matching intrinsics. The frames and masks are
kept in memory; the maps are rendered once and kept in compact dtypes (uint8 / float16, 15-30
bytes per pixel per frame) up to a memory budget, and the maps of frames beyond it are drawn
when read (a long video's maps do not fit in memory).

Optional keys (full renderer, temporal discriminator, hand loss), only with ``extras``:

- ``"expanded"``: ``uv_expanded (2,S,S)``, ``body_mask_expanded (1,S,S)`` (expanded mesh, see
  render.conditioning; ``canon_expanded (3,S,S)`` too with ``"canonical"``);
- ``"canonical"``: ``canon (3,S,S)`` canonical positions in [-1,1] (triplane);
- ``"temporal"``: ``prev_uv (2,S,S)``, ``prev_body_mask (1,S,S)`` (``prev_canon`` with
  ``"canonical"``): the maps of frame t-1 (frame t itself when t-1 is not a valid frame);
- ``"neighbours"``: ``image_prev``, ``image_next (3,S,S)``: frames t-1 and t+1 when they belong
  to this dataset's frames, else frame t (so held-out frames never leak into training);
- ``"hand_boxes"``: ``hand_boxes (2,4)`` [x0, y0, x1, y1] pixels of the projected left/right
  hand joints, ``hand_valid (2,)`` bool.

:func:`ram_avatar.training.trainer.required_extras` lists the extras a training config needs;
:func:`ram_avatar.models.inputs.data_extras` the ones a renderer's inputs need.
"""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ram_avatar.body import load_body_model
from ram_avatar.io.sequence import FittedSequence
from ram_avatar.io.video import iter_frames
from ram_avatar.models import inputs as contract
from ram_avatar.render.conditioning import ConditioningRenderer, crop_intrinsics
from ram_avatar.utils import progress

log = logging.getLogger(__name__)

__all__ = ["EXTRAS", "SequenceMapDrawer", "SubjectDataset", "add_previous_maps", "crop_resize",
           "default_map_cache_bytes", "map_render_options", "maps_to_float", "render_sequence_maps"]


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


EXTRAS = ("expanded", "canonical", "temporal", "neighbours", "hand_boxes")


def render_sequence_maps(seq: FittedSequence, indices: np.ndarray, size: int, body=None,
                         params=None, face_local=None, face_valid=None, backend: str = "auto",
                         chunk: int = 16, desc: str = "conditioning maps",
                         expand_offset: float | None = None, canonical: bool = False,
                         boxes: bool = False, max_bytes: int | None = None
                         ) -> dict[str, torch.Tensor]:
    """Conditioning maps for frames ``indices`` of ``seq`` (or for ``params`` when given,
    e.g. retargeted driving poses), in the subject's training crop at ``size``.

    Args:
        expand_offset: also render the expanded-mesh maps (metres along the normals).
        canonical: also render the canonical-position maps.
        boxes: also return the hand boxes.
        max_bytes: render only the first frames whose maps fit in this many bytes (at least
            one; measured on the first chunk): the maps then have fewer rows than ``indices``.

    Returns:
        dict ``uv`` (N,2,S,S) float16, ``body_mask`` (N,1,S,S) uint8 0/1, ``hand`` (N,5,S,S)
        uint8 0..255, ``face`` (N,3,S,S) uint8 0..255; optionally ``uv_expanded`` (N,2,S,S)
        float16, ``body_mask_expanded`` (N,1,S,S) uint8, ``canon`` / ``canon_expanded``
        (N,3,S,S) float16, ``hand_boxes`` (N,2,4) float32.

    Raises:
        ValueError: no ``indices``.
    """
    drawer = SequenceMapDrawer(seq, size, body, params, face_local, face_valid, backend,
                               expand_offset, canonical, boxes)
    n = len(indices)
    if n == 0:
        raise ValueError("render_sequence_maps: no frames to render")
    keep = n
    out: dict[str, torch.Tensor] = {}  # filled chunk by chunk (no list of chunks + cat copy)
    with progress() as bar:
        task = bar.add_task(desc, total=n, info="")
        for c in range(0, n, chunk):
            if c >= keep:
                break
            idx = indices[c:c + chunk]
            m = drawer.draw(idx)
            if not out and max_bytes is not None:  # rows that fit in max_bytes (at least one)
                per_frame = sum(v.nbytes for v in m.values()) / len(idx)
                keep = int(min(n, max(1, max_bytes // max(per_frame, 1))))
                bar.update(task, total=keep)
            for k, v in m.items():
                if k not in out:
                    out[k] = v.new_empty((keep,) + tuple(v.shape[1:]))
                out[k][c:c + len(idx)] = v[:keep - c]
            bar.advance(task, min(len(idx), keep - c))
    return out


class SequenceMapDrawer:
    """Draws the compact maps of frames of a sequence (or of given poses) in the subject's
    training crop: the per-chunk step of :func:`render_sequence_maps` (same arguments), kept
    open so a :class:`SubjectDataset` can draw the frames it does not keep in memory on demand.

    ``draw(frame_indices (n,)) -> dict`` of ``(n, C, S, S)`` compact maps (and ``hand_boxes``
    with ``boxes``), the dtypes of :func:`render_sequence_maps`.
    """

    def __init__(self, seq: FittedSequence, size: int, body=None, params=None, face_local=None,
                 face_valid=None, backend: str = "auto", expand_offset: float | None = None,
                 canonical: bool = False, boxes: bool = False):
        self.body = body or load_body_model(seq.manifest["body_model"]["name"],
                                            model_path=seq.manifest["body_model"].get("model_path"))
        self.params = seq.params if params is None else params
        self.face_local = seq.face_local if face_local is None else face_local
        self.face_valid = (np.ones(len(self.face_local), bool) if face_valid is None
                           else np.asarray(face_valid, bool))
        self.K = crop_intrinsics(seq.K, seq.manifest["crop"], size)
        self.size, self.expand_offset, self.canonical = size, expand_offset, canonical
        self.cond = ConditioningRenderer(self.body, backend=backend)
        keys = ["uv", "body_mask", "hand", "face"]
        if expand_offset is not None:
            keys += ["uv_expanded", "body_mask_expanded"] + (["canon_expanded"] if canonical else [])
        if canonical:
            keys.append("canon")
        if boxes:
            keys.append("hand_boxes")
        self.keys = keys

    def draw(self, indices) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, np.int64)
        m = self.cond.render(self.params.index(torch.as_tensor(idx)), self.face_local[idx], self.K,
                             self.size, self.face_valid[idx], expand_offset=self.expand_offset,
                             canonical=self.canonical)
        # compact storage dtypes of the input contract (models.inputs)
        return {k: contract.to_storage(k, m[k]) for k in self.keys}


def default_map_cache_bytes() -> int:
    """A quarter of the machine's physical memory (bytes): :class:`SubjectDataset`'s default
    budget for the conditioning maps it keeps (4 GiB where the size cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def maps_to_float(maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert compact maps (:func:`render_sequence_maps`) to float32 renderer inputs
    (:func:`ram_avatar.models.inputs.to_float`: drawn ``uint8`` maps / 255, the others as
    float). Every renderer input present is converted, and ``hand_boxes``; other keys (e.g.
    ``hands_2d``) are dropped."""
    return {k: contract.to_float(k, v) for k, v in maps.items()
            if k in contract.INPUTS or k == "hand_boxes"}


def map_render_options(input_names, expand_offset: float = 0.01) -> dict:
    """Keyword arguments of :func:`render_sequence_maps` that produce every map a renderer
    with inputs ``input_names`` reads (``RendererConfig.input_names()`` or an ONNX file's
    input names): :func:`ram_avatar.models.inputs.render_options` (``expand_offset`` metres
    when an ``*_expanded`` map is read, ``canonical`` when a ``canon`` map is read)."""
    return contract.render_options(input_names, expand_offset)


def add_previous_maps(maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the previous-frame maps of the temporal attention (Sec. 3.2) to the maps of a
    consecutive frame sequence (the previous-frame rule of :mod:`ram_avatar.models.inputs`): ``prev_uv``, ``prev_body_mask`` (``prev_canon`` when ``canon``
    is present) where row t holds row t-1's map and row 0 its own (a stream's first frame has
    no past, as in the live runtime). Works on compact or float maps; shares storage.

    Args:
        maps: dict of ``(N,C,S,S)`` maps with at least ``uv`` and ``body_mask``.
    Returns:
        ``maps`` with the ``prev_*`` entries added (same dict).
    """
    for spec in contract.INPUTS.values():
        if spec.previous_of is not None and spec.previous_of in maps:
            v = maps[spec.previous_of]
            maps[spec.name] = torch.cat([v[:1], v[:-1]]) if len(v) else v
    return maps


class SubjectDataset(Dataset):
    """Frames ``indices`` of a captured subject at resolution ``size`` (module docstring).

    Args:
        seq: the FittedSequence (loaded with its ``root`` so frames and masks can be read).
        indices: frame indices to serve.
        size: S, the renderer resolution.
        backend: rasterizer backend.
        extras: optional keys to add (module docstring): any of :data:`EXTRAS`.
        expand_offset: metres of the expanded mesh (``RendererConfig.expand_offset``).
        params: BodyParams of all T frames to render the maps from (e.g. a run's refined
            poses, training.pose_refine); None = the sequence's fitted parameters.
        map_cache_bytes: the maps of the first frames are rendered once and kept in memory up
            to this many bytes; the other frames' maps are drawn when an item is read (the
            same maps; an item and its previous frame took 70 ms at 256^2 on a 2-core CPU,
            against 2.4 ms from memory). None: a quarter of the
            machine's memory (:func:`default_map_cache_bytes`). A long video's maps do not
            fit: 1.18 MB per frame at 256^2 with cpu-256's extras, 10.6 GB for the 9,000
            frames of five minutes at 30 fps, 16x that at 1024^2.

    Attributes used by pose refinement: ``body`` (the body model), ``params`` (the sequence's
    fitted BodyParams, all T frames), ``K_crop`` (3,3) intrinsics of the S x S crop, ``backend``.

    Raises:
        ValueError: unknown extra.
    """

    def __init__(self, seq: FittedSequence, indices: np.ndarray, size: int, backend: str = "auto",
                 body=None, extras=(), expand_offset: float = 0.01, params=None,
                 map_cache_bytes: int | None = None):
        unknown = sorted(set(extras) - set(EXTRAS))
        if unknown:
            raise ValueError(f"unknown dataset extras {unknown}; known: {EXTRAS}")
        self.extras = tuple(extras)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.num_frames = seq.num_frames  # rows of the per-frame latent table
        self.size = size
        crop = seq.manifest["crop"]
        start = seq.manifest["source"]["start"]
        # the crops are written straight into their arrays, and the capture's full-size masks
        # (T x H x W bytes, 5 GB for 2,500 frames of 1080p) are released before the maps are
        # rendered: a long video's dataset used to hold them, the crops twice and the maps
        # twice at once (21.8 GB for 2,472 frames of 1080p, beyond a 24 GB machine)
        rows_of: dict[int, list[int]] = {}
        for j, t in enumerate(self.indices.tolist()):
            rows_of.setdefault(t, []).append(j)
        n = len(self.indices)
        images = np.zeros((n, size, size, 3), np.uint8)
        masks_out = np.zeros((n, size, size), np.uint8)
        with seq.load_masks() as masks:  # read frame by frame (io.masks)
            for t, frame in enumerate(iter_frames(seq.source_video(), start, start + seq.num_frames)):
                if t in rows_of:
                    images[rows_of[t]] = crop_resize(frame, crop, size)
                    masks_out[rows_of[t]] = crop_resize(masks[t], crop, size)
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        self.masks = torch.from_numpy(masks_out)[:, None]
        del images
        pos = {int(t): j for j, t in enumerate(self.indices)}
        # rows of self.maps: this dataset's frames, then previous frames not among them
        map_frames = list(self.indices.tolist())
        self.prev_row = None
        if "temporal" in self.extras:
            prev = contract.previous_frame_indices(self.indices, seq.valid).tolist()
            extra_frames = sorted({p for p in prev if p not in pos})
            map_frames += extra_frames
            row = {t: j for j, t in enumerate(map_frames)}
            self.prev_row = np.array([row[p] for p in prev], dtype=np.int64)
        self.prev_pos = self.next_pos = None
        if "neighbours" in self.extras:
            self.prev_pos = np.array([pos.get(int(t) - 1, j) for j, t in enumerate(self.indices)])
            self.next_pos = np.array([pos.get(int(t) + 1, j) for j, t in enumerate(self.indices)])
        # what pose refinement (training.pose_refine) re-renders the maps from
        self.body = body or load_body_model(seq.manifest["body_model"]["name"],
                                            model_path=seq.manifest["body_model"].get("model_path"))
        self.params = seq.params if params is None else params
        self.K_crop = crop_intrinsics(seq.K, crop, size)
        self.backend = backend
        self.map_frames = np.asarray(map_frames, dtype=np.int64)
        budget = default_map_cache_bytes() if map_cache_bytes is None else int(map_cache_bytes)
        opts = dict(expand_offset=expand_offset if "expanded" in self.extras else None,
                    canonical="canonical" in self.extras, boxes="hand_boxes" in self.extras)
        self.maps = render_sequence_maps(seq, self.map_frames, size, body=self.body,
                                         backend=backend, params=self.params,
                                         max_bytes=budget, **opts)
        #: rows of ``map_frames`` whose maps are kept in ``maps``; the others are drawn on demand
        self.cached_rows = len(self.maps["uv"])
        self._drawer = None
        if self.cached_rows < len(self.map_frames):
            self._drawer = SequenceMapDrawer(seq, size, self.body, self.params, backend=backend, **opts)
            per = sum(v[0].nbytes for v in self.maps.values())
            log.info("conditioning maps: %d of %d frames kept in memory (%.1f GB at %.1f MB per "
                     "frame), the others drawn when read", self.cached_rows, len(self.map_frames),
                     self.cached_rows * per / 1e9, per / 1e6)

    def __len__(self) -> int:
        return len(self.indices)

    def _compact_rows(self, rows: list[int]) -> dict[str, torch.Tensor]:
        """Compact maps (len(rows), ...) of rows of :attr:`map_frames`, from memory or drawn."""
        lazy = [r for r in rows if r >= self.cached_rows]
        drawn = self._drawer.draw(self.map_frames[lazy]) if lazy else None
        out = {}
        for k, m in self.maps.items():
            parts = [m[r:r + 1] if r < self.cached_rows else drawn[k][lazy.index(r)][None]
                     for r in rows]
            out[k] = parts[0] if len(parts) == 1 else torch.cat(parts)
        return out

    def __getitem__(self, i: int) -> dict:
        r = None if self.prev_row is None else int(self.prev_row[i])
        compact = self._compact_rows([i] if r is None else [i, r])
        item = {k: v[0] for k, v in maps_to_float(compact).items()}
        item["image"] = self.images[i].float() / 255.0
        # a segmentation can miss limbs (the Selfie model of older captures missed legs and
        # feet): the fitted body's silhouette completes it
        item["person_mask"] = torch.maximum(self.masks[i].float() / 255.0, item["body_mask"])
        item["frame_index"] = int(self.indices[i])
        if "hand_boxes" in item:
            item["hand_valid"] = torch.ones(2, dtype=torch.bool)
        if r is not None:
            for spec in contract.INPUTS.values():
                if spec.previous_of is not None and spec.previous_of in compact:
                    item[spec.name] = contract.to_float(spec.previous_of, compact[spec.previous_of][-1])
        if self.prev_pos is not None:
            item["image_prev"] = self.images[int(self.prev_pos[i])].float() / 255.0
            item["image_next"] = self.images[int(self.next_pos[i])].float() / 255.0
        return item
