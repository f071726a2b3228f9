"""``ram-avatar create``: one verb from a video to an avatar, resumable (issue 13, item 7).

A 16-frame clip of taiji goes through the real stages (capture with MediaPipe, a tiny
renderer, the ONNX export, a short fit-mda); interruptions are simulated by a stage that fails.
"""

from __future__ import annotations

import json

import pytest

from ram_avatar.cli import main
from ram_avatar.create import CreateError, create, training_left
from ram_avatar.io.checkpoint import read_metadata
from ram_avatar.io.subject import Subject

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def clip(tmp_path_factory, taiji_video):
    from ram_avatar.capture.video import VideoWriter, read_frames

    path = tmp_path_factory.mktemp("clip") / "me.mp4"
    with VideoWriter(path, 24, (1280, 720)) as w:
        for f in read_frames(taiji_video, 100, 116):
            w.write(f)
    return path


def _tiny() -> list[str]:
    """The 32x32 renderer v1 of the tiny-subject tests (seconds per call)."""
    from tiny_subject import TINY_TRAIN

    return list(TINY_TRAIN)


def _counting(calls, name, fn):
    def wrapped(*args, **kwargs):
        calls.append(name)
        return fn(*args, **kwargs)
    return wrapped


def test_create_resumes_after_an_interruption(tmp_path, clip):
    from ram_avatar.capture.pipeline import capture
    from ram_avatar.demo import find_exporter
    from ram_avatar.motion.mda import fit_mda
    from ram_avatar.training.run import train_subject

    subject = tmp_path / "me"
    calls: list[str] = []
    real = {"capture": _counting(calls, "capture", capture),
            "train": _counting(calls, "train", train_subject),
            "export": _counting(calls, "export", find_exporter()),
            "fit-mda": _counting(calls, "fit-mda", fit_mda)}
    kw = dict(steps=3, preset="cpu-256-v1", device="cpu", overrides=_tiny(), mda_steps=5)

    def broken_export(*args, **kwargs):
        calls.append("export")
        raise Interrupted("the export was interrupted")

    # 1. interrupted at the export: capture and training are kept
    with pytest.raises(Interrupted):
        create(clip, subject, stages={**real, "export": broken_export}, **kw)
    assert calls == ["capture", "train", "export"]
    run = Subject(subject).run()
    assert read_metadata(run.latest_checkpoint())["step"] == 3
    assert not Subject(subject).export_onnx.exists()

    # 2. run again: capture and training are skipped, the export and fit-mda run
    calls.clear()
    res = create(clip, subject, stages=real, **kw)
    assert calls == ["export", "fit-mda"]
    assert [res["stages"][s]["status"] for s in ("capture", "train", "export", "fit-mda")] == [
        "skipped", "skipped", "ran", "ran"]
    state = json.loads((subject / "create.json").read_text())
    assert state["train"]["checkpoint"] == "step_00000003.safetensors"
    assert (subject / "mda" / "mda.safetensors").is_file()

    # 3. nothing changed: every stage is skipped
    calls.clear()
    res = create(clip, subject, stages=real, **kw)
    assert calls == [] and {r["status"] for r in res["stages"].values()} == {"skipped"}

    # 4. a larger budget resumes training from step 3 (not from scratch) and exports the new
    #    checkpoint; the capture, and with it the motion aligner, are unchanged
    calls.clear()
    res = create(clip, subject, stages=real, **{**kw, "steps": 5})
    assert calls == ["train", "export"]
    meta = read_metadata(run.latest_checkpoint())
    assert meta["step"] == 5
    assert json.loads(Subject(subject).export_manifest_path.read_text())[
        "checkpoint"].endswith("step_00000005.safetensors")

    # 5. an edited export is noticed and redone
    onnx = Subject(subject).export_onnx
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    calls.clear()
    create(clip, subject, stages=real, **{**kw, "steps": 5})
    assert calls == ["export"]


def test_minutes_budget_counts_time_over_interruptions(tmp_path, clip):
    """Checkpoints record the run's training seconds over all its calls; create trains only
    the rest of a minutes budget."""
    subject = tmp_path / "me"
    create(clip, subject, steps=2, preset="cpu-256-v1", device="cpu", overrides=_tiny(),
           stages={"export": lambda *a, **k: None, "fit-mda": lambda *a, **k: None})
    run = Subject(subject).run()
    first = read_metadata(run.latest_checkpoint())["extra"]["train_seconds"]
    assert first > 0
    argv = ["train", str(subject), "--preset", "cpu-256-v1", "--device", "cpu", "--steps", "4"]
    for s in _tiny():
        argv += ["--set", s]
    assert main(argv) == 0            # resumed: the seconds add up
    second = read_metadata(run.latest_checkpoint())["extra"]["train_seconds"]
    assert second > first
    minutes = 10.0
    left, steps = training_left(run, "cpu-256-v1", minutes, None)
    assert steps is None and left == pytest.approx(minutes - second / 60.0)
    assert training_left(run, "cpu-256-v1", second / 60.0, None) == (None, None)
    assert training_left(run, "cpu-256-v1", None, 4) == (None, None)
    assert training_left(run, "cpu-256-v1", None, 9) == (None, 9)
    with pytest.raises(CreateError, match="preset cpu-256-v1"):
        training_left(run, "cpu-256", minutes, None)


def test_another_video_is_not_overwritten(tmp_path, clip, basketball_video, capsys):
    from ram_avatar.capture.pipeline import capture

    subject = tmp_path / "me"
    capture(clip, subject, device="cpu", overlay=False)
    before = (subject / "sequence" / "fitted.npz").read_bytes()
    assert main(["create", str(basketball_video), "-o", str(subject), "--steps", "1",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "already holds the capture of another video" in err and "--overwrite" in err
    assert (subject / "sequence" / "fitted.npz").read_bytes() == before
    assert not (subject / "runs").exists()


def test_ctrl_c_saves_the_step_reached(tmp_path, anny_body):
    """SIGINT during training: the loop finishes its step, writes a checkpoint there (no
    periodic one is due) and exits 130; the same command resumes from that step."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tiny_subject import write_tiny_subject

    subject = write_tiny_subject(tmp_path / "s", anny_body, T=12)
    argv = [sys.executable, "-m", "ram_avatar.cli", "train", str(subject), "--preset",
            "cpu-256-v1", "--device", "cpu", "--steps", "100000"]
    for s in _tiny():
        argv += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tb = subject / "runs" / "default" / "tb"
    t0 = time.time()
    while not (tb.is_dir() and any(tb.iterdir())) and time.time() - t0 < 120:
        time.sleep(0.5)
    time.sleep(4.0)                           # a few steps
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert b"saving a checkpoint" in err
    run = Subject(subject).run()
    meta = read_metadata(run.latest_checkpoint())
    assert 0 < meta["step"] < 100000 and meta["extra"]["train_seconds"] > 0
    steps = meta["step"] + 2
    assert main(["train", str(subject), "--preset", "cpu-256-v1", "--device", "cpu",
                 "--steps", str(steps), *sum((["--set", s] for s in _tiny()), [])]) == 0
    resumed = read_metadata(run.latest_checkpoint())
    assert resumed["step"] == steps
    assert resumed["extra"]["train_seconds"] > meta["extra"]["train_seconds"]
