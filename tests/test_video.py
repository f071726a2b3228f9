"""Tests of ram_avatar.capture.video: probing, decoding, atomic H.264 writing, error messages."""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from ram_avatar.capture.video import (VideoInfo, VideoWriter, fps_to_fraction, iter_frames,
                                      probe_video, read_frames)
from ram_avatar.errors import RamAvatarError, VideoError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TAIJI = EXAMPLES / "taiji.mp4"
BASKETBALL = EXAMPLES / "basketball_drive.mp4"


def _pattern(t: int, width: int, height: int) -> np.ndarray:
    """A smooth, moving RGB test picture (H, W, 3) uint8 that survives H.264 well."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(xx / 9.0 + t * 0.3)
    g = 128 + 100 * np.cos(yy / 7.0 - t * 0.2)
    b = np.full_like(xx, 40.0 + 8 * t)
    return np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8)


def _names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


# ----------------------------------------------------------------------------------- probing

def test_probe_taiji():
    info = probe_video(TAIJI)
    assert isinstance(info, VideoInfo)
    assert info.fps == pytest.approx(23.976, abs=0.01)
    assert info.frame_count == 412
    assert (info.width, info.height) == (1280, 720)
    assert info.duration_s == pytest.approx(412 / info.fps)
    assert info.path == TAIJI


def test_probe_basketball():
    info = probe_video(str(BASKETBALL))  # str paths work too
    assert info.fps == pytest.approx(30.0, abs=1e-6)
    assert info.frame_count == 219
    assert (info.width, info.height) == (1920, 1080)


# ---------------------------------------------------------------------------------- decoding

def test_iter_frames_range_and_read_frames():
    frames = read_frames(TAIJI, 400)
    assert frames.shape == (12, 720, 1280, 3) and frames.dtype == np.uint8
    window = list(iter_frames(TAIJI, start=3, end=6))
    assert len(window) == 3
    first_six = read_frames(TAIJI, 0, 6)
    np.testing.assert_array_equal(np.stack(window), first_six[3:6])
    assert list(iter_frames(TAIJI, 5, 5)) == []


def test_full_decode_count_matches_probe():
    assert sum(1 for _ in iter_frames(BASKETBALL)) == probe_video(BASKETBALL).frame_count


def test_range_past_end_raises():
    with pytest.raises(VideoError, match="only 412 frames"):
        read_frames(TAIJI, 410, 420)
    with pytest.raises(ValueError):
        next(iter_frames(TAIJI, start=-1))


# ---------------------------------------------------------------------------------- writing

@pytest.mark.parametrize("fps, exact", [(23.976, Fraction(24000, 1001)),
                                        (24000 / 1001, Fraction(24000, 1001)),
                                        (30, Fraction(30))])
def test_writer_round_trip(tmp_path, fps, exact):
    out = tmp_path / "clip.mp4"
    written = [_pattern(t, 64, 48) for t in range(25)]
    with VideoWriter(out, fps, (64, 48)) as writer:
        for frame in written:
            writer.write(frame)
    assert writer.frames_written == 25
    assert _names(tmp_path) == {"clip.mp4"}  # temp file renamed, nothing else left

    info = probe_video(out)
    assert info.frame_count == 25
    assert info.fps == pytest.approx(23.976 if exact != 30 else 30.0, abs=0.01)
    assert info.fps == pytest.approx(float(exact), abs=1e-9)
    assert (info.width, info.height) == (64, 48)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert Fraction(stream.average_rate) == exact
    decoded = read_frames(out)
    assert decoded.shape == (25, 48, 64, 3)
    err = np.abs(decoded.astype(np.int16) - np.stack(written).astype(np.int16)).mean()
    assert err < 6.0, f"mean abs error {err:.2f} after H.264 round trip"


def test_writer_pads_odd_size(tmp_path):
    out = tmp_path / "odd.mp4"
    frame = _pattern(0, 65, 49)
    with VideoWriter(out, 25, (65, 49)) as writer:
        assert writer.encoded_size == (66, 50)
        writer.write(frame)
        writer.write(frame)
    info = probe_video(out)
    assert (info.width, info.height, info.frame_count) == (66, 50, 2)
    decoded = read_frames(out)[0]
    # Content stays at the same pixel coordinates; the padding repeats the edge.
    assert np.abs(decoded[:49, :65].astype(int) - frame.astype(int)).mean() < 6.0


def test_writer_exception_leaves_nothing(tmp_path):
    out = tmp_path / "crash.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(out, 30, (32, 32)) as writer:
            writer.write(_pattern(0, 32, 32))
            raise RuntimeError("boom")
    assert _names(tmp_path) == set()


def test_writer_rejects_bad_frames_and_keeps_old_file(tmp_path):
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"previous content")
    with pytest.raises(ValueError, match=r"\(32, 32, 3\) uint8"):
        with VideoWriter(out, 30, (32, 32)) as writer:
            writer.write(np.zeros((32, 32, 3), np.float32))
    assert _names(tmp_path) == {"keep.mp4"}
    assert out.read_bytes() == b"previous content"


def test_writer_without_frames_raises(tmp_path):
    with pytest.raises(VideoError, match="no frames were written"):
        with VideoWriter(tmp_path / "empty.mp4", 30, (32, 32)):
            pass
    assert _names(tmp_path) == set()


def test_fps_to_fraction():
    assert fps_to_fraction(23.976) == Fraction(24000, 1001)
    assert fps_to_fraction(29.97) == Fraction(30000, 1001)
    assert fps_to_fraction(59.94) == Fraction(60000, 1001)
    assert fps_to_fraction(30) == 30
    assert fps_to_fraction(12.5) == Fraction(25, 2)
    assert fps_to_fraction(Fraction(15, 1)) == 15
    for bad in (0, -5, float("nan")):
        with pytest.raises(ValueError):
            fps_to_fraction(bad)


# ---------------------------------------------------------------------------------- errors

def test_missing_file(tmp_path):
    missing = tmp_path / "nope.mp4"
    for call in (probe_video, read_frames):
        with pytest.raises(VideoError, match="not found") as info:
            call(missing)
        assert "nope.mp4" in str(info.value) and "check the path" in str(info.value)
    assert _names(tmp_path) == set()


def test_directory_is_not_a_video(tmp_path):
    with pytest.raises(VideoError, match="not a file"):
        probe_video(tmp_path)


def test_text_file_renamed_mp4(tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is a shopping list, not a video\n" * 20)
    for call in (probe_video, read_frames):
        with pytest.raises(VideoError) as info:
            call(fake)
        message = str(info.value)
        assert "notes.mp4" in message and "not a video" in message and "re-export" in message
    assert issubclass(VideoError, RamAvatarError)
    assert _names(tmp_path) == {"notes.mp4"}


def test_audio_only_file_has_no_video_stream(tmp_path):
    audio = tmp_path / "voice.wav"
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(8000, np.int16).tobytes())
    with pytest.raises(VideoError, match="no video stream"):
        probe_video(audio)


def test_truncated_to_20kb(tmp_path):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(TAIJI.read_bytes()[:20_000])
    with pytest.raises(VideoError) as info:
        probe_video(cut)
    assert "no decodable video frames" in str(info.value) and "cut off" in str(info.value)
    with pytest.raises(VideoError) as info:
        list(iter_frames(cut))
    message = str(info.value)
    assert "decoding failed at frame 0" in message and "truncated" in message
    assert _names(tmp_path) == {"cut.mp4"}


def test_truncated_mid_stream(tmp_path):
    cut = tmp_path / "half.mp4"
    cut.write_bytes(TAIJI.read_bytes()[:1_000_000])
    info = probe_video(cut)  # warns, reports only the complete frames
    assert 0 < info.frame_count < 412
    good = 0
    with pytest.raises(VideoError) as err:
        for frame in iter_frames(cut):
            assert frame.shape == (720, 1280, 3)
            good += 1
    assert good == info.frame_count
    assert f"decoding failed at frame {good} of 412" in str(err.value)
    assert f"end={good}" in str(err.value)
    # The readable prefix can still be used.
    assert read_frames(cut, good - 2, good).shape == (2, 720, 1280, 3)
    assert _names(tmp_path) == {"half.mp4"}

