"""The pipelined live runtime (issue 13, item 5): ordering, newest-frame policy, overlap.

A stand-in runtime with the three stage methods of AvatarRuntime (sleeping stages of known
length) drives :class:`ram_avatar.runtime.pipeline.LivePipeline`; the real runtime goes through
the same class in ``bench live`` and the app (tests/test_runtime.py, tests/test_gui.py).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from ram_avatar.runtime.pipeline import LivePipeline, Slot


class _FakeRuntime:
    def __init__(self, ms=(20, 40, 30)):
        self.ms = ms
        self.pose_threads: set[int] = set()
        self.released: list[int] = []
        self.order: list[int] = []
        self.fail_on: int | None = None

    def stage_track(self, frame, ts):
        time.sleep(self.ms[0] / 1000)
        return {"frame": int(frame[0, 0, 0]), "t_capture": ts, "stats": {"track": self.ms[0]}}

    def stage_pose(self, job):
        self.pose_threads.add(threading.get_ident())
        time.sleep(self.ms[1] / 1000)
        if job["frame"] == self.fail_on:
            raise RuntimeError("bad frame")
        return job

    def stage_render(self, job):
        time.sleep(self.ms[2] / 1000)
        self.order.append(job["frame"])
        return np.full((4, 4, 3), job["frame"], np.uint8), {
            "seq": job["seq"], "latency": 1000 * (time.perf_counter() - job["t_capture"])}

    def release_thread_resources(self):
        self.released.append(threading.get_ident())


class _SplitRuntime(_FakeRuntime):
    """The real runtime's four-stage interface: ``stage_pose`` = ``stage_maps(stage_fit(.))``;
    ms = (track, fit, maps, render)."""

    def __init__(self, ms=(20, 30, 30, 25)):
        super().__init__((ms[0], ms[1] + ms[2], ms[3]))
        self.split_ms = ms
        self.fit_threads: set[int] = set()
        self.stage_log: list[tuple[str, int]] = []

    def stage_fit(self, job):
        self.fit_threads.add(threading.get_ident())
        time.sleep(self.split_ms[1] / 1000)
        self.stage_log.append(("fit", job["frame"]))
        return job

    def stage_maps(self, job):
        self.pose_threads.add(threading.get_ident())
        time.sleep(self.split_ms[2] / 1000)
        self.stage_log.append(("maps", job["frame"]))
        return job


def _frame(i):
    return np.full((2, 2, 3), i, np.uint8)


def test_slot_policies():
    s = Slot(drop=True)
    s.put(1)
    s.put(2)
    assert s.dropped == 1 and s.get(0) == 2 and s.get(0.01) is None
    b = Slot(drop=False)
    b.put(1)
    stop = threading.Event()
    stop.set()
    assert b.put(2, stop) is False          # would block: gives up when stopped
    assert b.get(0) == 1


def test_pipeline_order_and_throughput_near_slowest_stage():
    rt = _FakeRuntime((20, 40, 30))
    got = []
    n = 20
    with LivePipeline(rt, on_result=lambda img, st: got.append(st)) as pipe:
        t0 = time.perf_counter()
        for i in range(n):
            while pipe.inbox._full:
                time.sleep(0.001)
            pipe.submit(_frame(i))
        while len(got) < n:
            time.sleep(0.002)
        wall = time.perf_counter() - t0
    assert [g["seq"] for g in got] == list(range(1, n + 1))         # in order, none dropped
    assert pipe.dropped == 0
    # sequential: n x 90 ms = 1.8 s; pipelined: ~ n x 40 ms + fill (~0.9 s)
    assert wall < 0.75 * n * 0.090, wall
    assert len(rt.pose_threads) == 1                                 # maps on one thread
    assert rt.released and rt.released[0] in rt.pose_threads         # its context released


def test_pipeline_newest_frame_policy_and_errors():
    rt = _FakeRuntime((30, 10, 10))
    rt.fail_on = 13
    got = []
    with LivePipeline(rt, on_result=lambda img, st: got.append(st)) as pipe:
        for i in range(10):                  # a burst much faster than the tracker
            pipe.submit(_frame(i))
            time.sleep(0.002)
        time.sleep(0.3)
        assert pipe.dropped >= 5
        seqs = [g["seq"] for g in got]
        assert seqs == sorted(seqs) and seqs[-1] == 10                # newest frame shown last
        n_before = len(got)
        pipe.submit(_frame(13))              # a failing stage: reported, the pipeline goes on
        err = pipe.get(1.0)
        while err is not None and err[0] is not None:
            err = pipe.get(1.0)
        assert err is not None and "bad frame" in err[1]["error"]
        pipe.submit(_frame(14))
        time.sleep(0.2)
        assert len(got) == n_before + 1 and rt.order[-1] == 14


def _run_on_demand(pacing: bool, ms, n: int = 24, rt=None, **kwargs):
    """Feed frames when the tracker asks (as ``bench live``): (latencies ms, seconds per frame)
    of the frames after the first 8; ``rt`` defaults to a :class:`_FakeRuntime` of ``ms``,
    ``kwargs`` go to the pipeline."""
    rt = _FakeRuntime(ms) if rt is None else rt
    got = []
    with LivePipeline(rt, on_result=lambda img, st: got.append((time.perf_counter(), st)),
                      pacing=pacing, **kwargs) as pipe:
        rt.stage_names = [name for name, _ in pipe.stages]
        for i in range(n):
            while not pipe.wants_input():
                time.sleep(0.0005)
            pipe.submit(_frame(i))
        while len(got) < n:
            time.sleep(0.002)
    assert [st["seq"] for _, st in got] == list(range(1, n + 1))      # in order, none dropped
    tail = got[8:]
    lat = sorted(st["latency"] for _, st in tail)
    return lat[len(lat) // 2], (tail[-1][0] - tail[0][0]) / (len(tail) - 1)


def test_pacing_lowers_latency_at_the_same_throughput():
    """A slow renderer after two fast stages (10 | 10 | 60 ms): without pacing each frame is
    tracked and posed at once, then waits for the renderer (latency ~3 x 60 ms); with pacing
    the tracker starts just in time (latency ~ the sum of the stages, 80 ms + the margin).
    Both run at the renderer's rate."""
    ms = (10, 10, 60)
    lat_off, dt_off = _run_on_demand(False, ms)
    lat_on, dt_on = _run_on_demand(True, ms)
    assert lat_off > 150.0, lat_off
    assert lat_on < 0.7 * lat_off, (lat_on, lat_off)
    assert 0.055 < dt_off < 0.08 and 0.055 < dt_on < 0.08, (dt_off, dt_on)


