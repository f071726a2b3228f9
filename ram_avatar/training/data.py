"""Training data of one captured subject (see :mod:`ram_avatar.render.sequence`).

The dataset (:class:`SubjectDataset`) and the sequence map rendering moved to
:mod:`ram_avatar.render.sequence` so evaluation, export, ``drive`` and the benches render maps
without importing training (issue 11, item 2); their names are re-exported here. The item
dict is that of docs/INTERFACES.md; the renderer's inputs are the contract of
:mod:`ram_avatar.models.inputs`. The held-out split is :mod:`ram_avatar.io.split`'s, read
through the run (:meth:`ram_avatar.io.subject.Run.split`).
"""

from __future__ import annotations

from ram_avatar.render.sequence import (EXTRAS, SubjectDataset, add_previous_maps,  # noqa: F401
                                        crop_resize, map_render_options, maps_to_float,
                                        render_sequence_maps)

__all__ = ["EXTRAS", "SubjectDataset", "add_previous_maps", "crop_resize", "map_render_options",
           "maps_to_float", "render_sequence_maps"]
