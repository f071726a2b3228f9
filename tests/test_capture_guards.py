"""Capture refuses what would give an unusable or mixed-up subject, and cleans up after itself.

One real tracking of 4 taiji frames (module fixture) feeds the write-phase tests through a
patched ``track_video``; the guards themselves run unpatched.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil

import numpy as np
import pytest

from ram_avatar.capture import pipeline
from ram_avatar.capture.fitting import FitConfig
from ram_avatar.cli import main
from ram_avatar.errors import CaptureError, DiskFullError
from ram_avatar.io.masks import PersonMaskWriter

FAST_FIT = FitConfig(iters_global=20, iters_body=40, iters_hands=0)


@pytest.fixture(scope="module")
def tracked(taiji_video, anny_body):
    return pipeline.track_video(taiji_video, anny_body, 0, 4, fit_config=FAST_FIT)


def _tracked_copy(tracked):
    """The tracked frames with their own temporary masks file (capture closes, i.e. removes, it)."""
    w = PersonMaskWriter()
    for m in tracked.masks:
        w.add(m)
    return dataclasses.replace(tracked, masks=w.close())


@pytest.fixture
def fake_tracking(monkeypatch, tracked, anny_body):
    """capture() without the minutes of tracking: reuse the module's tracked frames."""
    monkeypatch.setattr(pipeline, "load_body_model", lambda *a, **k: anny_body)
    monkeypatch.setattr(pipeline, "track_video", lambda *a, **k: _tracked_copy(tracked))


def _fake_subject(d, name="someone_else.mp4"):
    (d / "sequence").mkdir(parents=True)
    (d / "sequence" / "manifest.json").write_text(json.dumps(
        {"source": {"name": name, "start": 0, "end": 100}}))
    (d / "runs" / "default" / "checkpoints").mkdir(parents=True)
    (d / "runs" / "default" / "checkpoints" / "step_00000100.safetensors").write_bytes(b"x")
    (d / "export").mkdir()
    (d / "export" / "avatar.onnx").write_bytes(b"onnx")


def _listing(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def test_capture_into_existing_subject_is_refused(tmp_path, taiji_video, capsys):
    subject = tmp_path / "s"
    _fake_subject(subject)
    before = _listing(subject)
    assert main(["capture", str(taiji_video), "-o", str(subject), "--end", "2"]) == 2
    err = capsys.readouterr().err
    assert "already holds a subject" in err and "someone_else.mp4" in err
    assert "--overwrite" in err
    assert _listing(subject) == before                      # untouched


@pytest.mark.parametrize("mode", ["move", "remove"])
def test_overwrite_replaces_the_old_subject(tmp_path, taiji_video, fake_tracking, mode):
    subject = tmp_path / "s"
    _fake_subject(subject)
    stale = subject / ".sequence.k1ll3d"                     # left by a kill -9
    stale.mkdir()
    (stale / "masks.npz").write_bytes(os.urandom(1000))
    seq = pipeline.capture(taiji_video, subject, end=4, overlay=False, overwrite=mode)
    assert seq.num_frames == 4 and (subject / "sequence" / "fitted.npz").is_file()
    assert json.loads((subject / "sequence" / "manifest.json").read_text())["source"]["name"] == "taiji.mp4"
    assert not (subject / "runs").exists() and not (subject / "export").exists()
    assert not stale.exists()
    moved = list(subject.glob("replaced-*"))
    if mode == "move":
        assert len(moved) == 1
        assert (moved[0] / "runs" / "default" / "checkpoints" / "step_00000100.safetensors").is_file()
        assert (moved[0] / "export" / "avatar.onnx").read_bytes() == b"onnx"
        assert json.loads((moved[0] / "sequence" / "manifest.json").read_text())["source"]["name"] == "someone_else.mp4"
    else:
        assert moved == []
    leftovers = [p.name for p in subject.iterdir() if p.name.startswith(".")]
    assert leftovers == []                                   # no lock or temporary folder


def test_too_few_valid_frames_fail(tmp_path, taiji_video, fake_tracking, monkeypatch, capsys):
    """Fits that match no frame (as a sideways video gave) fail with exit 2, nothing written."""
    monkeypatch.setattr(pipeline, "MAX_VALID_BODY_ERROR", 1e-9)
    subject = tmp_path / "s"
    assert main(["capture", str(taiji_video), "-o", str(subject), "--end", "4",
                 "--no-overlay"]) == 2
    err = capsys.readouterr().err
    assert "only 0 of 4 frames" in err and "Nothing was written" in err
    assert not subject.exists()


def test_disk_full_during_capture(tmp_path, taiji_video, fake_tracking, monkeypatch, capsys):
    def full(src, dst, *a, **k):
        with open(dst, "wb") as f:
            f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline.shutil, "copyfile", full)
    subject = tmp_path / "new_subject"
    assert main(["capture", str(taiji_video), "-o", str(subject), "--end", "4",
                 "--no-overlay"]) == 2
    err = capsys.readouterr().err
    assert "disk is full" in err and "needs about" in err and "free there" in err
    assert "Nothing was written" in err
    assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1
    assert not subject.exists()                              # no empty subject folder
    # with an existing subject being replaced, the old one stays as it was
    old = tmp_path / "old"
    _fake_subject(old)
    before = _listing(old)
    with pytest.raises(DiskFullError, match="previous sequence .* is intact"):
        pipeline.capture(taiji_video, old, end=4, overlay=False, overwrite="remove")
    assert _listing(old) == before


