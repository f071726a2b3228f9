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
