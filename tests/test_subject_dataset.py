"""SubjectDataset and render_sequence_maps on a real capture (the live_subject fixture)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from live_fixture import live_subject  # noqa: F401  (session fixture)


def test_dataset_crops_and_chunked_maps(live_subject):  # noqa: F811
    """The dataset's frames and masks are the crops of the capture's (written straight into
    their arrays, the full-size masks released before the maps), a repeated frame index gets
    the same crop, and maps rendered in chunks equal maps rendered in one piece."""
    from ram_avatar.io.sequence import load_sequence
    from ram_avatar.io.video import read_frames
    from ram_avatar.render.sequence import SubjectDataset, crop_resize, render_sequence_maps

    seq = load_sequence(live_subject)
    idx = np.array([3, 0, 7, 3])
    ds = SubjectDataset(seq, idx, 64, extras=("expanded",))
    assert ds.images.shape == (4, 3, 64, 64) and ds.images.dtype == torch.uint8
    assert ds.masks.shape == (4, 1, 64, 64) and ds.masks.dtype == torch.uint8
    crop, start = seq.manifest["crop"], seq.manifest["source"]["start"]
    frames = read_frames(seq.source_video(), start, start + 8)
    masks = seq.load_masks()
    for j, t in enumerate(idx):
        assert np.array_equal(ds.images[j].permute(1, 2, 0).numpy(), crop_resize(frames[t], crop, 64))
        assert np.array_equal(ds.masks[j, 0].numpy(), crop_resize(masks[t], crop, 64))
    assert torch.equal(ds.images[0], ds.images[3]) and ds.masks[1].float().mean() > 10

    one = render_sequence_maps(seq, idx, 64, body=ds.body, expand_offset=0.02, chunk=8)
    chunked = render_sequence_maps(seq, idx, 64, body=ds.body, expand_offset=0.02, chunk=3)
    assert set(one) == set(chunked) >= {"uv", "body_mask", "hand", "face", "uv_expanded"}
    for k in one:
        assert one[k].shape[0] == 4 and one[k].dtype == chunked[k].dtype, k
        assert torch.equal(one[k], chunked[k]), k
    assert one["body_mask"].float().mean() > 0.05
    with pytest.raises(ValueError, match="no frames"):
        render_sequence_maps(seq, np.array([], np.int64), 64, body=ds.body)


def test_maps_beyond_the_memory_budget_are_drawn_when_read(live_subject):  # noqa: F811
    """A dataset whose maps do not fit its budget keeps the first frames' maps and draws the
    others on demand: every item (temporal previous-frame maps included) equals the item of a
    dataset that keeps them all; render_sequence_maps' max_bytes keeps the rows that fit."""
    from ram_avatar.io.sequence import load_sequence
    from ram_avatar.render.sequence import SubjectDataset, render_sequence_maps

    seq = load_sequence(live_subject)
    idx = np.array([2, 5, 3, 7, 6])
    extras = ("expanded", "canonical", "temporal", "hand_boxes")
    full = SubjectDataset(seq, idx, 64, extras=extras)
    per_frame = sum(v[0].nbytes for v in full.maps.values())
    assert full.cached_rows == len(full.map_frames) > len(idx)  # previous frames 1 and 4 too
    small = SubjectDataset(seq, idx, 64, extras=extras, body=full.body,
                           map_cache_bytes=2 * per_frame + per_frame // 2)
    assert small.cached_rows == 2 and len(small.maps["uv"]) == 2
    for i in range(len(idx)):
        a, b = full[i], small[i]
        assert set(a) == set(b) >= {"uv", "canon", "prev_uv", "prev_body_mask", "hand_boxes"}
        for k in a:
            if torch.is_tensor(a[k]):
                assert torch.equal(a[k], b[k]), (i, k)
            else:
                assert a[k] == b[k], (i, k)
    whole = render_sequence_maps(seq, idx, 64, body=full.body)
    plain = sum(v[0].nbytes for v in whole.values())
    part = render_sequence_maps(seq, idx, 64, body=full.body, max_bytes=3 * plain, chunk=2)
    for k in whole:  # the first rows that fit, the same values
        assert len(part[k]) == 3 and torch.equal(part[k], whole[k][:3]), k
