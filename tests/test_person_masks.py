"""Person masks stored in chunks (io.masks): written frame by frame, read frame by frame, the
old single-array files still read, and a sequence's masks never loaded whole."""

from __future__ import annotations

import numpy as np
import pytest

from ram_avatar.errors import SequenceFormatError
from ram_avatar.io import masks as masks_io
from ram_avatar.io.masks import PersonMasks, PersonMaskWriter, write_person_masks


def _masks(T=70, H=24, W=40, seed=0):
    rng = np.random.default_rng(seed)
    m = np.zeros((T, H, W), np.uint8)
    for t in range(T):  # a moving blob with soft edges, like a segmentation
        y, x = np.mgrid[0:H, 0:W]
        d = np.hypot(y - H / 2, x - (5 + t % (W - 10)))
        m[t] = np.clip(255 * (8 - d) / 3, 0, 255).astype(np.uint8)
        m[t, rng.integers(0, H), rng.integers(0, W)] = t  # a frame-specific pixel
    return m


def test_round_trip_and_array_access(tmp_path):
    ref = _masks()
    path = tmp_path / "masks.npz"
    with PersonMaskWriter(path, chunk=32) as w:
        for m in ref:
            w.add(m)
        r = w.close()
    with np.load(path) as z:  # still a NumPy .npz: header entries and three chunks
        assert sorted(z.files) == ["chunk", "masks_000000", "masks_000001", "masks_000002", "shape"]
        assert z["masks_000002"].shape == (6, 24, 40)
    with r:
        assert r.shape == ref.shape and len(r) == 70 and r.size == ref.size and r.dtype == np.uint8
        assert np.array_equal(r[5], ref[5]) and np.array_equal(r[-1], ref[-1])
        assert np.array_equal(r[[69, 3, 40, 3]], ref[[69, 3, 40, 3]])
        assert np.array_equal(r[10:50:7], ref[10:50:7])
        assert np.array_equal(r[:, :5, -6:], ref[:, :5, -6:])
        assert np.array_equal(r[33, 2:9, 4], ref[33, 2:9, 4])
        assert np.array_equal(r[ref.mean((1, 2)) > ref.mean()], ref[ref.mean((1, 2)) > ref.mean()])
        assert np.array_equal(np.asarray(r), ref) and np.array_equal(r.copy(), ref)
        assert all(np.array_equal(a, b) for a, b in zip(r, ref))
        with pytest.raises(IndexError, match="outside the 70 frames"):
            r[70]


def test_frames_in_order_decompress_each_chunk_once(tmp_path, monkeypatch):
    """What keeps a long video's masks out of memory: reading frame after frame holds one
    chunk, and each chunk is decompressed once."""
    ref = _masks(T=100)
    write_person_masks(tmp_path / "m.npz", ref, chunk=16)
    loads = []
    with PersonMasks(tmp_path / "m.npz") as r:
        real = type(r._npz).__getitem__
        monkeypatch.setattr(type(r._npz), "__getitem__",
                            lambda self, k: loads.append(k) or real(self, k))
        for t in range(100):
            assert np.array_equal(r[t], ref[t])
    assert loads == [f"masks_{k:06d}" for k in range(7)]  # ceil(100 / 16) chunks, once each


def test_old_single_array_files_are_read(tmp_path):
    ref = _masks(T=9)
    np.savez_compressed(tmp_path / "old.npz", masks=ref)
    with PersonMasks(tmp_path / "old.npz") as r:
        assert r.chunk == 0 and r.shape == ref.shape
        assert np.array_equal(r[4], ref[4]) and np.array_equal(r[[8, 0]], ref[[8, 0]])
    # re-written in the chunked layout (what FittedSequence.save does with them)
    write_person_masks(tmp_path / "new.npz", PersonMasks(tmp_path / "old.npz"), chunk=4)
    with PersonMasks(tmp_path / "new.npz") as r:
        assert r.chunk == 4 and np.array_equal(np.asarray(r), ref)
    np.savez(tmp_path / "other.npz", something=ref)
    with pytest.raises(ValueError, match="neither 'masks' nor chunked"):
        PersonMasks(tmp_path / "other.npz")


def test_temporary_masks_are_removed_on_close_and_on_error():
    w = PersonMaskWriter()
    w.add(np.zeros((4, 6), np.uint8))
    r = w.close()
    assert r.path.is_file() and r.delete
    r.close()
    assert not r.path.exists()
    with pytest.raises(RuntimeError):
        with PersonMaskWriter() as w:
            w.add(np.zeros((4, 6), np.uint8))
            raise RuntimeError("tracking failed")
    assert not w.path.exists()


def test_writer_rejects_bad_masks(tmp_path):
    w = PersonMaskWriter(tmp_path / "m.npz")
    with pytest.raises(ValueError, match=r"\(H, W\) uint8"):
        w.add(np.zeros((4, 6), np.float32))
    w.add(np.zeros((4, 6), np.uint8))
    with pytest.raises(ValueError, match="the first was"):
        w.add(np.zeros((4, 7), np.uint8))
    w.abort()
    with pytest.raises(ValueError, match="chunk must be"):
        PersonMaskWriter(tmp_path / "x.npz", chunk=0)
    with pytest.raises(ValueError, match=r"\(T, H, W\) uint8"):
        write_person_masks(tmp_path / "y.npz", np.zeros((3, 4), np.uint8))


def test_sequence_saves_chunks_and_checks_the_shape(tmp_path, monkeypatch):
    """load_masks checks (T, H, W) against the manifest without reading the frames (a
    capture's save writing the chunked layout: test_pipeline_e2e)."""
    from ram_avatar.io.sequence import FittedSequence

    ref = _masks(T=5, H=24, W=40)
    seq = FittedSequence.__new__(FittedSequence)
    seq.root = tmp_path
    seq.manifest = {"width": 40, "height": 24}
    monkeypatch.setattr(FittedSequence, "num_frames", property(lambda self: 5))
    write_person_masks(tmp_path / "masks.npz", ref)
    monkeypatch.setattr(masks_io.PersonMasks, "frames",
                        lambda *a: pytest.fail("the shape check read frames"))
    seq.load_masks().close()
    seq.manifest = {"width": 41, "height": 24}
    with pytest.raises(SequenceFormatError, match=r"masks have shape \(5, 24, 40\), expected \(5, 24, 41\)"):
        seq.load_masks()
