"""Training data of one captured subject (see :mod:`ram_avatar.render.sequence`).

The dataset (:class:`SubjectDataset`) and the sequence map rendering moved to
:mod:`ram_avatar.render.sequence` so evaluation, export, ``drive`` and the benches render maps
without importing training (issue 11, item 2); their names are re-exported here. The item
dict is that of docs/INTERFACES.md; the renderer's inputs are the contract of
:mod:`ram_avatar.models.inputs`.
"""

from __future__ import annotations

import numpy as np

from ram_avatar.io.sequence import FittedSequence
from ram_avatar.render.sequence import (EXTRAS, SubjectDataset, add_previous_maps,  # noqa: F401
                                        crop_resize, map_render_options, maps_to_float,
                                        render_sequence_maps)

__all__ = ["EXTRAS", "SubjectDataset", "add_previous_maps", "crop_resize", "map_render_options",
           "maps_to_float", "render_sequence_maps", "split_frames"]


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
