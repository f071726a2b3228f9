"""Outputs of ``drive`` for streamers (issue 13): videos with alpha, framing, motion files."""

from __future__ import annotations

import av
import numpy as np
import pytest

from ram_avatar.capture.video import AlphaVideoWriter


def _rgba_clip(T=6, H=48, W=64):
    """Frames with a transparent background, an opaque moving box and a half-transparent patch."""
    frames = []
    yy, xx = np.mgrid[0:H, 0:W]
    for t in range(T):
        f = np.zeros((H, W, 4), np.uint8)
        f[..., 0] = xx * 4
        f[..., 1] = yy * 5
        f[..., 2] = 40 * t
        f[10:40, 20 + t:50 + t, 3] = 255
        f[20:30, 4:14, 3] = 128
        frames.append(f)
    return np.stack(frames)


def decode_rgba(path) -> tuple[np.ndarray, av.video.stream.VideoStream]:
    """(T,H,W,4) uint8 frames of a video with alpha, decoded by PyAV (libvpx for VP9: FFmpeg's
    native vp9 decoder drops the alpha)."""
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        rate = st.average_rate
        if st.codec_context.name == "vp9":
            ctx = av.codec.CodecContext.create("libvpx-vp9", "r")
            out = [f for pkt in c.demux(st) for f in ctx.decode(pkt)]
        else:
            out = list(c.decode(st))
        fmt = out[0].format.name
        return np.stack([f.to_ndarray(format="rgba") for f in out]), (rate, fmt)


@pytest.mark.parametrize("suffix,pix_fmt,alpha_tol,rgb_tol", [
    (".webm", "yuva420p", 4, 6.0), (".mov", "yuva444p", 1, 2.0)])  # ProRes 4444 decodes to 12 bit
def test_alpha_video_roundtrip(tmp_path, suffix, pix_fmt, alpha_tol, rgb_tol):
    clip = _rgba_clip()
    path = tmp_path / f"clip{suffix}"
    with AlphaVideoWriter(path, 25, (64, 48)) as w:
        for f in clip:
            w.write(f)
    got, (rate, fmt) = decode_rgba(path)
    assert got.shape == clip.shape
    assert rate == 25
    assert fmt.startswith(pix_fmt)  # alpha decoded
    a_err = np.abs(got[..., 3].astype(int) - clip[..., 3])
    assert a_err.max() <= alpha_tol and a_err.mean() < 0.5
    assert (got[..., 3][clip[..., 3] == 0] <= alpha_tol).all()  # background transparent
    opaque = clip[..., 3] == 255
    assert np.abs(got[..., :3].astype(int) - clip[..., :3])[opaque].mean() < rgb_tol
    # the native vp9 decoder indeed loses the alpha (why decode_rgba picks libvpx)
    if suffix == ".webm":
        with av.open(str(path)) as c:
            assert next(iter(c.decode(video=0))).format.name == "yuv420p"


def test_alpha_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="webm"):
        AlphaVideoWriter(tmp_path / "x.mp4", 25, (64, 48))
    with AlphaVideoWriter(tmp_path / "x.webm", 25, (64, 48)) as w:
        with pytest.raises(ValueError, match="RGBA"):
            w.write(np.zeros((48, 64, 3), np.uint8))
        w.write(np.zeros((48, 64, 4), np.uint8))
    # an exception inside the block leaves no file
    with pytest.raises(RuntimeError):
        with AlphaVideoWriter(tmp_path / "y.mov", 25, (64, 48)) as w:
            w.write(np.zeros((48, 64, 4), np.uint8))
            raise RuntimeError("stop")
    assert not (tmp_path / "y.mov").exists()
