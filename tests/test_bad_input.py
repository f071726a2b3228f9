"""Bad input gives a clear error (exit status 2) and leaves nothing half-written."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ram_avatar.cli import main
from ram_avatar.errors import SequenceFormatError


def _no_sequence_left(subject):
    """Neither a sequence nor a temporary sequence folder remains."""
    return not subject.exists() or not any(p.name.startswith((".sequence", "sequence")) for p in subject.iterdir())


def test_missing_video(tmp_path, capsys):
    subject = tmp_path / "s"
    assert main(["capture", str(tmp_path / "nope.mp4"), "-o", str(subject)]) == 2
    err = capsys.readouterr().err
    assert "nope.mp4" in err and ("not found" in err or "does not exist" in err)
    assert _no_sequence_left(subject)


def test_corrupt_video(tmp_path, taiji_video, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(taiji_video.read_bytes()[:20_000])
    subject = tmp_path / "s"
    assert main(["capture", str(bad), "-o", str(subject)]) == 2
    assert "bad.mp4" in capsys.readouterr().err
    assert _no_sequence_left(subject)


def test_personless_video(tmp_path, capsys):
    from ram_avatar.capture.video import VideoWriter

    path = tmp_path / "empty_room.mp4"
    yy, xx = np.mgrid[0:240, 0:320]
    with VideoWriter(path, 24, (320, 240)) as w:
        for t in range(24):
            img = np.stack([(xx + 4 * t) % 256, (yy + 2 * t) % 256, np.full_like(xx, 90)], -1)
            w.write(img.astype(np.uint8))
    subject = tmp_path / "s"
    assert main(["capture", str(path), "-o", str(subject), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no person" in err.lower()
    assert _no_sequence_left(subject)


def test_missing_smplx_files(tmp_path, taiji_video, capsys):
    subject = tmp_path / "s"
    code = main(["capture", str(taiji_video), "-o", str(subject), "--end", "2",
                 "--body-model", "smplx", "--model-path", str(tmp_path / "models")])
    assert code == 2
    assert "SMPLX_NEUTRAL.npz" in capsys.readouterr().err
    assert _no_sequence_left(subject)


def test_sequence_wrong_keys_and_shapes(tmp_path, capsys):
    from ram_avatar.io.sequence import load_sequence

    seq_dir = tmp_path / "subject" / "sequence"
    seq_dir.mkdir(parents=True)
    with pytest.raises(SequenceFormatError, match="ram-avatar capture"):
        load_sequence(tmp_path / "subject")
    (seq_dir / "manifest.json").write_text(
        '{"version": 1, "fps": 24, "width": 64, "height": 64, "frames": 3,'
        ' "camera": {"K": [[50,0,32],[0,50,32],[0,0,1]]},'
        ' "body_model": {"name": "anny", "num_betas": 6, "num_body_joints": 35}}')
    np.savez(seq_dir / "fitted.npz", betas=np.zeros((1, 6)))
    with pytest.raises(SequenceFormatError, match="lacks keys"):
        load_sequence(tmp_path / "subject")
    arrays = dict(betas=np.zeros((1, 6)), global_orient=np.zeros((3, 3)), body_pose=np.zeros((3, 34, 3)),
                  left_hand_pose=np.zeros((3, 15, 3)), right_hand_pose=np.zeros((3, 15, 3)),
                  jaw_pose=np.zeros((3, 3)), expression=np.zeros((3, 0)), transl=np.zeros((3, 3)),
                  valid=np.ones(3, bool), face_local=np.zeros((3, 478, 3)))
    np.savez(seq_dir / "fitted.npz", **arrays)
    with pytest.raises(SequenceFormatError, match="body_pose.*shape"):
        load_sequence(tmp_path / "subject")
    # the CLI reports it as a clear error
    assert main(["info", str(tmp_path / "subject")]) == 2
    assert "body_pose" in capsys.readouterr().err


def test_train_without_capture(tmp_path, capsys):
    assert main(["train", str(tmp_path / "none"), "--steps", "1"]) == 2
    assert "ram-avatar capture" in capsys.readouterr().err


def test_drive_without_export(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none")]) == 2
    assert "ram-avatar" in capsys.readouterr().err


def test_driver_json_checked(tmp_path, anny_body):
    import json

    from ram_avatar.errors import RamAvatarError
    from ram_avatar.runtime.retarget import load_driver_betas

    good = tmp_path / "driver.json"
    good.write_text(json.dumps({"body_model": "anny", "betas": [0.4, 0.5, 0.5, 0.6, 0.7, 0.3]}))
    assert load_driver_betas(good, anny_body).shape == (1, 6)
    bad = tmp_path / "smplx_driver.json"
    bad.write_text(json.dumps({"body_model": "smplx", "betas": [0.0] * 10}))
    with pytest.raises(RamAvatarError, match="same body model"):
        load_driver_betas(bad, anny_body)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(RamAvatarError, match="calibrate driver"):
        load_driver_betas(tmp_path / "broken.json", anny_body)
