"""The renderer's input contract: one table of every map the avatar renderer reads.

Every consumer of renderer inputs reads this table instead of restating it: the training
dataset (:mod:`ram_avatar.render.sequence`), ONNX export (``exporters.avatar``), ``drive``, the
live runtime, the benches and ``evaluate``. Each input is a float32 ``(B, C, S, S)`` image at
the renderer's resolution S (ONNX: dynamic batch, fixed C and S); the table gives

- ``channels`` C and the value range;
- ``storage``: the compact dtype sequences of maps are kept in (``float16``; ``uint8`` 0/1
  for masks; ``uint8`` 0..255 for the drawn hand/face maps, divided by 255 on the way in);
- ``option``: which :meth:`~ram_avatar.render.conditioning.ConditioningRenderer.render`
  option produces it (``None`` = always rendered; ``expand_offset`` = the expanded mesh of
  the dual attention's spatial part, Sec. 3.2; ``canonical`` = canonical positions for the
  triplane; both for ``canon_expanded``);
- ``previous_of``: for the temporal attention's inputs (Sec. 3.2), the map of the previous
  frame they carry.

**Previous-frame rule** (``prev_*`` inputs): ``prev_X`` at frame t is ``X`` of frame t-1 of
the same stream; when there is no such frame (the first frame of a stream or clip, or a
capture frame whose predecessor is not a valid fitted frame) it is frame t's own ``X`` (the
temporal part then treats the frame as static). The live runtime additionally repeats the
last inputs while it holds a lost person's pose (the avatar stays exactly still).
:func:`previous_frame_indices` applies the rule to capture frames,
:func:`ram_avatar.render.sequence.add_previous_maps` to a consecutive stream.

Which inputs a renderer reads depends on its config (:func:`renderer_inputs`; the order is
the ONNX input order); the helpers below derive everything else from the names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import torch

__all__ = ["InputSpec", "INPUTS", "BASE_INPUTS", "EXTRA_INPUTS", "ALL_INPUTS", "DATA_EXTRAS",
           "spec", "check_names", "renderer_inputs", "render_options", "data_extras",
           "extras_inputs", "previous_inputs", "uses_previous", "previous_frame_indices",
           "to_storage", "to_float", "onnx_inputs", "check_feed"]


@dataclass(frozen=True)
class InputSpec:
    """One renderer input (module docstring).

    Attributes:
        name: input name (ONNX input name, keyword of ``AvatarRenderer.forward``).
        channels: C.
        storage: compact dtype of stored maps: ``float16``, ``mask`` (uint8 0/1) or
            ``uint8`` (0..255, the float value times 255).
        option: the ConditioningRenderer option producing it (None, ``expand_offset``,
            ``canonical`` or ``expand_offset+canonical``).
        previous_of: the current-frame map a ``prev_*`` input carries from frame t-1.
        description: meaning, range and units.
        dtype: dtype the renderer reads (always float32).
    """

    name: str
    channels: int
    storage: str
    option: str | None
    previous_of: str | None
    description: str
    dtype: str = "float32"


_SPECS = (
    InputSpec("uv", 2, "float16", None, None,
              "texture coordinates in [0,1] of the rasterised body, 0 off the body (Sec. 4.1)"),
    InputSpec("body_mask", 1, "mask", None, None, "1 on the rasterised body, else 0"),
    InputSpec("hand", 5, "uint8", None, None,
              "finger skeleton lines of the projected hand joints, one channel per finger, in [0,1]"),
    InputSpec("face", 3, "uint8", None, None,
              "face-mesh drawing of the projected face template, in [0,1]"),
    InputSpec("uv_expanded", 2, "float16", "expand_offset", None,
              "uv of the mesh pushed out along its normals by expand_offset metres (F_e, Sec. 3.2)"),
    InputSpec("body_mask_expanded", 1, "mask", "expand_offset", None,
              "body mask of the expanded mesh"),
    InputSpec("prev_uv", 2, "float16", None, "uv", "uv of the previous frame (temporal attention)"),
    InputSpec("prev_body_mask", 1, "mask", None, "body_mask", "body mask of the previous frame"),
    InputSpec("canon", 3, "float16", "canonical", None,
              "canonical (rest-pose) positions in [-1,1] of the rasterised body (triplane)"),
    InputSpec("canon_expanded", 3, "float16", "expand_offset+canonical", None,
              "canonical positions of the expanded mesh (triplane)"),
    InputSpec("prev_canon", 3, "float16", "canonical", "canon",
              "canonical positions of the previous frame (triplane, temporal attention)"),
)

#: name -> :class:`InputSpec`, every input any renderer variant reads
INPUTS: dict[str, InputSpec] = {s.name: s for s in _SPECS}
#: inputs of every renderer variant, in ONNX input order
BASE_INPUTS = ("uv", "body_mask", "hand", "face")
#: optional inputs of the full variant (dual attention, triplane)
EXTRA_INPUTS = ("uv_expanded", "body_mask_expanded", "prev_uv", "prev_body_mask", "canon",
                "canon_expanded", "prev_canon")
ALL_INPUTS = BASE_INPUTS + EXTRA_INPUTS
#: dataset / sequence-map flags (``SubjectDataset(extras=...)``) and the inputs they add
DATA_EXTRAS: dict[str, tuple[str, ...]] = {
    "expanded": ("uv_expanded", "body_mask_expanded"),
    "canonical": ("canon",),
    "temporal": ("prev_uv", "prev_body_mask"),
}


def spec(name: str) -> InputSpec:
    """The :class:`InputSpec` of ``name``.

    Raises:
        ValueError: not a renderer input (the message lists the known ones).
    """
    try:
        return INPUTS[name]
    except KeyError:
        raise ValueError(f"{name!r} is not a renderer input; known inputs: "
                         f"{', '.join(ALL_INPUTS)}") from None


def check_names(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` as a tuple, after checking each is a renderer input and ``body_mask`` is
    among them (every variant reads it; it fixes S in an ONNX file).

    Raises:
        ValueError: an unknown name or no ``body_mask``.
    """
    names = tuple(names)
    unknown = [n for n in names if n not in INPUTS]
    if unknown:
        raise ValueError(f"unknown renderer inputs {unknown}; known inputs: {', '.join(ALL_INPUTS)}")
    if "body_mask" not in names:
        raise ValueError(f"renderer inputs {list(names)} lack 'body_mask'")
    return names