def test_split_pipeline_runs_fit_and_maps_as_two_stages():
    """With ``split_pose`` a runtime with ``stage_fit`` and ``stage_maps`` runs as four
    stages (``bench live --split-pose``): in order, every frame fitted before its maps, the
    maps on one thread (its context released there), and the throughput near the slowest
    stage (30 ms) rather than fit + maps (60 ms); ``split_pose=False`` (the default) runs the
    three-stage form with ``stage_pose``."""
    n = 24
    rt = _SplitRuntime((20, 30, 30, 25))
    _, dt_split = _run_on_demand(True, None, n, rt, split_pose=True)
    assert rt.stage_names == ["track", "fit", "maps", "render"]
    for f in range(n):                                   # each frame: fit, then its maps
        assert rt.stage_log.index(("fit", f)) < rt.stage_log.index(("maps", f))
    assert len(rt.pose_threads) == 1 and rt.fit_threads.isdisjoint(rt.pose_threads)
    assert rt.released == list(rt.pose_threads)          # the maps thread's context released
    rt3 = _SplitRuntime((20, 30, 30, 25))
    _, dt_joined = _run_on_demand(True, None, n, rt3)
    assert rt3.stage_names == ["track", "pose", "render"] and not rt3.stage_log
    assert 0.028 < dt_split < 0.048, dt_split            # the slowest stage: 30 ms
    assert dt_joined > 0.055 and dt_split < 0.75 * dt_joined, dt_joined  # fit + maps: 60 ms
