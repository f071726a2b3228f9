"""Pipelined live runtime: track | fit + retarget + align + maps | render, overlapped in threads.

:meth:`AvatarRuntime.process` runs its stages one after another, so a frame costs the sum of
the stages. :class:`LivePipeline` runs the same stage functions
(:meth:`~ram_avatar.runtime.avatar_runtime.AvatarRuntime.stage_track`, ``stage_pose``,
``stage_render``) in three threads connected by one-slot queues (:class:`Slot`), so while
frame n is rendered, frame n+1 is fitted and frame n+2 tracked: throughput approaches
1 / the slowest stage. MediaPipe, torch, ONNX Runtime and OpenVINO release the GIL in their
kernels, so threads overlap (on a CPU the stages then share the cores, and each stage gets
slower than alone: the gain is largest when the cores are not all busy). MediaPipe hands each
output stream back through a Python callback, which waits for the GIL: beside a busy Python
thread a Holistic frame took 96-124 ms instead of 65-72. Running the tracker in a child process
removes that wait, but on 2 cores the pipeline is CPU-bound and the gain stayed within the
host's noise (7 alternating ``bench live`` pairs: the child process ahead in 5, median pair
difference +0.18 fps, p95 522 ms both), so the stages stay threads of one process.

With ``split_pose=True`` the pose stage runs as two (``stage_fit`` | ``stage_maps``, four
stages in all). With the OpenVINO renderer the pose stage is the slowest of the three, but on
the 2-core development machine splitting it did not pay: the fit and the maps are many small
torch operations that hold the GIL between kernels, so the two threads mostly wait for each
other (the fit's time in the pipeline rose from 100-113 ms, 165 in a slow round, to 147-198
ms). ``bench live``, 5 rounds alternating, OpenVINO, ``cpu-256``: 4.11-5.52 fps (median 4.97)
split against 3.16-5.09 (median 4.64) joined, but latency p50 538-678 ms (median 573) against
464-740 (median 495). So the three-stage form stays the default; ``bench live --split-pose``
measures the other on a machine with more cores.

Queue policy (newest frame first):

* the input slot **drops**: a frame submitted while the previous one is still waiting to be
  tracked replaces it (the dropped count is kept), so a fast camera never builds a backlog;
* the slots between stages **block** (size 1), and a stage takes its next input only once
  its output slot is empty: a stage that is ahead waits for the next one instead of doing
  work that would be thrown away (on a CPU, wasted work slows the others), and what it
  takes then is the newest frame, so frames do not queue up behind a slow stage;
* the output slot drops too: a consumer that is behind sees the newest avatar frame.

Pacing (``pacing=True``, the default): blocking slots alone keep throughput at the slowest
stage, but a frame still waits in front of every busy stage (tracked while the pose stage is
busy, posed while the renderer is busy), so the end-to-end latency approaches the number of
stages times the slowest stage. With pacing, every stage but the renderer starts its next
frame *just in time*:
at the moment the next stage is expected to take a new input, minus their own expected
duration. The expectations are running estimates of each stage's duration, the mean plus
twice the mean deviation (Jacobson's round-trip-time estimator, SIGCOMM 1988), so a stage that
runs a little long rarely leaves the next one idle. The tracker then takes a fresher camera
frame, and the frame waits less between the stages. The throughput is the slowest stage's
either way.

Each stage runs on one thread for the life of the pipeline: the maps stage owns a moderngl /
EGL context (one per thread, :mod:`ram_avatar.render.rasterizer`), released when it ends.
The GUI's :class:`gui.worker.LiveWorker` and ``ram-avatar bench live`` both drive the runtime
through this class.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import numpy as np
import torch

log = logging.getLogger(__name__)

__all__ = ["Slot", "LivePipeline"]


class Slot:
    """A queue of size 1 with a newest-item (``drop``) or a back-pressure (``block``) policy.

    Args:
        drop: True: :meth:`put` replaces an item nobody took yet (counted in :attr:`dropped`);
            False: :meth:`put` waits until the slot is empty.
    """

    def __init__(self, drop: bool):
        self.drop = bool(drop)
        self._cv = threading.Condition()
        self._item = None
        self._full = False
        self.dropped = 0

    def put(self, item, stop: threading.Event | None = None) -> bool:
        """Store ``item``; returns False when ``stop`` was set while waiting (item not stored)."""
        with self._cv:
            if self.drop:
                if self._full:
                    self.dropped += 1
            else:
                while self._full:
                    if stop is not None and stop.is_set():
                        return False
                    self._cv.wait(0.05)
            self._item, self._full = item, True
            self._cv.notify_all()
            return True

    def get(self, timeout: float | None = None):
        """The item, or None after ``timeout`` seconds with nothing in the slot."""
        with self._cv:
            end = None if timeout is None else time.monotonic() + timeout
            while not self._full:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cv.wait(left if left is not None else 0.05)
            item, self._item, self._full = self._item, None, False
            self._cv.notify_all()
            return item

    def wait_empty(self, stop: threading.Event | None = None) -> bool:
        """Wait until the slot is empty; False when ``stop`` was set first."""
        with self._cv:
            while self._full:
                if stop is not None and stop.is_set():
                    return False
                self._cv.wait(0.05)
            return True

    def clear(self) -> None:
        with self._cv:
            self._item, self._full = None, False
            self._cv.notify_all()


class LivePipeline:
    """Run an :class:`~ram_avatar.runtime.avatar_runtime.AvatarRuntime` as a 3-stage pipeline
    (track | pose | render), or with ``split_pose=True`` as 4 stages (track | fit | maps |
    render) when the runtime has ``stage_fit`` and ``stage_maps``.

    Args:
        runtime: the runtime (its stage methods are called from the pipeline's threads only:
            do not call :meth:`AvatarRuntime.process` while the pipeline runs).
        on_result: optional ``callback(image, stats)`` called on the render thread for every
            finished frame (besides the output slot, read with :meth:`get`).
        torch_threads: intra-op torch threads while the pipeline runs (the stages already run
            in parallel; 1 avoids threads spinning against each other on a CPU).
        pacing: start every stage but the renderer just in time for the next stage (module
            docstring): lower latency at the same throughput. False: each stage starts as
            soon as its output slot is empty.
        split_pose: run the runtime's ``stage_fit`` and ``stage_maps`` as two stages when it
            has them (module docstring: not faster on 2 cores); False: ``stage_pose`` as one.

    Attributes:
        stages: ``(name, function)`` per stage, in order.

    Use: ``start()``, then ``submit(frame)`` per camera frame and ``get()`` for results
    ``(image, stats)`` in frame order (image: (S,S,3) uint8, or the runtime's composed output
    (framing / background, :meth:`AvatarRuntime.set_output`): (H,W,3), or (H,W,4) RGBA for a
    transparent background; stats as :meth:`AvatarRuntime.stage_render`, ``seq`` = submission
    number, ``latency`` = ms from :meth:`submit` to the rendered frame); ``stop()`` at the end
    (or use ``with``). Output settings may change while it runs (the fit / pose stage applies
    them to the next frame it takes).
    Errors in a stage are logged and returned as ``(None, {"error": message, "seq": n})``.
    """

    #: gain of the running mean / mean deviation of the stage durations (pacing)
    EMA_GAIN = 0.25

    def __init__(self, runtime, on_result: Callable[[np.ndarray, dict], None] | None = None,
                 torch_threads: int | None = 1, pacing: bool = True, split_pose: bool = False):
        self.runtime = runtime
        self.pacing = bool(pacing)
        rt = runtime
        if split_pose and hasattr(rt, "stage_fit") and hasattr(rt, "stage_maps"):
            self.stages = [("track", self._track), ("fit", rt.stage_fit),
                           ("maps", rt.stage_maps), ("render", self._render)]
        else:
            self.stages = [("track", self._track), ("pose", rt.stage_pose),
                           ("render", self._render)]
        n = len(self.stages)
        # per stage: start time of the frame in progress (None: idle), running mean and mean
        # deviation of the durations (s)
        self._busy_since: list[float | None] = [None] * n
        self._mean: list[float | None] = [None] * n
        self._dev: list[float] = [0.0] * n
        self._want_input = threading.Event()
        self.on_result = on_result
        self.torch_threads = torch_threads
        self.inbox = Slot(drop=True)
        self.outbox = Slot(drop=True)
        # per stage: its input slot (the slots between stages block)
        self._inputs: list[Slot] = [self.inbox] + [Slot(drop=False) for _ in range(n - 1)]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seq = 0
        self._saved_threads: int | None = None
        self.completed = 0

    # -- control --------------------------------------------------------------------------------
    def start(self) -> "LivePipeline":
        if self._threads:
            return self
        self._stop.clear()
        if self.torch_threads is not None:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.torch_threads)
        outputs = self._inputs[1:] + [self.outbox]
        for i, ((name, fn), src, dst) in enumerate(zip(self.stages, self._inputs, outputs)):
            th = threading.Thread(target=self._loop, args=(name, src, dst, fn, i),
                                  name=f"live-{name}", daemon=True)
            th.start()
            self._threads.append(th)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the threads (each finishes its current frame) and restore torch's threads."""
        self._stop.set()
        for th in self._threads:
            th.join(timeout)
        self._threads = []
        for s in self._inputs:
            s.clear()
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None

    def __enter__(self) -> "LivePipeline":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return bool(self._threads)

    @property
    def dropped(self) -> int:
        """Frames replaced in the input slot before they were tracked."""
        return self.inbox.dropped

    def submit(self, frame: np.ndarray, timestamp: float | None = None) -> int:
        """Queue a camera frame (replacing one not yet tracked); returns its sequence number."""
        self._seq += 1
        ts = time.perf_counter() if timestamp is None else timestamp
        self.inbox.put((self._seq, frame, ts))
        return self._seq

    def wants_input(self) -> bool:
        """True when the tracker is waiting for a camera frame and none is queued: a source
        that produces frames on demand (``bench live``) submits one now."""
        return self._want_input.is_set() and not self.inbox._full

    def idle(self) -> bool:
        """True when no frame is queued between the stages (the last one may be rendering)."""
        return not any(s._full for s in self._inputs)

    def get(self, timeout: float | None = None):
        """The newest finished ``(image, stats)``, or None after ``timeout`` seconds."""
        return self.outbox.get(timeout)

    # -- threads --------------------------------------------------------------------------------
    def _track(self, item):
        seq, frame, ts = item
        job = self.runtime.stage_track(frame, ts)
        job["seq"] = seq
        return job

    def _render(self, job):
        img, stats = self.runtime.stage_render(job)
        self.completed += 1
        if self.on_result is not None:
            self.on_result(img, stats)
        return img, stats

    # -- pacing (module docstring) ---------------------------------------------------------------
    def _expected(self, i: int) -> float | None:
        """Expected duration of stage ``i`` (s): running mean + 2 x mean deviation."""
        m = self._mean[i]
        return None if m is None else m + 2.0 * self._dev[i]

    def _takes(self, i: int, now: float) -> tuple[float, float]:
        """When stage ``i`` is expected to take its next input and the one after
        (perf_counter seconds). A busy stage takes a new input only once its current frame has
        been handed on (its output slot holds one frame), so a busy middle stage takes the
        next input when the following stage takes its second frame from now."""
        m, busy = self._mean[i] or 0.0, self._busy_since[i]
        if i + 1 == len(self._mean):                       # the last stage: free, then every m
            t1 = max(now, busy + m) if busy is not None else now
            t2 = t1 + m
        else:
            n1, n2 = self._takes(i + 1, now)
            e = self._expected(i) or 0.0
            if busy is not None:
                handed_on = max(busy + m, n1)
                t1 = max(handed_on, n2 - e)
            else:
                t1 = max(now, n1 - e)
            t2 = t1 + max(m, n2 - n1)
        if self._inputs[i]._full:   # a frame already waits for this stage: it goes first
            t1, t2 = t2, t2 + (t2 - t1)
        return t1, t2

    def _pace(self, i: int) -> bool:
        """Wait until stage ``i`` should start its next frame; False when stopped."""
        while not self._stop.is_set():
            exp = self._expected(i)
            if exp is None:   # nothing measured yet: no waiting
                return True
            now = time.perf_counter()
            wait = self._takes(i + 1, now)[0] - exp - now
            if wait <= 0.0:
                return True
            self._stop.wait(min(wait, 0.01))   # re-estimated as the next stage progresses
        return False

    def _record(self, i: int, seconds: float) -> None:
        g = self.EMA_GAIN
        m = self._mean[i]
        if m is None:
            self._mean[i], self._dev[i] = seconds, 0.5 * seconds
        else:
            self._dev[i] += g * (abs(seconds - m) - self._dev[i])
            self._mean[i] = m + g * (seconds - m)

    def _loop(self, name: str, src: Slot, dst: Slot, fn, index: int = 0) -> None:
        paced = self.pacing and not dst.drop   # the render stage has no next stage to wait for
        try:
            while not self._stop.is_set():
                # pull a frame only when the next stage can take the result at once: frames
                # never wait in a full slot behind a busy stage (latency stays about the sum
                # of the stages), and the frame pulled is the newest one
                if not dst.drop and not dst.wait_empty(self._stop):
                    break
                if paced and not self._pace(index):
                    break
                if index == 0:
                    self._want_input.set()
                item = src.get(0.05)
                if item is None:
                    continue
                if index == 0:
                    self._want_input.clear()
                if isinstance(item, tuple) and len(item) == 2 and item[0] is None:
                    dst.put(item, self._stop)  # an error of an earlier stage: pass it on
                    continue
                t0 = time.perf_counter()
                self._busy_since[index] = t0
                try:
                    out = fn(item)
                except Exception as e:  # noqa: BLE001 - reported to the consumer, loop goes on
                    seq = item[0] if isinstance(item, tuple) else item.get("seq")
                    log.exception("live stage %s failed", name)
                    out = (None, {"error": f"{name}: {e}", "seq": seq})
                self._record(index, time.perf_counter() - t0)
                dst.put(out, self._stop)   # handed on before the stage counts as idle
                self._busy_since[index] = None
        finally:
            if name in ("pose", "maps"):  # this thread's moderngl context
                try:
                    self.runtime.release_thread_resources()
                except Exception:  # noqa: BLE001
                    log.debug("releasing the maps context failed", exc_info=True)