def renderer_inputs(config) -> tuple[str, ...]:
    """Inputs a renderer with ``config`` reads, in ONNX input order (base maps first).

    ``config`` is a :class:`~ram_avatar.models.renderer.RendererConfig` (attributes
    ``variant``, ``body_features``, ``hand_branch``, ``face_branch``, ``spatial_attention``,
    ``temporal_attention``). Renderer v1 reads the 4 base maps; the full variant drops the
    inputs of disabled parts (no ``face`` without the face branch, no ``prev_*`` without
    temporal attention, ``canon*`` instead of ``uv*`` with the triplane).
    """
    if config.variant != "full":
        return BASE_INPUTS
    tri = config.body_features == "triplane"
    names = ["body_mask"] if tri else ["uv", "body_mask"]
    if config.hand_branch:
        names.append("hand")
    if config.face_branch:
        names.append("face")
    if tri:
        names.append("canon")
    if config.spatial_attention:
        names += ["canon_expanded", "body_mask_expanded"] if tri else ["uv_expanded", "body_mask_expanded"]
    if config.temporal_attention:
        names += ["prev_canon", "prev_body_mask"] if tri else ["prev_uv", "prev_body_mask"]
    return tuple(names)


def render_options(names: Iterable[str], expand_offset: float = 0.01) -> dict:
    """Keyword arguments of ``ConditioningRenderer.render`` / ``render_sequence_maps`` that
    produce every map among ``names`` (their ``option`` column): ``expand_offset`` (metres)
    when an expanded map is read, ``canonical=True`` when a canonical one is.

    A ``prev_*`` input needs what its current-frame map needs. Unknown names are ignored
    (e.g. ``hand_boxes``)."""
    opts: dict = {}
    for n in names:
        s = INPUTS.get(n)
        if s is None:
            continue
        option = s.option or ""
        if s.previous_of is not None:
            option = INPUTS[s.previous_of].option or ""
        if "expand_offset" in option:
            opts["expand_offset"] = float(expand_offset)
        if "canonical" in option:
            opts["canonical"] = True
    return opts


