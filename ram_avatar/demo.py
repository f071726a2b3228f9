"""``ram-avatar demo``: the whole studio on the bundled sample videos (CPU friendly).

capture ``examples/taiji.mp4`` -> train ``cpu-256`` for N minutes -> export ONNX -> evaluate on
the held-out frames -> drive the avatar with ``examples/basketball_drive.mp4``. Each stage
calls the function behind its ``ram-avatar`` verb with the verb's defaults (no argv strings);
re-running resumes (capture is skipped when the subject already exists, training continues
from its latest checkpoint).

The export stage belongs to the ``exporters`` plug-in, which ``ram_avatar`` never imports
(pyproject ``[tool.importlinter]``): it is found through the ``ram_avatar.exporters`` entry
point, as ``bench gpu`` finds the TensorRT builder.
"""

from __future__ import annotations

import logging
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

from ram_avatar.errors import RamAvatarError
from ram_avatar.io.subject import Subject

log = logging.getLogger(__name__)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: entry point group of the exporters plug-in (pyproject ``[project.entry-points]``)
EXPORTER_GROUP = "ram_avatar.exporters"


def find_example(name: str) -> Path:
    """Path of a bundled example video (repository ``examples/``)."""
    path = EXAMPLES / name
    if not path.is_file():
        raise RamAvatarError(f"bundled example {path} is missing: run the demo from a clone of the "
                             "repository (pip install -e .), or pass your own videos to the verbs")
    return path


def find_exporter(name: str = "avatar") -> Callable[..., dict]:
    """The subject exporter the ``exporters`` plug-in registers (``export_avatar(subject_dir,
    run_name=..., ...) -> report``), found by entry point.

    Raises:
        RamAvatarError: the plug-in is not installed (or its metadata predates the entry point).
    """
    for ep in entry_points(group=EXPORTER_GROUP):
        if ep.name == name:
            return ep.load()
    raise RamAvatarError(f"no '{name}' exporter registered under the {EXPORTER_GROUP!r} entry "
                         "points: reinstall the studio (pip install -e .) so that the exporters "
                         "plug-in is registered")


def run_demo(workdir: Path, minutes: float = 20.0, device: str = "auto",
             stages: dict[str, Callable] | None = None) -> dict:
    """Run capture -> train -> export -> evaluate -> drive in ``workdir``; return timings and
    the paths of the outputs (``workdir/drive.mp4`` is the driven avatar video).

    Args:
        workdir: working directory (the subject is ``workdir/taiji``).
        minutes: training budget of this call.
        device: ``auto`` | ``cpu`` | ``cuda`` for every stage.
        stages: replacements of stage functions by name (``capture``, ``train``, ``export``,
            ``evaluate``, ``drive``), for tests; same signatures as the defaults.
    Returns:
        dict: ``subject``, ``video``, ``timings_s`` per stage, ``held_out`` metrics and the
        export's ``onnx_max_abs_diff``.
    Raises:
        RamAvatarError (and subclasses) of the failing stage; the bundled examples missing.
    """
    from ram_avatar.capture.pipeline import capture
    from ram_avatar.drive import drive
    from ram_avatar.eval.evaluate import evaluate_subject
    from ram_avatar.training.run import train_subject

    fns = {"capture": capture, "train": train_subject, "evaluate": evaluate_subject,
           "drive": drive, **(stages or {})}
    if "export" not in fns:
        fns["export"] = find_exporter()
    subject = Subject(Path(workdir) / "taiji")
    out = Path(workdir) / "drive.mp4"
    timings = {}

    def stage(name: str, *args, **kwargs):
        t = time.time()
        log.info("demo stage: %s", name)
        result = fns[name](*args, **kwargs)
        timings[name] = round(time.time() - t, 1)
        return result

    if not subject.has_sequence():
        stage("capture", find_example("taiji.mp4"), subject.root, device=device)
    stage("train", subject.root, preset="cpu-256", minutes=minutes, device=device)
    export = stage("export", subject.root)
    metrics = stage("evaluate", subject.root, device=device)
    stage("drive", subject.root, find_example("basketball_drive.mp4"), out, device=device)
    return {"subject": str(subject.root), "video": str(out), "timings_s": timings,
            "held_out": {k: metrics[k] for k in ("psnr", "ssim", "psnr_masked", "ssim_masked",
                                                 "lpips", "frames")},
            "onnx_max_abs_diff": export["max_abs_diff"]}
