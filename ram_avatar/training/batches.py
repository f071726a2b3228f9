"""Batches of the training loop: what items a config needs, their check, the resumable sampler.

Items are dicts as in docs/INTERFACES.md (:data:`ITEM_KEYS`, plus the extras of
:func:`required_item_keys`); :class:`ResumableBatchSampler` makes the batch order a pure
function of (seed, step), which keeps resuming exact without saving loader state.
"""

from __future__ import annotations

import logging
import math

import torch
from torch.utils.data import Dataset, Sampler, Subset

from ram_avatar.errors import RamAvatarError
from ram_avatar.models import inputs as contract
from ram_avatar.training.config import TrainConfig

log = logging.getLogger(__name__)

#: the renderer's base inputs (models.inputs, the one renderer-input contract)
MAP_KEYS = contract.BASE_INPUTS
ITEM_KEYS = MAP_KEYS + ("image", "person_mask", "frame_index")
#: item keys only training reads, per dataset extra: the temporal discriminator's neighbour
#: images and the hand loss's crops (the renderer-input extras come from the contract)
TRAINING_ITEM_KEYS = {
    "neighbours": ("image_prev", "image_next"),
    "hand_boxes": ("hand_boxes", "hand_valid"),
}
#: optional item keys per dataset extra (renderer inputs from the contract + training-only keys)
EXTRA_ITEM_KEYS = {**{e: contract.extras_inputs((e,)) for e in contract.DATA_EXTRAS},
                   **TRAINING_ITEM_KEYS}


def required_extras(config: TrainConfig) -> tuple[str, ...]:
    """Dataset extras a training config needs (pass them to ``SubjectDataset(extras=...)``):
    the model's (``expanded``, ``canonical``, ``temporal``) plus ``neighbours`` (images
    t-1, t+1) for the temporal discriminator and ``hand_boxes`` for the hand loss."""
    out = list(config.model.data_extras())
    if config.adversarial:
        out.append("neighbours")
    if config.loss.hand_weight > 0:
        out.append("hand_boxes")
    return tuple(out)


def required_item_keys(config: TrainConfig) -> tuple[str, ...]:
    """Item keys training with ``config`` reads beyond :data:`ITEM_KEYS`."""
    extras = required_extras(config)
    keys = list(contract.extras_inputs(e for e in extras if e not in TRAINING_ITEM_KEYS))
    for extra in extras:
        keys += TRAINING_ITEM_KEYS.get(extra, ())
    return tuple(keys)


# ---------------------------------------------------------------------------------------------
# data helpers


