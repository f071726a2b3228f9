"""Shared fixtures: the Anny body model (built once per session), paths of the sample videos."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for tests/synthetic_smplx.py

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="session")
def anny_body():
    from ram_avatar.body import load_body_model

    return load_body_model("anny")


@pytest.fixture(scope="session")
def taiji_video() -> Path:
    return EXAMPLES / "taiji.mp4"


@pytest.fixture(scope="session")
def basketball_video() -> Path:
    return EXAMPLES / "basketball_drive.mp4"


@pytest.fixture(scope="session")
def smplx_dir(tmp_path_factory) -> Path:
    from synthetic_smplx import write_synthetic_smplx

    d = tmp_path_factory.mktemp("smplx_model")
    write_synthetic_smplx(d)
    return d


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield


@pytest.fixture
def one_thread():
    """One torch thread for tests of many tiny ops (small MLPs, forward kinematics): fastest
    on a shared machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
