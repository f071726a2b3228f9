"""Phone videos: pixels stored sideways plus a display matrix are decoded upright."""

from __future__ import annotations

import av
import numpy as np
import pytest

from ram_avatar.capture.video import iter_frames, probe_video, read_frames


def _encode(path, frames, rotation: int = 0, hflip: bool = False, vflip: bool = False,
            lossless: bool = False):
    """Encode stored (H, W, 3) frames with a display matrix: ``rotation`` degrees counter-
    clockwise, then the mirrors, is how a player shows them (PyAV's set_display_rotation)."""
    H, W = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height = W, H
        s.pix_fmt = "yuv444p" if lossless else "yuv420p"
        s.options = {"crf": "0" if lossless else "16"}
        s.set_display_rotation(rotation, hflip=hflip, vflip=vflip)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts = i
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def _pattern() -> np.ndarray:
    img = np.zeros((32, 64, 3), np.uint8)
    img[:16, :16] = 255
    img[16:, 48:, 0] = 255
    img[:16, 32:48, 1] = 200
    return img


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
@pytest.mark.parametrize("hflip,vflip", [(False, False), (True, False), (False, True)])
def test_display_matrix_applied(tmp_path, rotation, hflip, vflip):
    img = _pattern()
    path = _encode(tmp_path / "clip.mp4", [img, img], rotation, hflip, vflip, lossless=True)
    shown = np.rot90(img, rotation // 90)
    if hflip:
        shown = shown[:, ::-1]
    if vflip:
        shown = shown[::-1]
    info = probe_video(path)
    assert (info.height, info.width) == shown.shape[:2]
    out = read_frames(path)
    assert out.shape == (2, *shown.shape)
    assert np.abs(out[0].astype(int) - shown).mean() < 2.0
    # the stored (unrotated) picture is clearly different unless the transform is the identity
    if rotation or hflip or vflip:
        stored = img if img.shape == shown.shape else None
        if stored is not None:
            assert np.abs(out[0].astype(int) - stored).mean() > 20


def test_sideways_phone_clip_decodes_like_the_upright_clip(tmp_path, taiji_video):
    """A few taiji frames stored sideways (rotated 90 degrees clockwise, as a phone held
    upright records them) with a 90-degree display rotation decode to the upright frames."""
    upright = read_frames(taiji_video, 0, 4)                      # (4, 720, 1280, 3)
    sideways = [np.rot90(f, -1) for f in upright]                 # stored: (1280, 720, 3)
    path = _encode(tmp_path / "phone.mp4", sideways, rotation=90)
    ref = _encode(tmp_path / "upright.mp4", list(upright), rotation=0)
    info, ref_info = probe_video(path), probe_video(ref)
    assert (info.width, info.height) == (ref_info.width, ref_info.height) == (1280, 720)
    assert info.rotation == 90 and not info.mirrored and ref_info.rotation == 0
    got = np.stack(list(iter_frames(path)))
    want = np.stack(list(iter_frames(ref)))
    assert got.shape == want.shape == (4, 720, 1280, 3)
    err = np.abs(got.astype(np.int16) - want).mean()
    assert err < 3.0, err                                         # same picture (codec noise)
    # frame ranges work on rotated clips too
    assert np.array_equal(read_frames(path, 2, 3)[0], got[2])


def test_display_matrix_is_read_once_per_stream(tmp_path, monkeypatch):
    """iter_frames reads the display matrix from the first frame only: reading a frame's side
    data in PyAV keeps that frame alive until the cyclic garbage collector runs (decoding a
    4K clip grew to 2 GB), and every frame still comes out rotated the same way."""
    from ram_avatar.io import video as V

    frames = [np.roll(_pattern(), 3 * i, axis=1) for i in range(6)]
    path = _encode(tmp_path / "r.mp4", frames, rotation=90, lossless=True)
    calls = []
    real = V._frame_orientation
    monkeypatch.setattr(V, "_frame_orientation", lambda f: calls.append(1) or real(f))
    out = list(iter_frames(path, 2, 6))
    assert len(calls) == 1 and len(out) == 4
    for f, src in zip(out, frames[2:]):
        assert f.shape == (64, 32, 3) and np.abs(f.astype(int) - np.rot90(src, 1)).mean() < 2.0