class ResumableBatchSampler(Sampler):
    """Endless shuffled batches whose order depends only on ``(seed, step)``.

    Epoch ``e`` uses ``randperm(n)`` from a generator seeded with ``(seed, e)``; batch ``k`` of
    an epoch is its ``k``-th slice of ``batch_size`` indices (the incomplete tail is dropped).
    Starting at ``start_step`` yields exactly the batches an uninterrupted run would have seen
    from that step on, which makes resuming exact without saving loader state.

    With ``world_size > 1`` each global batch has ``batch_size * world_size`` indices and rank
    ``r`` gets the ``r``-th slice of ``batch_size`` (DDP data sharding).
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if num_items < 1 or batch_size < 1 or batch_size * world_size > num_items:
            raise ValueError(f"bad sampler sizes: {num_items} items, batch {batch_size} x "
                             f"{world_size} ranks")
        self.num_items = num_items
        self.rank_batch = batch_size
        self.rank = rank
        self.batch_size = batch_size * world_size
        self.seed = seed
        self.start_step = start_step
        self.batches_per_epoch = num_items // self.batch_size

    def _perm(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=gen)

    def __iter__(self):
        step = self.start_step
        epoch, perm = None, None
        while True:
            e, k = divmod(step, self.batches_per_epoch)
            if e != epoch:
                epoch, perm = e, self._perm(e)
            batch = perm[k * self.batch_size:(k + 1) * self.batch_size]
            yield batch[self.rank * self.rank_batch:(self.rank + 1) * self.rank_batch].tolist()
            step += 1


def split_train_val(dataset: Dataset, val_fraction: float) -> tuple[Subset, Subset]:
    """Hold out the last ``ceil(val_fraction * N)`` items (a contiguous block of frames).

    A temporally separate block measures generalisation to unseen poses better than every
    k-th frame (whose neighbours are in the training set).
    """
    n = len(dataset)
    n_val = min(n - 1, math.ceil(val_fraction * n)) if val_fraction > 0 else 0
    return Subset(dataset, range(n - n_val)), Subset(dataset, range(n - n_val, n))


def dataset_num_frames(*datasets: Dataset | None) -> int:
    """Rows needed in the per-frame latent table: ``max(frame_index) + 1`` over the datasets.

    Uses a dataset's ``num_frames`` or ``frame_indices`` attribute when present (also through
    ``Subset``); otherwise reads every item once (slow for lazily rendered datasets).
    """
    best = 0
    for ds in datasets:
        if ds is None or len(ds) == 0:
            continue
        base = ds
        while isinstance(base, Subset) and not hasattr(base, "num_frames"):
            base = base.dataset
        if isinstance(getattr(base, "num_frames", None), int):
            best = max(best, int(base.num_frames))
        elif getattr(base, "frame_indices", None) is not None:
            best = max(best, int(max(base.frame_indices)) + 1)
        else:
            log.info("scanning %d dataset items for frame indices (give the dataset a "
                     "'num_frames' attribute to skip this)", len(ds))
            best = max(best, max(int(ds[i]["frame_index"]) for i in range(len(ds))) + 1)
    return max(best, 1)


def check_batch(batch: dict, resolution: int, num_frames: int, shapes: bool = True,
                extra_keys: tuple[str, ...] = ()) -> None:
    """Check a collated batch: keys (:data:`ITEM_KEYS` + ``extra_keys``), ``(B,C,S,S)`` shapes
    (when ``shapes``) and ``frame_index`` in ``[0, num_frames)``.

    Raises:
        RamAvatarError: naming the missing key, the wrong shape or the frame index.
    """
    missing = [k for k in ITEM_KEYS if k not in batch]
    if missing:
        raise RamAvatarError(f"training items lack {missing}; each item must be a dict with "
                             f"{list(ITEM_KEYS)} (see docs/INTERFACES.md)")
    missing = [k for k in extra_keys if k not in batch]
    if missing:
        raise RamAvatarError(
            f"training items lack {missing}, which this config needs (full renderer, temporal "
            "discriminator or hand loss); build the dataset with "
            "SubjectDataset(..., extras=required_extras(config)) from "
            "ram_avatar.training.trainer, or switch those parts off in the config")
    # the renderer's inputs from their contract; the training targets (RGB frames, person mask)
    channels = {**{n: contract.spec(n).channels for n in contract.ALL_INPUTS},
                "image": 3, "person_mask": 1, "image_prev": 3, "image_next": 3}
    channels = {k: c for k, c in channels.items() if k in ITEM_KEYS or k in extra_keys}
    for key, c in (channels.items() if shapes else ()):
        shape = tuple(batch[key].shape[1:])
        if shape != (c, resolution, resolution):
            raise RamAvatarError(
                f"training item '{key}' has shape {shape}, expected ({c},{resolution},"
                f"{resolution}) for model.resolution={resolution}; render the dataset at the "
                "training resolution or change the config")
    fi = batch["frame_index"]
    if int(fi.min()) < 0 or int(fi.max()) >= num_frames:
        raise RamAvatarError(f"frame_index {int(fi.max())} out of range for model.num_frames="
                             f"{num_frames}; set model.num_frames to max frame index + 1 or "
                             "leave it empty to let training derive it from the data")


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors of ``batch`` on ``device`` (non-blocking on CUDA); other values unchanged."""
    non_blocking = device.type == "cuda"
    return {k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()}
