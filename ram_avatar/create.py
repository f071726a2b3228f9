"""``ram-avatar create VIDEO -o SUBJECT``: one verb for a creator (issue 13, item 7).

capture -> train -> export -> fit-mda, each stage the function behind its own verb with that
verb's defaults, under one display: a header per stage (``[2/4] train``) above the stage's own
progress bars, and a table of what each stage did at the end.

**Resuming.** Run again, ``create`` skips a stage whose outputs are complete and still match
its inputs. Each decision reads the stage's own records, except fit-mda's (its ``mda.json``
does not name the capture), which ``<subject>/create.json`` holds; that file also logs what
every stage produced (sha256 of the video, of ``sequence/fitted.npz``, of the latest checkpoint
and of ``avatar.onnx``), for people, not for the decisions:

- ``capture``: the subject's sequence was captured from this very video (the manifest's source
  sha256) over all its frames. A subject holding a capture of *another* video is an error
  (nothing is overwritten: use another ``-o``, or ``capture --overwrite``).
- ``train``: the run's latest checkpoint was trained on this capture with this preset and has
  used up the budget: ``--steps N`` counts the global step, ``--minutes M`` the training time
  summed over every call (``train_seconds`` in each checkpoint, training.trainer). An
  interrupted training resumes from its latest checkpoint with the rest of the budget.
- ``export``: ``export.json`` names this run, its latest checkpoint and this capture
  (sha256), and the ONNX file is the one it describes.
- ``fit-mda``: the motion aligner was fitted by ``create`` on this capture, for this run's split
  (it learns the poses the run trained on), and its file is unchanged (more training of the
  same run does not redo it: its split was decided once).

The export stage belongs to the ``exporters`` plug-in, found through its entry point as in
:mod:`ram_avatar.demo`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

from ram_avatar.demo import find_exporter
from ram_avatar.errors import RamAvatarError
from ram_avatar.io.subject import DEFAULT_RUN, Subject
from ram_avatar.utils import atomic_write_text, sha256_file

log = logging.getLogger(__name__)

#: the stages, in order
STAGES = ("capture", "train", "export", "fit-mda")
#: what ``create`` records in the subject folder
STATE_FILE = "create.json"
#: default training budget (minutes) when neither minutes nor steps are given
DEFAULT_MINUTES = 20.0


class CreateError(RamAvatarError):
    """``create`` cannot go on without losing something (e.g. the subject folder holds the
    capture of another video)."""


def _read_state(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _sha(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def capture_matches(subject: Subject, video_sha: str) -> bool:
    """True when ``subject`` holds a capture of the video with sha256 ``video_sha`` over all
    its frames.

    Raises:
        CreateError: the subject holds a capture of another video, or of part of it.
    """
    if not subject.has_sequence():
        return False
    source = subject.manifest().get("source") or {}
    if source.get("sha256") != video_sha:
        raise CreateError(
            f"{subject.root} already holds the capture of another video "
            f"({source.get('name', '?')}); create the avatar in another folder (-o), or replace "
            f"it with `ram-avatar capture VIDEO -o {subject.root} --overwrite`")
    if int(source.get("start", 0)) != 0:
        raise CreateError(
            f"{subject.root} holds a capture of part of this video (from frame "
            f"{source.get('start')}); create the avatar in another folder (-o), or re-capture "
            f"it with `ram-avatar capture VIDEO -o {subject.root} --overwrite`")
    return True


def training_left(run, preset: str, minutes: float | None, steps: int | None
                  ) -> tuple[float | None, int | None]:
    """What remains of the training budget of ``run``: ``(minutes, steps)`` to pass to
    ``train_subject``, ``(None, None)`` when the budget is used up.

    ``steps`` is a total step count (training resumes up to it); ``minutes`` is the total
    training time, less the ``train_seconds`` the latest checkpoint records.

    Raises:
        CreateError: the run was trained with another preset; CheckpointError: on another
        capture of the subject.
    """
    from ram_avatar.io.checkpoint import check_run_sequence, read_metadata

    ckpt = run.latest_checkpoint()
    if ckpt is None:
        return minutes, steps
    trained = run.config_dict().get("preset")
    if trained is not None and trained != preset:
        raise CreateError(f"{run.dir} was trained with preset {trained}, not {preset}: pass "
                          f"--preset {trained} to continue it, or --run NAME for a new run")
    check_run_sequence(run.dir, run.subject.sequence_dir)  # trained on this capture?
    meta = read_metadata(ckpt)
    if steps is not None:
        return (None, None) if int(meta.get("step", 0)) >= steps else (None, steps)
    done = float((meta.get("extra") or {}).get("train_seconds") or 0.0)
    left = minutes - done / 60.0
    return (None, None) if left <= 1e-3 else (left, None)


def export_matches(subject: Subject, run, fitted_sha: str) -> bool:
    """True when ``export/`` holds the ONNX export of ``run``'s latest checkpoint, trained on
    the capture with sha256 ``fitted_sha``, unchanged since it was written."""
    try:
        meta = subject.export_manifest()
    except RamAvatarError:
        return False
    ckpt = run.latest_checkpoint()
    return (ckpt is not None and meta.get("run") == run.name
            and meta.get("checkpoint_sha256") == _sha(ckpt)
            and meta.get("sequence_sha256") == fitted_sha
            and meta.get("sha256") is not None and meta.get("sha256") == _sha(subject.export_onnx))


def create(video: str | Path, subject_dir: str | Path, minutes: float | None = None,
           steps: int | None = None, preset: str = "cpu-256", run_name: str = DEFAULT_RUN,
           device: str = "auto", overrides: list[str] | None = None,
           mda_minutes: float | None = None, mda_steps: int | None = None,
           stages: dict[str, Callable] | None = None, console=None) -> dict:
    """Build an avatar from one video: capture -> train -> export -> fit-mda (module docstring),
    skipping the stages that are already complete.

    Args:
        video: the creator's video.
        subject_dir: the subject folder to create (or to continue).
        minutes: total training time in minutes (default :data:`DEFAULT_MINUTES` unless
            ``steps`` is given), summed over interrupted calls.
        steps: total training steps instead of minutes (given both, ``steps`` is used).
        preset: training preset (``train --preset``).
        run_name: the training run.
        device: ``auto`` | ``cpu`` | ``cuda`` for every stage.
        overrides: ``--set key=value`` training overrides (a new run only).
        mda_minutes, mda_steps: budget of ``fit-mda`` (None: its defaults).
        stages: replacements of the stage functions by name (``capture``, ``train``,
            ``export``, ``fit-mda``), for tests; same signatures as the defaults.
        console: a ``rich`` console for the stage headers and the summary (default: stderr).
    Returns:
        dict: ``subject``, ``stages`` (per stage: ``status`` ``ran`` | ``skipped``, ``seconds``,
        ``why``), ``export`` (the ONNX file), ``state`` (the ``create.json`` path).
    Raises:
        CreateError: the subject folder holds another capture, or the run another preset;
        the errors of the failing stage (its outputs and everything before it are kept, so
        running the same command again continues from there).
    """
    from rich.console import Console

    from ram_avatar.capture.pipeline import capture
    from ram_avatar.motion.mda import fit_mda
    from ram_avatar.training.run import train_subject

    if minutes is None and steps is None:
        minutes = DEFAULT_MINUTES
    if (minutes is not None and minutes <= 0) or (steps is not None and steps <= 0):
        raise RamAvatarError("create: --minutes and --steps must be > 0")
    video = Path(video)
    if not video.is_file():
        raise RamAvatarError(f"video {video} not found")
    fns = {"capture": capture, "train": train_subject, "fit-mda": fit_mda, **(stages or {})}
    if "export" not in fns:
        fns["export"] = find_exporter()
    subject = Subject(subject_dir)
    run = subject.run(run_name)
    p = _Progress(subject.root / STATE_FILE, console or Console(stderr=True))

    video_sha = sha256_file(video)
    p.stage("capture", f"{subject.sequence_dir} is a capture of {video.name}"
            if capture_matches(subject, video_sha) else None,
            f"{video.name} -> {subject.sequence_dir}", "no capture of this video yet",
            lambda: fns["capture"](video, subject.root, device=device))
    fitted_sha = sha256_file(subject.fitted_path)
    p.save(video=str(video), video_sha256=video_sha, fitted_sha256=fitted_sha)

    left_minutes, left_steps = training_left(run, preset, minutes, steps)
    resumed = run.latest_checkpoint() is not None
    budget = f"{steps} steps" if steps is not None else f"{minutes:g} min"
    rest = (f"{steps} steps in all" if steps is not None
            else f"{(left_minutes or 0):.1f} of {minutes:g} min")
    p.stage("train", f"{run.dir.name} has trained its {budget} ({preset})"
            if left_minutes is None and left_steps is None else None,
            f"{preset}, {rest}" + (", resuming" if resumed else ""),
            "resumed an interrupted run" if resumed else "a new run",
            lambda: fns["train"](subject.root, preset=preset, steps=left_steps,
                                 minutes=left_minutes, run_name=run_name, device=device,
                                 overrides=list(overrides or [])))
    ckpt = run.latest_checkpoint()
    if ckpt is None:
        raise RamAvatarError(f"training wrote no checkpoint in {run.dir}")
    p.save(train={"run": run_name, "preset": preset, "minutes": minutes, "steps": steps,
                  "checkpoint": ckpt.name, "checkpoint_sha256": sha256_file(ckpt)})

    p.stage("export", f"{subject.export_onnx.name} is the export of {ckpt.name}"
            if export_matches(subject, run, fitted_sha) else None,
            f"{ckpt.name} -> {subject.export_onnx}", "no export of this checkpoint yet",
            lambda: fns["export"](subject.root, run_name=run_name))
    p.save(export={"onnx_sha256": _sha(subject.export_onnx)})

    mda_file = subject.mda_dir / "mda.safetensors"
    done = p.state.get("fit-mda") or {}
    fitted = (done.get("fitted_sha256") == fitted_sha and done.get("sha256") is not None
              and done.get("sha256") == _sha(mda_file) and done.get("run", run_name) == run_name)
    p.stage("fit-mda", f"{subject.mda_dir.name}/ was fitted on this capture and run {run_name}'s "
            "split" if fitted else None,
            f"motion aligner -> {subject.mda_dir}", "not fitted on this capture and run yet",
            lambda: fns["fit-mda"](subject.root, steps=mda_steps, minutes=mda_minutes,
                                   device=device, run=run_name))
    p.save(**{"fit-mda": {"fitted_sha256": fitted_sha, "sha256": _sha(mda_file), "run": run_name}})
    p.print_table(f"ram-avatar create: {subject.root}")
    return {"subject": str(subject.root), "stages": p.report, "export": str(subject.export_onnx),
            "state": str(p.path)}


class _Progress:
    """The display, the per-stage report and ``create.json`` of one :func:`create` call."""

    def __init__(self, path: Path, console) -> None:
        self.path, self.console = path, console
        self.state = _read_state(path)
        self.report: dict[str, dict] = {}

    def save(self, **updates) -> None:
        """Update ``create.json`` (atomically)."""
        self.state.update(updates)
        atomic_write_text(self.path, json.dumps(self.state, indent=1))

    def stage(self, name: str, skip_why: str | None, what: str, why: str,
              fn: Callable[[], object]) -> None:
        """Show the stage's header; run ``fn`` unless ``skip_why`` says it is complete."""
        head = f"[bold][{STAGES.index(name) + 1}/{len(STAGES)}] {name}[/bold]: "
        if skip_why is not None:
            self.console.rule(head + f"skipped, {skip_why}")
            self.report[name] = {"status": "skipped", "seconds": 0.0, "why": skip_why}
            return
        self.console.rule(head + what)
        t0 = time.time()
        fn()
        self.report[name] = {"status": "ran", "seconds": round(time.time() - t0, 1), "why": why}

    def print_table(self, title: str) -> None:
        from rich.table import Table

        table = Table(title=title)
        for col in ("stage", "status", "seconds", "why"):
            table.add_column(col)
        for name in STAGES:
            r = self.report[name]
            table.add_row(name, r["status"], f"{r['seconds']:.1f}", r["why"])
        self.console.print(table)
