"""``ram-avatar demo``: the whole studio on the bundled sample videos (CPU friendly).

capture ``examples/taiji.mp4`` -> train ``cpu-256`` for N minutes -> export ONNX -> evaluate on
the held-out frames -> drive the avatar with ``examples/basketball_drive.mp4``. Each stage is
the real ``ram-avatar`` verb, run in-process; re-running resumes (capture is skipped when the
subject already exists, training continues from its latest checkpoint).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

from ram_avatar.errors import RamAvatarError

log = logging.getLogger(__name__)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def find_example(name: str) -> Path:
    """Path of a bundled example video (repository ``examples/``)."""
    path = EXAMPLES / name
    if not path.is_file():
        raise RamAvatarError(f"bundled example {path} is missing: run the demo from a clone of the "
                             "repository (pip install -e .), or pass your own videos to the verbs")
    return path


def run_demo(workdir: Path, minutes: float = 20.0, device: str = "auto",
             run_verb: Callable[[list[str]], int] | None = None) -> dict:
    """Run capture -> train -> export -> evaluate -> drive in ``workdir``; return timings and
    the paths of the outputs (``workdir/drive.mp4`` is the driven avatar video)."""
    if run_verb is None:
        from ram_avatar.cli import run_verb
    subject = workdir / "taiji"
    out = workdir / "drive.mp4"
    timings = {}

    def stage(name: str, argv: list[str]) -> None:
        t = time.time()
        log.info("demo stage: %s", name)
        run_verb(argv)
        timings[name] = round(time.time() - t, 1)

    if not (subject / "sequence" / "manifest.json").is_file():
        stage("capture", ["capture", str(find_example("taiji.mp4")), "-o", str(subject), "--device", device])
    stage("train", ["train", str(subject), "--preset", "cpu-256", "--minutes", str(minutes), "--device", device])
    stage("export", ["export", str(subject)])
    stage("evaluate", ["evaluate", str(subject), "--device", device])
    stage("drive", ["drive", str(subject), "--source", str(find_example("basketball_drive.mp4")),
                    "-o", str(out), "--device", device])
    metrics = json.loads((subject / "runs" / "default" / "metrics.json").read_text())
    export = json.loads((subject / "export" / "export.json").read_text())
    return {"subject": str(subject), "video": str(out), "timings_s": timings,
            "held_out": {k: metrics[k] for k in ("psnr", "ssim", "psnr_masked", "ssim_masked", "lpips", "frames")},
            "onnx_max_abs_diff": export["max_abs_diff"]}
