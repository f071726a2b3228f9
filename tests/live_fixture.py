"""A tiny captured + trained + exported subject for the live-runtime and GUI tests.

``live_subject`` is a session fixture imported by tests/test_runtime.py and tests/test_gui.py;
the subject is built once per test session (module-level cache, so both files share it):
``capture`` of 20 frames of examples/taiji.mp4 (frames 100-120), ``train`` for 4 steps,
``export`` to ONNX, all on CPU (about a minute on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TAIJI = ROOT / "examples" / "taiji.mp4"
BASKETBALL = ROOT / "examples" / "basketball_drive.mp4"

_BUILT: dict[str, Path] = {}


def build_live_subject(directory: Path) -> Path:
    """capture (20 frames) -> train (4 steps) -> export into ``directory``; returns it."""
    from ram_avatar.cli import main

    d = str(directory)
    assert main(["capture", str(TAIJI), "-o", d, "--start", "100", "--end", "120",
                 "--no-overlay", "--device", "cpu"]) == 0
    assert main(["train", d, "--steps", "4", "--device", "cpu"]) == 0
    assert main(["export", d]) == 0
    assert (directory / "export" / "avatar.onnx").is_file()
    return directory


@pytest.fixture(scope="session")
def live_subject(tmp_path_factory) -> Path:
    if "subject" not in _BUILT:
        _BUILT["subject"] = build_live_subject(tmp_path_factory.mktemp("live_subject"))
    return _BUILT["subject"]


class FakeStageRuntime:
    """Stands in for AvatarRuntime where only the app's source and message handling is tested:
    the pipelined stage interface the GUI worker calls (stage_track / stage_pose /
    stage_render), with a grey 64x64 frame whose stats report ``person`` (a class attribute
    tests may flip)."""

    resolution = 64
    mda_available, mda_status, mda_enabled, want_landmarks = False, "not fitted", False, False
    person = False

    class engine:  # noqa: N801
        name, providers = "fake", ["none"]

    def __init__(self):
        from ram_avatar.runtime.avatar_runtime import FrameResult

        self.last = FrameResult()

    def stage_track(self, frame, ts):
        return {"stats": {"track": 1.0}, "t_capture": ts}

    def stage_pose(self, job):
        job["stats"].update({k: 1.0 for k in ("fit", "retarget", "align", "maps")})
        return job

    def stage_render(self, job):
        import numpy as np

        img = np.full((64, 64, 3), 128, np.uint8)
        return img, {**job["stats"], "render": 1.0, "total": 6.0, "latency": 6.0,
                     "person": type(self).person, "full_fit": False, "seq": job.get("seq")}

    def set_mda(self, on):
        return False

    def set_lower_body(self, mode):
        self.lower_body = mode

    def release_thread_resources(self):
        pass

    def reset(self):
        pass

    def close(self):
        pass
