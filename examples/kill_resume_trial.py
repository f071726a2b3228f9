#!/usr/bin/env python
"""kill -9 at random points of training, then resume: how much work does each resume lose, and
what is left on disk? (issue 12, target "kill -9 x10 at random points in training: every resume
loses <= 1 checkpoint interval; no orphan or temporary files afterwards").

Usage::

    OMP_NUM_THREADS=1 python examples/kill_resume_trial.py SUBJECT [--trials 10] [--interval 5]
        [--min-s 2] [--max-s 30] [--seed 0] [--work DIR] [--preset P] [--set KEY=VALUE ...]
        [--json FILE]

SUBJECT is a captured subject (``ram-avatar capture``); it is never written to: its
``sequence/`` is copied into ``--work`` (default: a new temporary folder) and every trial trains
the run ``killtrial`` of that copy with ``checkpoint_interval=--interval``.

Each trial starts ``ram-avatar train COPY --run killtrial --steps N`` (resuming the run the
previous trial left), waits until its progress bar shows that the training loop is running,
waits a further random time drawn uniformly from ``[--min-s, --max-s]`` seconds (so kills fall
anywhere in the loop: in a step, in a validation, while a checkpoint is written), then sends
SIGKILL. Measured per trial:

``kill_s``
    seconds from the start of the process to the kill;
``step_at_kill``
    the last step the progress bar showed (rich redraws it 10 times a second, so with steps
    faster than 0.1 s it lags), raised to the newest checkpoint on disk or being written
    (a temporary ``.step_N.*.tmp`` file) when that is later;
``resumed_step``
    the step the next ``train`` resumes from: its ``resuming ... from step N`` log line (the
    newest checkpoint left on disk, which is also listed);
``lost_steps``
    ``step_at_kill - resumed_step``: work redone after the resume; the target is
    ``<= --interval``;
``left_after_kill``
    files a killed process leaves in the run folder: temporary files of atomic writes
    (``.NAME.RANDOM.tmp*``), ``step_N.aux.safetensors`` without its ``step_N.safetensors``,
    the stale lock file ``.lock`` (not held: the kernel dropped the lock);
``left_after_resume``
    the same list after the next ``train`` of the run has run (the next trial, or the final
    run): the target is that none of the first list survives. ``train`` removes stale
    temporary files when it writes its first checkpoint, so this needs the next trial to live
    past one checkpoint interval; the lock file is taken over by the next run (which
    therefore was not blocked) and is judged after the final run only.

After the last trial a final ``train`` resumes the run and finishes ``2 * --interval`` more
steps normally; the run folder is then listed again (target: nothing left over). The table is
printed (and written as JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RUN = "killtrial"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_BAR = re.compile(r"train\b[^\n\r]*?\s(\d+)/(\d+)")
_RESUME = re.compile(r"from\s*step\s*(\d+)")
_STEP = re.compile(r"step_(\d+)\.safetensors$")


def _command(work: Path, steps: int, interval: int, sets: list[str],
             preset: str | None = None) -> list[str]:
    code = "import sys; from ram_avatar.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, "train", str(work), "--run", RUN, "--steps", str(steps),
           "--set", f"checkpoint_interval={interval}"]
    if preset:
        cmd += ["--preset", preset]
    for s in sets:
        cmd += ["--set", s]
    return cmd


class _Watch:
    """Reads a child's stderr (rich progress redraws with \\r) and keeps the last bar step."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.step, self.text = proc, None, []
        self.first_bar_t: float | None = None
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        buf = b""
        while True:
            chunk = self.proc.stderr.read1(4096) if hasattr(self.proc.stderr, "read1") else \
                self.proc.stderr.read(4096)
            if not chunk:
                break
            buf += chunk
            parts = re.split(rb"[\r\n]", buf)
            buf = parts.pop()
            for raw in parts:
                line = _ANSI.sub("", raw.decode("utf-8", "replace"))
                self.text.append(line)
                m = _BAR.search(line)
                if m:
                    self.step = int(m.group(1))
                    if self.first_bar_t is None:
                        self.first_bar_t = time.perf_counter()

    def join(self) -> str:
        self._t.join(timeout=10)
        return "\n".join(self.text)


def _steps_written(run: Path) -> list[int]:
    """Steps of checkpoints being written (temporary files ``.step_N.RANDOM.tmp*``)."""
    ck = run / "checkpoints"
    return [int(m.group(1)) for p in ck.glob(".step_*.tmp*")
            if (m := re.match(r"\.step_(\d+)\.", p.name))] if ck.is_dir() else []


def _checkpoint_steps(run: Path) -> list[int]:
    ck = run / "checkpoints"
    return sorted(int(m.group(1)) for p in ck.glob("step_*.safetensors")
                  if (m := _STEP.search(p.name)) and ".aux" not in p.name) if ck.is_dir() else []


def leftovers(run: Path) -> list[str]:
    """Temporary files, aux checkpoints without their main file, and a lock file, under ``run``
    (paths relative to it)."""
    out = []
    if not run.is_dir():
        return out
    for p in sorted(run.rglob("*")):
        if not p.is_file():
            continue
        rel = str(p.relative_to(run))
        if p.name.startswith(".") and ".tmp" in p.name:
            out.append(rel)
        elif p.name == ".lock":
            out.append(rel + " (stale lock)")
        elif p.name.endswith(".aux.safetensors"):
            if not p.with_name(p.name.replace(".aux", "")).is_file():
                out.append(rel + " (aux without main)")
    return out


def _survivors(run: Path, left: list[str]) -> list[str]:
    """Which of the files a kill left are still there after the next run. The lock file is
    not counted: the next run takes over the same ``.lock`` (it started, so the stale lock did
    not block it) and a clean exit removes it (checked after the final run)."""
    return [f for f in left if "(stale lock)" not in f and (run / f.split(" ")[0]).exists()]


