"""A run belongs to one capture: after the subject is captured again, its old run is refused."""

from __future__ import annotations

import json

import pytest

from ram_avatar.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(subject, *extra):
    from tiny_subject import TINY_TRAIN

    argv = ["train", str(subject), "--preset", "cpu-256-v1", "--device", "cpu", *extra]
    for s in TINY_TRAIN:
        argv += ["--set", s]
    return main(argv)


def test_run_of_another_capture_is_refused(tmp_path, anny_body, capsys):
    from tiny_subject import write_tiny_subject

    subject = write_tiny_subject(tmp_path / "s", anny_body, T=12)
    assert _train(subject, "--steps", "1") == 0
    record = json.loads((subject / "runs" / "default" / "sequence.json").read_text())
    assert len(record["sha256"]) == 64
    assert _train(subject, "--steps", "2") == 0               # same capture: resumes
    assert main(["export", str(subject)]) == 0
    meta = json.loads((subject / "export" / "export.json").read_text())
    assert meta["sequence_sha256"] == record["sha256"]
    capsys.readouterr()
    # the folder gets another capture (here: the same figure raising its arms) without moving
    # the old run away
    write_tiny_subject(subject, anny_body, T=12, raised=(4, 8))
    assert _train(subject, "--steps", "3") == 2
    assert "trained on another sequence" in capsys.readouterr().err
    assert main(["export", str(subject)]) == 2
    assert "trained on another sequence" in capsys.readouterr().err
    assert json.loads((subject / "export" / "export.json").read_text()) == meta  # untouched
    assert _train(subject, "--steps", "1", "--run", "fresh") == 0  # a new run is fine
