"""Weights-free image statistics of rendered avatar frames that need no ground truth.

An avatar driven by another person's video (``ram-avatar drive``) has no ground-truth image to
compare with, so PSNR/SSIM/LPIPS do not apply. These statistics judge the rendered frames
against what the renderer was given (the driven body's silhouette) and against what it was
trained on (the subject's captured frames). They are used to compare the avatar driven with and
without motion distribution alignment (RAM-Avatar Sec. 3.3) on the same clip; absolute values
are best read next to the same statistics of the subject's own held-out poses (the
``heldout_reference`` of :func:`ram_avatar.drive.write_render_report`).

All images are (T,H,W,3) uint8 RGB, masks (T,H,W) bool, at the renderer resolution S = H = W.

Statistics (keys of :func:`render_stats`):

``silhouette_iou`` (fraction, 0..1, higher is better)
    Per-frame IoU between the *rendered person* and the *driven silhouette* (the ``body_mask``
    conditioning map), averaged over frames. The rendered person is where the frame differs from
    the renderer's learned background by more than ``person_threshold`` in some channel
    (:func:`rendered_person_mask`; the ONNX export outputs rgb only, no alpha). Low values mean
    the renderer dropped body parts (unfamiliar poses often render as background) or painted
    person outside the body. The subject's hair and loose clothes extend past the template, so
    even a perfect render stays below 1; and a renderer with an alpha prior from the body mask
    (``RendererConfig.alpha_mask_prior``) follows the silhouette by construction, so this mostly
    catches gross failures (missing limbs, person colour close to the background). Also reported: ``silhouette_coverage`` (fraction of
    silhouette pixels rendered as person, recall; higher is better) and ``person_spill``
    (fraction of rendered-person pixels outside the silhouette; lower is better).
``colour_w1_L``, ``colour_w1_a``, ``colour_w1_b``, ``colour_w1_mean`` (CIELAB units; lower is better)
    1-D Wasserstein-1 (earth mover's) distance, per Lab channel, between the pooled pixels of the
    rendered frames inside the driven silhouette and the pooled pixels of the subject's training
    frames inside their fitted-body silhouette (:func:`colour_distance`). L is in L* points
    (0..100), a and b in a*/b* units. A constant colour shift of d units in one channel gives
    exactly d. Large values: the avatar's clothes/skin colours are off (washed out, background
    showing through, wrong colours in unfamiliar poses).
``temporal_diff`` (mean absolute intensity, 0..1 per channel; lower is steadier)
    Mean |I_t - I_{t-1}| over the pixels inside the union of the silhouettes of t-1 and t,
    averaged over consecutive frame pairs. Real motion also changes pixels, so compare variants
    of the same clip only, alongside ``silhouette_change``.
``temporal_jitter`` (mean absolute intensity, 0..1; lower is steadier)
    Mean |I_t - (I_{t-1} + I_{t+1}) / 2| inside the union of the three silhouettes: a second
    difference, which cancels motion at constant velocity and mostly measures flicker and
    frame-to-frame popping.
``silhouette_change`` (fraction, 0..1; context, not a quality score)
    Mean 1 - IoU(silhouette_t, silhouette_{t-1}): how much the driven body itself moves per frame.
``sharpness`` (grey levels squared; context) and ``sharpness_ratio`` (ratio; closest to 1 is best)
    Variance of the 3x3 Laplacian of the grey image (0..255) inside the silhouette eroded by
    ``erode_px`` pixels (so the person/background edge does not count), averaged over frames
    (:func:`laplacian_variance`); the ratio divides by the same value of the training frames
    inside their silhouettes. Below 1: blurrier than the captured person; well above 1: noise
    or high-frequency artefacts.
``speckle`` (CIELAB a*b* units, RMS; context) and ``speckle_ratio`` (ratio; lower is better, 1 =
as clean as the captured person)
    Colour speckle: the high-frequency chroma residual inside the person. Per frame, the a* and
    b* channels (CIELAB, OpenCV's float conversion of RGB in 0..1) minus their 5x5 median
    filter, r = (a - med5(a), b - med5(b)); the frame's value is sqrt(mean |r|^2) over the
    silhouette eroded by ``erode_px`` pixels (the median window stays inside the person);
    averaged over the frames whose eroded silhouette has at least 16 pixels
    (:func:`chroma_speckle`). Its square is the mean high-frequency colour energy. A median
    keeps straight colour edges (dress/skin) and smooth shading, so multicoloured per-pixel
    noise scores high while smooth skin scores near 0; luminance-only texture barely moves
    a*/b*. ``speckle_ratio`` divides by the training frames' value inside their silhouettes.
``coverage_<part>`` for every part of :data:`ram_avatar.body.base.PART_NAMES` (fraction, 0..1,
higher is better) and ``arm_coverage``
    Per-part silhouette coverage: the driven mesh is rasterised with a body-part label per face
    (:func:`part_label_maps`: each vertex belongs to the part of its max-weight skinning joint,
    :meth:`ram_avatar.body.base.BodyModel.vertex_parts`); in each frame,
    coverage_p = |visible part-p pixels rendered as person| / |visible part-p pixels|, with the
    rendered person of :func:`rendered_person_mask`. Frames where part p has fewer than
    ``MIN_PART_PIXELS`` visible pixels are skipped for p; the mean is over the remaining
    frames (``part_frames[p]`` of them, with ``part_pixels[p]`` visible pixels per frame on
    average). ``arm_coverage`` is the mean of ``coverage_left_arm`` and ``coverage_right_arm``
    (shoulder to wrist, hands excluded). An arm that renders as background, or shrinks to a
    line thinner than the 3x3 opening of the person mask, lowers it.

``part_colour_distance`` {group: CIELAB units; lower is better}
    Per-part colour fidelity. The part groups are :data:`PART_GROUPS` (``head``, ``torso``,
    ``arms`` = both arms shoulder to wrist, ``hands`` = both hands, ``legs``). For each group g,
    the pixels labelled g (:func:`part_label_maps`, the union of the group's labels eroded by
    ``PART_ERODE_PX`` pixels so that part edges and mislabelled borders do not count;
    :func:`part_masks`) are pooled over the rendered frames, and the same part's pixels are
    pooled over the subject's training frames (labels of the fitted training meshes, further
    restricted to the capture's person mask so that fit errors over the real background do not
    count); the value is the mean over L*, a*, b* of the per-channel 1-D Wasserstein-1 distance
    between the two pools, (W1_L + W1_a + W1_b) / 3 (:func:`part_colour_distance`), in Lab units
    as ``colour_w1_mean``: a constant shift of d in one channel gives d / 3. Rendered pixels are
    *not* restricted to the rendered person: an arm that renders as background is scored with
    the background's colour. NaN (JSON null) when either pool has fewer than
    ``MIN_PART_PIXELS`` pixels. An arm rendered in the shirt/dress colour scores about the
    distance between the arm's and the torso's training colours.
``arm_fidelity_left``, ``arm_fidelity_right``, ``arm_fidelity`` (fraction, 0..1, higher is better)
    Does the arm look like an arm? Two colour models are built from the training frames' pixels
    above: the arms' and the torso's CIELAB histograms (:class:`LabHistogram`: ``LAB_HIST_BINS``
    bins over L* 0..100 and a*, b* -128..128, Gaussian-smoothed by ``LAB_HIST_SIGMA`` bins, plus
    a uniform floor of ``LAB_HIST_FLOOR`` of the mass). A pixel is arm-coloured when
    p(colour | arms) > p(colour | torso) and p(colour | arms) > 1 / n_bins, i.e. the arms' model
    beats both the torso's and a uniform "any other colour" model (so colours the arms were
    never seen in, such as multicoloured speckle, do not count). In each frame, over the eroded
    labels of one arm, arm_fidelity = |pixels rendered as person (:func:`rendered_person_mask`)
    and arm-coloured| / |arm pixels| (:func:`arm_fidelity`); frames where the eroded arm has
    fewer than ``MIN_PART_PIXELS`` pixels are skipped; per-side means over the scored frames,
    ``arm_fidelity`` = mean of the sides that exist. An arm that vanished into the dress (torso
    colours), rendered as background, or broken into unseen colours scores ~0; it never exceeds
    the arm's coverage. Colours the arm shares with the torso (a sleeve of the shirt's fabric)
    count for the torso, so even the captured person scores below 1: read it next to
    ``training_reference.arm_fidelity`` of the drive report (the captured person on the
    training frames the colour models come from, in-sample), ``captured_heldout`` (the real
    held-out frames with the capture's person mask as "person": fitted-mesh arms that miss the
    real arm count against it, so it is no ceiling) and the ``heldout_reference`` (the avatar
    rendered in the held-out poses). ``fidelity_frames`` gives the scored frames per arm.

Everything here is numpy + OpenCV (+ scipy's Gaussian filter), deterministic, and CPU-only,
except :func:`part_label_maps` (which poses and rasterises the body model with torch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

#: a pixel belongs to the rendered person when some channel differs from the learned
#: background by more than this (fraction of the 0..255 range)
PERSON_THRESHOLD = 0.1
#: pixels pooled per colour distribution (random subsample with a fixed seed)
MAX_PIXELS = 200_000
#: quantiles used for the 1-D Wasserstein distance
QUANTILES = 1024
#: erosion (pixels) of the silhouette for the sharpness and speckle statistics
ERODE_PX = 3
#: aperture (pixels) of the median filter whose residual is the chroma speckle (OpenCV's
#: float median supports 3 and 5)
SPECKLE_MEDIAN = 5
#: a body part with fewer visible pixels than this in a frame is not scored in that frame
MIN_PART_PIXELS = 20
#: body-part groups of the per-part colour statistics (left and right pooled)
PART_GROUPS = {"head": ("head",), "torso": ("torso",), "arms": ("left_arm", "right_arm"),
               "hands": ("left_hand", "right_hand"), "legs": ("legs",)}
#: erosion (pixels) of each part's label mask for the per-part colour statistics
PART_ERODE_PX = 1
#: bins of the CIELAB colour histograms (L* over 0..100, a* and b* over -128..128)
LAB_HIST_BINS = (10, 32, 32)
#: Gaussian smoothing of the colour histograms, in bins
LAB_HIST_SIGMA = 1.0
#: fraction of the histogram mass spread uniformly over all bins (unseen colours)
LAB_HIST_FLOOR = 1e-3


def _check_frames(frames: np.ndarray, name: str = "frames") -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{name} must be (T,H,W,3) uint8 RGB, got {frames.shape} {frames.dtype}")
    return frames


def _check_masks(masks: np.ndarray, frames: np.ndarray, name: str = "masks") -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim == 4 and masks.shape[1] == 1:  # (T,1,H,W) conditioning-map layout
        masks = masks[:, 0]
    if masks.shape != frames.shape[:3]:
        raise ValueError(f"{name} must be (T,H,W) matching the frames {frames.shape[:3]}, got {masks.shape}")
    return masks.astype(bool)


def rendered_person_mask(frames: np.ndarray, background: np.ndarray,
                         threshold: float = PERSON_THRESHOLD) -> np.ndarray:
    """Where the rendered frames differ from the renderer's learned background.

    Args:
        frames: (T,H,W,3) uint8 rendered RGB.
        background: (H,W,3) uint8, the renderer's output for empty conditioning maps.
        threshold: max-over-channels absolute difference, as a fraction of 255.
    Returns:
        (T,H,W) bool, cleaned with a 3x3 morphological opening (isolated pixels dropped).
    """
    frames = _check_frames(frames)
    bg = np.asarray(background)
    if bg.shape != frames.shape[1:]:
        raise ValueError(f"background must be {frames.shape[1:]}, got {bg.shape}")
    diff = np.abs(frames.astype(np.int16) - bg.astype(np.int16)[None]).max(-1)
    person = (diff > threshold * 255).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    return np.stack([cv2.morphologyEx(p, cv2.MORPH_OPEN, kernel) for p in person]).astype(bool)


def silhouette_agreement(person: np.ndarray, silhouette: np.ndarray) -> dict[str, float]:
    """IoU, coverage (recall) and spill of a rendered-person mask against the driven silhouette.

    Args:
        person, silhouette: (T,H,W) bool.
    Returns:
        ``silhouette_iou``, ``silhouette_coverage``, ``person_spill``: per-frame values averaged
        over the frames where they are defined (NaN when never defined).
    """
    person, silhouette = np.asarray(person, bool), np.asarray(silhouette, bool)
    if person.shape != silhouette.shape:
        raise ValueError(f"mask shapes differ: {person.shape} vs {silhouette.shape}")
    ax = (1, 2)
    inter = (person & silhouette).sum(ax).astype(np.float64)
    union = (person | silhouette).sum(ax).astype(np.float64)
    n_sil, n_person = silhouette.sum(ax).astype(np.float64), person.sum(ax).astype(np.float64)

    def ratio(num, den):
        ok = den > 0
        return float(np.mean(num[ok] / den[ok])) if ok.any() else math.nan

    return {"silhouette_iou": ratio(inter, union), "silhouette_coverage": ratio(inter, n_sil),
            "person_spill": ratio(n_person - inter, n_person)}


def lab_pixels(frames: np.ndarray, masks: np.ndarray, max_pixels: int = MAX_PIXELS,
               seed: int = 0) -> np.ndarray:
    """CIELAB values of the masked pixels of all frames, pooled.

    Returns:
        (N,3) float32 [L* (0..100), a*, b*]; a random subsample (fixed ``seed``) of at most
        ``max_pixels`` pixels; (0,3) when the masks are empty.
    """
    frames = _check_frames(frames)
    masks = _check_masks(masks, frames)
    rgb = frames[masks]  # (N,3) uint8
    if len(rgb) > max_pixels:
        rgb = rgb[np.random.default_rng(seed).choice(len(rgb), max_pixels, replace=False)]
    if len(rgb) == 0:
        return np.zeros((0, 3), np.float32)
    lab = cv2.cvtColor((rgb.astype(np.float32) / 255.0)[:, None], cv2.COLOR_RGB2Lab)
    return lab[:, 0]


def wasserstein_1d(x: np.ndarray, y: np.ndarray, quantiles: int = QUANTILES) -> float:
    """Wasserstein-1 distance between two 1-D samples, via their quantile functions:
    the mean over q = (i + 0.5)/n of |Q_x(q) - Q_y(q)|. Same units as the samples; NaN when
    either sample is empty."""
    if len(x) == 0 or len(y) == 0:
        return math.nan
    q = (np.arange(quantiles) + 0.5) / quantiles
    return float(np.mean(np.abs(np.quantile(x, q) - np.quantile(y, q))))


def colour_distance(lab_a: np.ndarray, lab_b: np.ndarray) -> dict[str, float]:
    """Per-channel Wasserstein-1 distance (Lab units) between two pooled Lab pixel sets.

    Returns:
        ``colour_w1_L``, ``colour_w1_a``, ``colour_w1_b`` and their mean ``colour_w1_mean``.
    """
    out = {f"colour_w1_{c}": wasserstein_1d(lab_a[:, i], lab_b[:, i]) for i, c in enumerate("Lab")}
    out["colour_w1_mean"] = float(np.mean(list(out.values())))
    return out


def temporal_stats(frames: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """First and second temporal differences inside the person, and the silhouette's own change.

    Args:
        frames: (T,H,W,3) uint8 consecutive frames; masks: (T,H,W) bool person masks.
    Returns:
        ``temporal_diff`` (T >= 2), ``temporal_jitter`` (T >= 3), ``silhouette_change``
        (T >= 2), in intensity fractions 0..1 (module docstring); NaN when undefined.
    """
    frames = _check_frames(frames)
    masks = _check_masks(masks, frames)
    f = frames.astype(np.float32) / 255.0
    diff, jitter, change = [], [], []
    for t in range(1, len(f)):
        m = masks[t] | masks[t - 1]
        if m.any():
            diff.append(float(np.abs(f[t] - f[t - 1])[m].mean()))
            change.append(1.0 - float((masks[t] & masks[t - 1]).sum()) / float(m.sum()))
        if t + 1 < len(f):
            m3 = m | masks[t + 1]
            if m3.any():
                jitter.append(float(np.abs(f[t] - 0.5 * (f[t - 1] + f[t + 1]))[m3].mean()))
    mean = lambda v: float(np.mean(v)) if v else math.nan  # noqa: E731
    return {"temporal_diff": mean(diff), "temporal_jitter": mean(jitter), "silhouette_change": mean(change)}


def _check_parts(frames: np.ndarray, parts, person) -> tuple:
    """Checked (T,H,W,3) frames, (T,H,W) part labels and optional (T,H,W) bool person masks."""
    frames = _check_frames(frames)
    parts = np.asarray(parts)
    if parts.shape != frames.shape[:3]:
        raise ValueError(f"part labels {parts.shape} do not match the frames {frames.shape[:3]}")
    if person is not None:
        person = _check_masks(person, frames, "person")
    return frames, parts, person


def _eroded_frames(frames: np.ndarray, masks: np.ndarray, erode_px: int):
    """Yield (image, eroded bool mask) of the frames whose eroded mask has at least 16 pixels."""
    kernel = np.ones((2 * erode_px + 1, 2 * erode_px + 1), np.uint8) if erode_px > 0 else None
    for img, m in zip(frames, masks):
        m = m.astype(np.uint8)
        if kernel is not None:
            m = cv2.erode(m, kernel)
        m = m.astype(bool)
        if m.sum() >= 16:
            yield img, m


def laplacian_variance(frames: np.ndarray, masks: np.ndarray, erode_px: int = ERODE_PX) -> float:
    """Variance of the 3x3 Laplacian of the grey image (0..255) inside each eroded mask,
    averaged over the frames whose eroded mask has at least 16 pixels (NaN when none has)."""
    frames = _check_frames(frames)
    masks = _check_masks(masks, frames)
    vals = []
    for img, m in _eroded_frames(frames, masks, erode_px):
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float64)
        vals.append(float(cv2.Laplacian(grey, cv2.CV_64F, ksize=1)[m].var()))
    return float(np.mean(vals)) if vals else math.nan


def chroma_speckle(frames: np.ndarray, masks: np.ndarray, erode_px: int = ERODE_PX,
                   median: int = SPECKLE_MEDIAN) -> float:
    """High-frequency colour (chroma) residual inside the person (module docstring, ``speckle``).

    Args:
        frames: (T,H,W,3) uint8 RGB; masks: (T,H,W) bool person silhouettes.
        erode_px: erosion of each mask before measuring (pixels).
        median: median-filter aperture, 3 or 5 pixels.
    Returns:
        sqrt(mean(|(a, b) - med(a, b)|^2)) in CIELAB a*b* units, averaged over the frames whose
        eroded mask has at least 16 pixels; NaN when none has.
    Raises:
        ValueError: bad shapes or an aperture OpenCV cannot apply to float images.
    """
    frames = _check_frames(frames)
    masks = _check_masks(masks, frames)
    if median not in (3, 5):
        raise ValueError(f"median aperture must be 3 or 5, got {median}")
    vals = []
    for img, m in _eroded_frames(frames, masks, erode_px):
        lab = cv2.cvtColor(img.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
        res = [lab[..., c] - cv2.medianBlur(np.ascontiguousarray(lab[..., c]), median) for c in (1, 2)]
        vals.append(float(np.sqrt(np.mean(res[0][m] ** 2 + res[1][m] ** 2))))
    return float(np.mean(vals)) if vals else math.nan


def part_label_maps(body, params, K: np.ndarray, size: int, backend: str = "auto",
                    chunk: int = 16) -> np.ndarray:
    """Body-part label of every pixel of the posed bodies, as the conditioning maps see them.

    Poses ``body`` with ``params``, rasterises it (:func:`ram_avatar.render.rasterizer.rasterize`,
    same camera and backend as the ``body_mask`` map) and labels each covered pixel with its
    face's part (:meth:`ram_avatar.body.base.BodyModel.face_parts`).

    Args:
        body: a :class:`ram_avatar.body.base.BodyModel`.
        params: BodyParams of T poses.
        K: (3,3) intrinsics of the S x S crop (``crop_intrinsics``).
        size: S, pixels.
        backend: rasterizer backend.
        chunk: poses per batch.
    Returns:
        (T,S,S) int8: part index into ``PART_NAMES``, -1 where no body covers the pixel.
    """
    import torch

    from ram_avatar.render.rasterizer import rasterize

    face_part = torch.as_tensor(body.face_parts(), dtype=torch.int8)
    Kt = torch.as_tensor(np.asarray(K), dtype=torch.float32, device=body.device)
    T, out = params.batch_size, []
    with torch.no_grad():
        for c in range(0, T, chunk):
            idx = torch.arange(c, min(T, c + chunk))
            verts = body(params.index(idx).to(body.device), return_vertices=True).vertices
            fid = rasterize(verts, body.faces, Kt, (size, size), backend=backend).face_id.cpu()
            lab = torch.full(fid.shape, -1, dtype=torch.int8)
            hit = fid >= 0
            lab[hit] = face_part[fid[hit]]
            out.append(lab.numpy())
    return np.concatenate(out) if out else np.zeros((0, size, size), np.int8)


def part_coverage(person: np.ndarray, parts: np.ndarray, min_pixels: int = MIN_PART_PIXELS,
                  part_names: Sequence[str] | None = None) -> dict:
    """Per-part silhouette coverage of the rendered person (module docstring, ``coverage_*``).

    Args:
        person: (T,H,W) bool rendered-person mask.
        parts: (T,H,W) int part labels (:func:`part_label_maps`), -1 = no body.
        min_pixels: frames where a part has fewer visible pixels are skipped for it.
        part_names: label names (default ``PART_NAMES`` of the body models).
    Returns:
        dict: ``coverage_<part>`` (mean over the scored frames, NaN when none), ``arm_coverage``
        (mean of the two arms' values that exist), ``part_pixels`` {part: mean visible pixels
        per scored frame}, ``part_frames`` {part: scored frames}, and ``per_frame``
        {part: (T,) float, NaN where skipped} for captions.
    Raises:
        ValueError: shapes differ.
    """
    if part_names is None:
        from ram_avatar.body.base import PART_NAMES as part_names
    person, parts = np.asarray(person, bool), np.asarray(parts)
    if person.shape != parts.shape:
        raise ValueError(f"person mask {person.shape} and part labels {parts.shape} differ")
    out: dict = {"part_pixels": {}, "part_frames": {}, "per_frame": {}}
    for p, name in enumerate(part_names):
        sel = parts == p
        n = sel.sum((1, 2)).astype(np.float64)
        hit = (sel & person).sum((1, 2)).astype(np.float64)
        ok = n >= min_pixels
        per = np.full(len(n), np.nan)
        per[ok] = hit[ok] / n[ok]
        out[f"coverage_{name}"] = float(per[ok].mean()) if ok.any() else math.nan
        out["part_pixels"][name] = float(n[ok].mean()) if ok.any() else 0.0
        out["part_frames"][name] = int(ok.sum())
        out["per_frame"][name] = per
    arms = [out.get(f"coverage_{s}_arm", math.nan) for s in ("left", "right")]
    arms = [a for a in arms if not math.isnan(a)]
    out["arm_coverage"] = float(np.mean(arms)) if arms else math.nan
    return out


def _part_index(part_names: Sequence[str] | None) -> dict[str, int]:
    if part_names is None:
        from ram_avatar.body.base import PART_NAMES as part_names
    return {n: i for i, n in enumerate(part_names)}


def part_masks(parts: np.ndarray, names: Sequence[str], erode_px: int = PART_ERODE_PX,
               part_names: Sequence[str] | None = None) -> np.ndarray:
    """Pixels labelled as any of the parts ``names``, eroded.

    Args:
        parts: (T,H,W) int part labels (:func:`part_label_maps`), -1 = no body.
        names: part names (of ``part_names``) whose union is taken, e.g. ``("left_arm",)``.
        erode_px: erosion of the union, pixels ((2e+1)^2 square; 0 = none).
        part_names: label names (default ``PART_NAMES`` of the body models).
    Returns:
        (T,H,W) bool.
    Raises:
        ValueError: a name that is not a part.
    """
    index = _part_index(part_names)
    unknown = [n for n in names if n not in index]
    if unknown:
        raise ValueError(f"unknown body parts {unknown}; known: {list(index)}")
    parts = np.asarray(parts)
    sel = np.isin(parts, [index[n] for n in names])
    if erode_px <= 0:
        return sel
    kernel = np.ones((2 * erode_px + 1, 2 * erode_px + 1), np.uint8)
    return np.stack([cv2.erode(m, kernel) for m in sel.astype(np.uint8)]).astype(bool) \
        if len(sel) else sel


def _lab(rgb: np.ndarray) -> np.ndarray:
    """(N,3) uint8 RGB -> (N,3) float32 CIELAB (OpenCV's float conversion)."""
    if len(rgb) == 0:
        return np.zeros((0, 3), np.float32)
    return cv2.cvtColor((rgb.astype(np.float32) / 255.0)[:, None], cv2.COLOR_RGB2Lab)[:, 0]


def part_lab_pixels(frames: np.ndarray, parts: np.ndarray, person: np.ndarray | None = None,
                    erode_px: int = PART_ERODE_PX, groups: Mapping[str, Sequence[str]] = PART_GROUPS,
                    max_pixels: int = MAX_PIXELS, seed: int = 0,
                    part_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """CIELAB pixels of every part group, pooled over frames (module docstring,
    ``part_colour_distance``).

    Args:
        frames: (T,H,W,3) uint8 RGB; parts: (T,H,W) int part labels of the same frames.
        person: optional (T,H,W) bool; only pixels inside it count (the capture's person mask
            for real frames).
        erode_px: erosion of each group's label mask (:func:`part_masks`).
        groups: group name -> part names.
        max_pixels, seed: per-group random subsample, as :func:`lab_pixels`.
    Returns:
        {group: (N_g,3) float32 [L*, a*, b*]} ((0,3) when the group is not visible).
    Raises:
        ValueError: shapes differ.
    """
    frames, parts, person = _check_parts(frames, parts, person)
    out = {}
    for g, names in groups.items():
        m = part_masks(parts, names, erode_px, part_names)
        if person is not None:
            m &= person
        out[g] = lab_pixels(frames, m, max_pixels, seed)
    return out


def part_colour_distance(lab: Mapping[str, np.ndarray], ref_lab: Mapping[str, np.ndarray],
                         min_pixels: int = MIN_PART_PIXELS) -> dict[str, float]:
    """Mean over L*, a*, b* of the per-channel Wasserstein-1 distance between the rendered and
    the training pixels of each part group (module docstring).

    Args:
        lab, ref_lab: {group: (N,3) Lab pixels} (:func:`part_lab_pixels`).
        min_pixels: a group with fewer pixels on either side gets NaN.
    Returns:
        {group: distance in Lab units} for every group of ``lab``.
    """
    out = {}
    for g, x in lab.items():
        y = ref_lab.get(g, np.zeros((0, 3)))
        out[g] = (colour_distance(x, y)["colour_w1_mean"]
                  if len(x) >= min_pixels and len(y) >= min_pixels else math.nan)
    return out


class LabHistogram:
    """A smoothed CIELAB colour histogram: a small non-parametric colour model.

    ``LAB_HIST_BINS`` bins over L* 0..100, a* and b* -128..128 (values outside are clamped to
    the edge bins), counts smoothed by a Gaussian of ``sigma`` bins (scipy.ndimage), normalised,
    with ``floor`` of the mass spread uniformly so that unseen colours keep a small,
    model-independent probability.

    Args:
        lab: (N,3) Lab pixels (N >= 1).
    Raises:
        ValueError: no pixels or not (N,3).
    """

    LO = np.array([0.0, -128.0, -128.0])
    HI = np.array([100.0, 128.0, 128.0])

    def __init__(self, lab: np.ndarray, bins: Sequence[int] = LAB_HIST_BINS,
                 sigma: float = LAB_HIST_SIGMA, floor: float = LAB_HIST_FLOOR):
        from scipy.ndimage import gaussian_filter

        lab = np.asarray(lab, np.float64)
        if lab.ndim != 2 or lab.shape[1] != 3 or len(lab) == 0:
            raise ValueError(f"a colour histogram needs (N>=1, 3) Lab pixels, got {lab.shape}")
        self.bins = tuple(int(b) for b in bins)
        flat = np.ravel_multi_index(tuple(self._index(lab).T), self.bins)
        h = np.bincount(flat, minlength=int(np.prod(self.bins))).reshape(self.bins).astype(np.float64)
        if sigma > 0:
            h = gaussian_filter(h, sigma, mode="constant")
        h /= h.sum()
        self.log_p = np.log((1.0 - floor) * h + floor / h.size)
        #: log probability of a bin under a uniform colour distribution over the same bins
        self.log_uniform = -math.log(h.size)
        self.pixels = len(lab)

    def _index(self, lab: np.ndarray) -> np.ndarray:
        b = np.array(self.bins)
        i = np.floor((np.asarray(lab, np.float64) - self.LO) / (self.HI - self.LO) * b).astype(np.int64)
        return np.clip(i, 0, b - 1)

    def log_prob(self, lab: np.ndarray) -> np.ndarray:
        """(N,3) Lab -> (N,) log probability of each pixel's bin (comparable between models with
        the same bins)."""
        return self.log_p[tuple(self._index(lab).T)]


def arm_fidelity(frames: np.ndarray, parts: np.ndarray, arm_model: LabHistogram,
                 torso_model: LabHistogram, person: np.ndarray | None = None,
                 erode_px: int = PART_ERODE_PX, min_pixels: int = MIN_PART_PIXELS,
                 part_names: Sequence[str] | None = None) -> dict:
    """Fraction of each arm's pixels that are person and arm-coloured (module docstring).

    Args:
        frames: (T,H,W,3) uint8 RGB; parts: (T,H,W) int part labels of the same frames.
        arm_model, torso_model: colour models of the subject's arms and torso
            (:class:`LabHistogram` of the training frames' pixels).
        person: (T,H,W) bool pixels that show the person (rendered: :func:`rendered_person_mask`;
            real: the capture's mask); None = every pixel.
        erode_px: erosion of each arm's label mask; min_pixels: frames where the eroded arm has
            fewer pixels are skipped for it.
    Returns:
        ``arm_fidelity_left``, ``arm_fidelity_right`` (NaN when never scored), ``arm_fidelity``
        (mean of the sides that exist), ``fidelity_frames`` {arm: scored frames} and
        ``per_frame`` {arm: (T,) float, NaN where skipped}.
    Raises:
        ValueError: shapes differ.
    """
    frames, parts, person = _check_parts(frames, parts, person)
    T = len(frames)
    out: dict = {"fidelity_frames": {}, "per_frame": {}}
    vals = []
    for side in ("left", "right"):
        name = f"{side}_arm"
        m = part_masks(parts, (name,), erode_px, part_names)
        t_idx = np.nonzero(m)[0]
        lab = _lab(frames[m])
        log_arm = arm_model.log_prob(lab)
        good = (log_arm > torso_model.log_prob(lab)) & (log_arm > arm_model.log_uniform)
        if person is not None:
            good &= person[m]
        n = np.bincount(t_idx, minlength=T).astype(np.float64)
        hit = np.bincount(t_idx, weights=good.astype(np.float64), minlength=T)
        ok = n >= min_pixels
        per = np.full(T, np.nan)
        per[ok] = hit[ok] / n[ok]
        v = float(per[ok].mean()) if ok.any() else math.nan
        out[f"arm_fidelity_{side}"] = v
        out["fidelity_frames"][name] = int(ok.sum())
        out["per_frame"][name] = per
        if not math.isnan(v):
            vals.append(v)
    out["arm_fidelity"] = float(np.mean(vals)) if vals else math.nan
    return out


def part_appearance_stats(frames: np.ndarray, parts: np.ndarray, reference: "TrainingReference",
                          person: np.ndarray | None = None) -> dict:
    """``part_colour_distance`` and the ``arm_fidelity`` keys of one clip against the training
    reference (module docstring).

    Args:
        frames: (T,H,W,3) uint8 RGB (rendered or real); parts: (T,H,W) their part labels.
        reference: a :class:`TrainingReference` built with part labels.
        person: person pixels for :func:`arm_fidelity` (None = all).
    Returns:
        dict with ``part_colour_distance`` {group: Lab units} and, when the reference has arm and
        torso colour models, ``arm_fidelity``, ``arm_fidelity_left``, ``arm_fidelity_right``,
        ``fidelity_frames``; empty when the reference has no part colours.
    """
    if reference.part_lab is None:
        return {}
    out: dict = {}
    if reference.arm_model is not None and reference.torso_model is not None:
        fid = arm_fidelity(frames, parts, reference.arm_model, reference.torso_model, person)
        out.update({k: fid[k] for k in ("arm_fidelity", "arm_fidelity_left", "arm_fidelity_right",
                                        "fidelity_frames")})
    out["part_colour_distance"] = part_colour_distance(part_lab_pixels(frames, parts),
                                                       reference.part_lab)
    return out


class TrainingReference:
    """The subject's captured look: pooled Lab pixels, sharpness and chroma speckle of real
    training crops, and with part labels the per-part colours and the arm/torso colour models.

    Args:
        images: (N,S,S,3) uint8 real frames cropped as for training.
        masks: (N,S,S) bool fitted-body silhouettes of those frames (the ``body_mask`` map).
        parts: optional (N,S,S) int part labels of the fitted meshes (:func:`part_label_maps`);
            with them ``part_lab`` ({group: (N_g,3) Lab}, :func:`part_lab_pixels`) and, when
            both have at least ``MIN_PART_PIXELS`` pixels, ``arm_model`` / ``torso_model``
            (:class:`LabHistogram`) and ``arm_fidelity`` (``arm_fidelity``,
            ``arm_fidelity_left``, ``arm_fidelity_right`` of these same frames, in-sample: what
            the captured person scores) are set (else None).
        person: optional (N,S,S) bool capture person masks of the frames; part pixels outside
            them (fit errors over the background) are left out.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, erode_px: int = ERODE_PX,
                 parts: np.ndarray | None = None, person: np.ndarray | None = None):
        self.lab = lab_pixels(images, masks, seed=1)
        self.sharpness = laplacian_variance(images, masks, erode_px)
        self.speckle = chroma_speckle(images, masks, erode_px)
        self.frames = len(images)
        self.part_lab: dict[str, np.ndarray] | None = None
        self.arm_model = self.torso_model = None
        self.arm_fidelity: dict[str, float] | None = None
        if parts is not None:
            self.part_lab = part_lab_pixels(images, parts, person, seed=2)
            arms, torso = self.part_lab.get("arms", ()), self.part_lab.get("torso", ())
            if len(arms) >= MIN_PART_PIXELS and len(torso) >= MIN_PART_PIXELS:
                self.arm_model, self.torso_model = LabHistogram(arms), LabHistogram(torso)
                fid = arm_fidelity(images, parts, self.arm_model, self.torso_model, person)
                self.arm_fidelity = json_floats({k: fid[k] for k in (
                    "arm_fidelity", "arm_fidelity_left", "arm_fidelity_right")})

    def part_pixels(self) -> dict[str, int]:
        """{group: pooled training pixels} of the per-part colours ({} without part labels)."""
        return {g: int(len(v)) for g, v in (self.part_lab or {}).items()}


def render_stats(frames: np.ndarray, silhouettes: np.ndarray, background: np.ndarray,
                 reference: TrainingReference | None = None,
                 person_threshold: float = PERSON_THRESHOLD, erode_px: int = ERODE_PX,
                 parts: np.ndarray | None = None) -> dict:
    """All statistics of the module docstring for one rendered clip.

    Args:
        frames: (T,S,S,3) uint8 rendered avatar frames (consecutive).
        silhouettes: (T,S,S) (or (T,1,S,S)) driven body silhouettes (``body_mask`` maps).
        background: (S,S,3) uint8 learned background (renderer output for empty maps).
        reference: training-frame reference; without it the colour distances and the
            sharpness and speckle ratios are omitted.
        parts: (T,S,S) int body-part labels of the driven mesh (:func:`part_label_maps`); with
            them the per-part coverages (``coverage_*``, ``arm_coverage``, ``part_pixels``,
            ``part_frames``) are added, and with a ``reference`` built from part labels also
            ``arm_fidelity*`` (next to ``arm_coverage``), ``fidelity_frames`` and
            ``part_colour_distance`` (:func:`part_appearance_stats`).
    Returns:
        dict of floats (NaN values written as None, for JSON), plus ``frames``.
    """
    frames = _check_frames(frames)
    sil = _check_masks(silhouettes, frames, "silhouettes")
    person = rendered_person_mask(frames, background, person_threshold)
    out: dict = {"frames": int(len(frames))}
    out.update(silhouette_agreement(person, sil))
    if parts is not None:
        cov = part_coverage(person, np.asarray(parts))
        cov.pop("per_frame")
        out.update(cov)
        if reference is not None:  # arm_fidelity* right after arm_coverage in the report
            out.update(part_appearance_stats(frames, np.asarray(parts), reference, person))
    if reference is not None:
        out.update(colour_distance(lab_pixels(frames, sil), reference.lab))
    out.update(temporal_stats(frames, sil))
    out["sharpness"] = laplacian_variance(frames, sil, erode_px)
    if reference is not None:
        out["sharpness_ratio"] = (out["sharpness"] / reference.sharpness
                                  if reference.sharpness and reference.sharpness > 0 else math.nan)
    out["speckle"] = chroma_speckle(frames, sil, erode_px)
    if reference is not None:
        ref = reference.speckle
        out["speckle_ratio"] = out["speckle"] / ref if ref > 0 else math.nan
    return json_floats(out)


def json_floats(d: dict) -> dict:
    """NaN floats -> None (JSON null), also one level down in nested dicts."""
    fix = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
    return {k: ({kk: fix(vv) for kk, vv in v.items()} if isinstance(v, dict) else fix(v))
            for k, v in d.items()}


#: direction of "better" of every statistic (written into the drive report)
BETTER = {"silhouette_iou": "higher", "silhouette_coverage": "higher", "person_spill": "lower",
          "colour_w1_L": "lower", "colour_w1_a": "lower", "colour_w1_b": "lower",
          "colour_w1_mean": "lower", "temporal_diff": "lower", "temporal_jitter": "lower",
          "silhouette_change": "context (driven motion)", "sharpness": "context",
          "sharpness_ratio": "closer to 1", "speckle": "context (lower = cleaner)",
          "speckle_ratio": "lower (1 = as clean as the training frames)",
          "arm_coverage": "higher", "coverage_<part>": "higher",
          "part_pixels": "context (visible pixels per scored frame)",
          "part_frames": "context (frames where the part had enough pixels)",
          "part_colour_distance": "lower (per part group; Lab units, mean of the L*, a*, b* W1)",
          "arm_fidelity": "higher (arm pixels rendered in arm, not torso, colours)",
          "arm_fidelity_left": "higher", "arm_fidelity_right": "higher",
          "fidelity_frames": "context (frames where the eroded arm had enough pixels)"}


def sample_indices(num_frames: int, count: int = 8) -> np.ndarray:
    """``count`` frame indices spread evenly over ``num_frames`` (centres of equal segments)."""
    if num_frames <= 0:
        return np.zeros(0, np.int64)
    count = min(count, num_frames)
    return np.unique(((np.arange(count) + 0.5) * num_frames / count).astype(np.int64))


def draw_label(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.5) -> None:
    """White text with a black outline, drawn in place on an RGB image."""
    for colour, thick in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)


def contact_sheet(rows: Sequence[Sequence[np.ndarray]], column_labels: Sequence[str],
                  row_labels: Sequence[str] | None = None, height: int = 256,
                  header: int = 28, gap: int = 4) -> np.ndarray:
    """A grid of images with column titles and per-row labels.

    Args:
        rows: R rows of C (H_i,W_i,3) uint8 RGB images; each is resized to ``height`` keeping
            its aspect ratio and centred in its column (column width = widest image).
        column_labels: C titles drawn in a header band of ``header`` pixels.
        row_labels: R labels drawn at the top-left of each row's first cell.
        gap: pixels of dark grey between cells.
    Returns:
        (header + R*height + (R+1)*gap, sum(column widths) + (C+1)*gap, 3) uint8 RGB.
    Raises:
        ValueError: rows of different lengths or a label count that does not match.
    """
    if not rows:
        raise ValueError("contact sheet needs at least one row")
    C = len(rows[0])
    if any(len(r) != C for r in rows) or len(column_labels) != C:
        raise ValueError("every row needs one image per column label")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError("one row label per row")

    def fit(img):
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, -1)
        h, w = img.shape[:2]
        new_w = max(1, int(round(w * height / h)))
        interp = cv2.INTER_AREA if h > height else cv2.INTER_LINEAR
        return cv2.resize(img, (new_w, height), interpolation=interp)

    cells = [[fit(img) for img in r] for r in rows]
    widths = [max(cells[i][c].shape[1] for i in range(len(rows))) for c in range(C)]
    H = header + len(rows) * height + (len(rows) + 1) * gap
    W = sum(widths) + (C + 1) * gap
    sheet = np.full((H, W, 3), 32, np.uint8)
    xs = [gap + sum(widths[:c]) + c * gap for c in range(C)]
    for c, text in enumerate(column_labels):
        draw_label(sheet, str(text), (xs[c] + 4, header - 8), 0.55)
    for i, r in enumerate(cells):
        y = header + gap + i * (height + gap)
        for c, img in enumerate(r):
            x = xs[c] + (widths[c] - img.shape[1]) // 2
            sheet[y:y + height, x:x + img.shape[1]] = img
        if row_labels is not None:
            draw_label(sheet, str(row_labels[i]), (xs[0] + 6, y + 20))
    return sheet


def write_png(path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG (atomically).

    Raises:
        OSError: OpenCV could not encode or the file could not be written.
    """
    from ram_avatar.utils import atomic_path

    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def summarize(variants: Mapping[str, dict]) -> dict:
    """Differences ``avatar_mda - avatar`` of every shared numeric statistic (when both exist)."""
    if "avatar" not in variants or "avatar_mda" not in variants:
        return {}
    a, b = variants["avatar"], variants["avatar_mda"]
    return {k: b[k] - a[k] for k in a if k != "frames" and isinstance(a[k], (int, float))
            and isinstance(b.get(k), (int, float))}