def test_other_people_found_in_masks(tracked):
    """A second person-sized blob outside the fitted person's keypoints is reported."""
    kp, masks = tracked.keypoints, tracked.masks.copy()
    assert pipeline.other_people(masks, kp)["persists"] is False
    T, H, W = masks.shape
    vis = kp.pose[0, kp.pose[0, :, 2] > 0.5, :2]
    h = int(vis[:, 1].max() - vis[:, 1].min())
    x = int(vis[:, 0].max()) + h // 2                        # to the right of the person
    w = max(8, h // 4)
    if x + w >= W:
        x = max(0, int(vis[:, 0].min()) - h // 2 - w)
    masks[:, int(vis[:, 1].min()):int(vis[:, 1].max()), x:x + w] = 255
    res = pipeline.other_people(masks, kp)
    assert res["persists"] and res["frames"] == res["checked"] == T
    # capture checks the Selfie masks of everyone in view, kept for every ~T/100-th frame
    assert sorted(tracked.everyone) == list(range(T))
    assert pipeline.other_people(tracked.everyone, kp)["checked"] == T
    assert pipeline.other_people({t: masks[t] for t in range(T)}, kp) == res
    x0, y0, x1, y1 = res["box"]
    assert x0 <= vis[:, 0].min() and x1 >= vis[:, 0].max()   # crop box covers the fitted person
    assert not (x0 <= x and x + w <= x1)                     # ... and not the other one


def test_too_small_person_gets_its_own_message(tmp_path, taiji_video, capsys):
    import cv2

    from ram_avatar.capture.video import VideoWriter, read_frames

    frames = read_frames(taiji_video, 0, 6)
    path = tmp_path / "far_away.mp4"
    with VideoWriter(path, 24, (1280, 720)) as w:
        for f in frames:
            canvas = np.empty_like(f)
            canvas[:] = f.mean((0, 1)).astype(np.uint8)
            small = cv2.resize(f, (1280 // 5, 720 // 5), interpolation=cv2.INTER_AREA)
            canvas[300:300 + small.shape[0], 500:500 + small.shape[1]] = small
            w.write(canvas)
    subject = tmp_path / "s"
    assert main(["capture", str(path), "-o", str(subject), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "too small" in err and "crop=" in err
    assert not subject.exists()
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_check_output_folder_modes(tmp_path):
    assert pipeline.check_output_folder(tmp_path / "new", None) == []
    (tmp_path / "s" / "runs").mkdir(parents=True)
    with pytest.raises(CaptureError, match="runs/"):
        pipeline.check_output_folder(tmp_path / "s", None)
    assert pipeline.check_output_folder(tmp_path / "s", "move") == ["runs"]
    with pytest.raises(CaptureError, match="overwrite must be"):
        pipeline.check_output_folder(tmp_path / "s", "yes")


def test_manifest_names_the_mask_source(tmp_path, taiji_video, fake_tracking):
    from ram_avatar.capture.keypoints import PERSON_MASK_SOURCE

    pipeline.capture(taiji_video, tmp_path / "s", end=4, overlay=False)
    manifest = json.loads((tmp_path / "s" / "sequence" / "manifest.json").read_text())
    assert manifest["masks"] == {"source": PERSON_MASK_SOURCE}