def _resumed(log: str) -> int | None:
    flat = re.sub(r"\s*\n\s*", "", log)  # rich wraps long log lines with indentation
    i = flat.find("resuming")
    if i < 0:
        return None
    m = _RESUME.search(flat, i)
    return int(m.group(1)) if m else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("subject", type=Path)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--interval", type=int, default=5, help="checkpoint_interval (steps)")
    ap.add_argument("--min-s", type=float, default=2.0)
    ap.add_argument("--max-s", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--preset", default=None, help="training preset (default: train's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--start-timeout", type=float, default=300.0,
                    help="seconds to wait for the training loop to start")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if not (a.subject / "sequence").is_dir():
        ap.error(f"{a.subject} has no sequence/ folder (capture it first)")
    if a.trials < 1 or a.interval < 1 or not 0 <= a.min_s <= a.max_s:
        ap.error("need --trials >= 1, --interval >= 1 and 0 <= --min-s <= --max-s")
    rng = random.Random(a.seed)
    work = a.work or Path(tempfile.mkdtemp(prefix="kill_resume_"))
    if not (work / "sequence").is_dir():
        shutil.copytree(a.subject / "sequence", work / "sequence")
    run = work / "runs" / RUN
    env = dict(os.environ, FORCE_COLOR="1", COLUMNS="200", PYTHONUNBUFFERED="1")
    target = 10 ** 6  # never reached: every trial is killed
    rows: list[dict] = []
    t_all = time.perf_counter()

    def launch(steps: int):
        proc = subprocess.Popen(_command(work, steps, a.interval, a.set, a.preset), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return proc, _Watch(proc), time.perf_counter()

    prev: dict | None = None
    for trial in range(1, a.trials + 1):
        proc, watch, t0 = launch(target)
        while watch.first_bar_t is None and proc.poll() is None:
            if time.perf_counter() - t0 > a.start_timeout:
                break
            time.sleep(0.05)
        if proc.poll() is not None or watch.first_bar_t is None:
            proc.kill()
            log = watch.join()
            sys.stderr.write(log[-3000:] + "\n")
            print(f"trial {trial}: training did not start (exit {proc.returncode})", file=sys.stderr)
            return 1
        delay = rng.uniform(a.min_s, a.max_s)
        time.sleep(delay)
        bar_step = watch.step
        kill_s = time.perf_counter() - t0
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        log = watch.join()
        # the bar may lag by up to 0.1 s: a checkpoint (or one being written) proves its step
        step_at_kill = max([bar_step or 0] + _checkpoint_steps(run) + _steps_written(run))
        if prev is not None:  # this run resumed the previous trial's kill
            prev["resumed_step"] = _resumed(log)
            prev["lost_steps"] = (None if prev["resumed_step"] is None
                                  else prev["step_at_kill"] - prev["resumed_step"])
            prev["left_after_resume"] = _survivors(run, prev["left_after_kill"])
        row = {"trial": trial, "kill_s": round(kill_s, 1), "step_at_kill": step_at_kill,
               "bar_step": bar_step,
               "latest_checkpoint": (_checkpoint_steps(run) or [None])[-1],
               "left_after_kill": leftovers(run)}
        rows.append(row)
        prev = row
        print(f"trial {trial}: killed at {kill_s:.1f} s, step {step_at_kill}, newest checkpoint "
              f"{row['latest_checkpoint']}, left {row['left_after_kill']}", file=sys.stderr, flush=True)

    # final run: resume and finish 2 checkpoint intervals normally
    final_steps = (rows[-1]["latest_checkpoint"] or 0) + 2 * a.interval
    proc, watch, t0 = launch(final_steps)
    rc = proc.wait()
    log = watch.join()
    prev["resumed_step"] = _resumed(log)
    prev["lost_steps"] = (None if prev["resumed_step"] is None
                          else prev["step_at_kill"] - prev["resumed_step"])
    prev["left_after_resume"] = _survivors(run, prev["left_after_kill"])
    final = {"exit_code": rc, "steps_target": final_steps,
             "latest_checkpoint": (_checkpoint_steps(run) or [None])[-1],
             "left_over": leftovers(run), "seconds": round(time.perf_counter() - t0, 1)}
    if rc != 0:
        sys.stderr.write(log[-3000:] + "\n")

    lost = [r["lost_steps"] for r in rows if r.get("lost_steps") is not None]
    summary = {"trials": len(rows), "checkpoint_interval": a.interval,
               "max_lost_steps": max(lost) if lost else None,
               "every_resume_within_one_interval": bool(lost) and len(lost) == len(rows)
               and max(lost) <= a.interval,
               "nothing_left_after_resume": all(not r["left_after_resume"] for r in rows)
               and not final["left_over"],
               "total_s": round(time.perf_counter() - t_all, 1),
               "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
               "work": str(work), "set": a.set}
    hdr = ("trial", "kill_s", "step_at_kill", "resumed_step", "lost_steps", "left_after_kill",
           "left_after_resume")
    print("| " + " | ".join(hdr) + " |")
    print("|" + " --- |" * len(hdr))
    for r in rows:
        print("| " + " | ".join(
            ", ".join(v) or "-" if isinstance(v, list) else str(v)
            for v in (r.get(k) for k in hdr)) + " |")
    print(f"\nfinal run: exit {final['exit_code']}, newest checkpoint {final['latest_checkpoint']} "
          f"(target {final_steps}), left over: {final['left_over'] or 'nothing'}")
    print(json.dumps(summary))
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "final": final, "summary": summary}, indent=1))
    ok = summary["every_resume_within_one_interval"] and summary["nothing_left_after_resume"] \
        and rc == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