def data_extras(names: Iterable[str]) -> tuple[str, ...]:
    """Dataset flags (:data:`DATA_EXTRAS` keys, in that order) that provide ``names``:
    ``expanded`` for the expanded maps, ``canonical`` for the canonical ones, ``temporal``
    for the ``prev_*`` maps."""
    names = set(names)
    out = []
    if names & {"uv_expanded", "body_mask_expanded", "canon_expanded"}:
        out.append("expanded")
    if names & {"canon", "canon_expanded", "prev_canon"}:
        out.append("canonical")
    if names & set(previous_inputs(ALL_INPUTS)):
        out.append("temporal")
    return tuple(out)


def extras_inputs(extras: Iterable[str]) -> tuple[str, ...]:
    """Renderer inputs a dataset built with ``extras`` holds beyond :data:`BASE_INPUTS`
    (:data:`DATA_EXTRAS`, plus ``canon_expanded`` / ``prev_canon`` when ``canonical`` comes
    with ``expanded`` / ``temporal``)."""
    extras = tuple(extras)
    out: list[str] = []
    for e in extras:
        out += DATA_EXTRAS.get(e, ())
    if "canonical" in extras:
        if "expanded" in extras:
            out.append("canon_expanded")
        if "temporal" in extras:
            out.append("prev_canon")
    return tuple(out)


def previous_inputs(names: Iterable[str]) -> tuple[str, ...]:
    """The ``prev_*`` inputs among ``names`` (those with a ``previous_of``)."""
    return tuple(n for n in names if n in INPUTS and INPUTS[n].previous_of is not None)


def uses_previous(names: Iterable[str]) -> bool:
    """True when ``names`` hold a previous-frame input (temporal attention)."""
    return bool(previous_inputs(names))


def previous_frame_indices(frames, valid) -> np.ndarray:
    """The previous-frame rule on capture frames (module docstring).

    Args:
        frames: (N,) frame indices of a capture.
        valid: (T,) bool, the capture's valid (fitted) frames.
    Returns:
        (N,) int64: ``t - 1`` where ``t - 1 >= 0`` and ``valid[t - 1]``, else ``t``.
    """
    frames = np.asarray(frames, dtype=np.int64)
    valid = np.asarray(valid, bool)
    prev = frames - 1
    ok = prev >= 0
    ok[ok] = valid[prev[ok]]
    return np.where(ok, prev, frames)


def to_storage(name: str, value: torch.Tensor) -> torch.Tensor:
    """A float map in its compact ``storage`` dtype (``float16``; ``uint8`` 0/1 masks; ``uint8``
    0..255 for drawn maps, rounded). Unknown names are returned as float32 (e.g. hand boxes)."""
    s = INPUTS.get(name)
    if s is None:
        return value.float()
    if s.storage == "uint8":
        return (value * 255).round().to(torch.uint8)
    if s.storage == "mask":
        return value.to(torch.uint8)
    return value.half()


def to_float(name: str, value: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_storage`: the float32 renderer input (``uint8`` maps / 255)."""
    s = INPUTS.get(name)
    if s is not None and s.storage == "uint8":
        return value.float() / 255.0
    return value.float()


def onnx_inputs(names: Iterable[str], resolution: int, batch: str | int = "batch") -> list[dict]:
    """ONNX input descriptions of a renderer reading ``names`` at ``resolution``:
    ``[{"name", "shape": [batch, C, S, S], "dtype": "float32"}, ...]`` in the given order.

    Raises:
        ValueError: an unknown name (:func:`check_names`).
    """
    names = check_names(names)
    S = int(resolution)
    return [{"name": n, "shape": [batch, INPUTS[n].channels, S, S], "dtype": INPUTS[n].dtype}
            for n in names]


def check_feed(feed: Mapping[str, torch.Tensor], names: Iterable[str], resolution: int) -> None:
    """Check a renderer feed: every input of ``names`` present with shape ``(B, C, S, S)``.

    Raises:
        ValueError: a missing input or a wrong shape (the message names the input and the
            expected shape).
    """
    S = int(resolution)
    for n in names:
        if n not in feed:
            raise ValueError(f"renderer input {n!r} is missing (the renderer reads "
                             f"{', '.join(names)})")
        shape = tuple(feed[n].shape)
        want = (INPUTS[n].channels, S, S)
        if len(shape) != 4 or shape[1:] != want:
            raise ValueError(f"renderer input {n!r} has shape {shape}, expected (B, {want[0]}, "
                             f"{S}, {S})")
