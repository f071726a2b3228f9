"""``ram-avatar bench live``: end-to-end speed of the live runtime, per stage, per resolution.

Frames of a driving video (default: the subject's own ``sequence/source.mp4``) are decoded
into memory first (a camera delivers decoded frames), then fed one by one to
:meth:`ram_avatar.runtime.avatar_runtime.AvatarRuntime.process` exactly as the live app does.
The first ``warmup`` frames (the first one gets the full body fit; graph and EGL warm-up) are
not timed. Reported per resolution: frames per second of the sequential pipeline, end-to-end
latency (mean / median / p90 / max, ms) and the mean of every stage (track, fit, retarget,
align, maps, render), and the process's CPU time per timed frame (``cpu_ms_per_frame``, all
its threads: MediaPipe's, ONNX Runtime's and OpenVINO's included), with the share of the
machine's cores it used (``cpu_utilisation``). On a CPU-bound pipeline ``fps`` cannot exceed
``1000 * cores / cpu_ms_per_frame``.

The same code runs at very different speeds on the shared development hosts: MediaPipe
Holistic alone took 26-29 ms per taiji frame on a quiet host on 2026-12-03, where earlier
sessions measured 58-86 ms per frame on the same CPU model and video. So every report also
times a fixed single-thread workload before and after the run (:func:`host_speed_ms`, ``machine.reference_ms``): reports
whose reference times differ were taken on hosts of different speed and their rates are not
comparable.

Resolutions other than the subject's own renderer are timed with a **randomly initialised
renderer** of the same architecture (``cpu-256`` channel sizes at that resolution), exported
to ONNX in a temporary folder through the same export path as the subject's
(:mod:`ram_avatar.models.export`), or run in torch: its output is noise, its cost is the cost
of that architecture. Such entries say ``"renderer": "random-init (timing only)"``.

Timings are wall clock (``time.perf_counter``); on CUDA every stage ends on the host with its
results copied back, so stage times include synchronisation. The CUDA / TensorRT path is code
complete but unmeasured on the CPU-only development machines.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from ram_avatar.errors import RamAvatarError
from ram_avatar.io.subject import Subject
from ram_avatar.runtime.avatar_runtime import (
    STAGES,
    AvatarRuntime,
    OnnxRenderer,
    OpenVinoRenderer,
    TorchRenderer,
    load_renderer_engine,
    resolve_backend,
)
from ram_avatar.utils import resolve_device

log = logging.getLogger(__name__)

DEFAULT_RESOLUTIONS = (256, 512, 1024)


def _subject_resolution(subject_dir: Path, backend: str, run_name: str) -> int | None:
    """Side of the subject's own renderer for ``backend`` (None when there is none)."""
    subject = Subject(subject_dir)
    if backend in ("onnx", "openvino"):
        try:
            return int(subject.export_manifest()["resolution"])
        except (RamAvatarError, KeyError, TypeError, ValueError):
            return None
    if backend == "torch":
        run = subject.run(run_name)
        if run.config_path.is_file():
            return int(run.renderer_config().resolution)
        return None
    return None  # tensorrt: read from the engine when it loads


def _subject_source(subject_dir: Path) -> tuple[Path, int]:
    """The subject's own video (``Subject.source_video``) and its captured first frame."""
    subject = Subject(subject_dir)
    try:
        start = int(subject.manifest()["source"]["start"])
    except (RamAvatarError, KeyError, TypeError, ValueError):
        start = 0
    return subject.source_video, start


def random_renderer(resolution: int, seed: int = 0):
    """A randomly initialised :class:`AvatarRenderer` with the ``cpu-256`` preset's channel
    sizes at ``resolution`` (timing only)."""
    from ram_avatar.models.renderer import AvatarRenderer, RendererConfig

    torch.manual_seed(seed)
    cfg = RendererConfig(resolution=int(resolution), texture_channels=16, texture_size=256,
                         texture_levels=4, base_channels=16, max_channels=64, style_dim=64,
                         latent_dim=32, mapping_layers=2)
    return AvatarRenderer(cfg).eval()


def export_random_onnx(resolution: int, path: str | Path) -> Path:
    """Export :func:`random_renderer` at ``resolution`` to ONNX through the one export path
    (:class:`ram_avatar.models.export.RendererExport` + :func:`~ram_avatar.models.export.export_onnx`,
    as ``ram-avatar export`` does: texture frozen, opset 17, dynamic batch, parity checked):
    inputs uv, body_mask, hand, face; outputs rgb, alpha."""
    from ram_avatar.models.export import RendererExport, export_onnx
    from ram_avatar.models.inputs import INPUTS

    S = int(resolution)
    wrapper = RendererExport(random_renderer(S)).eval()
    g = torch.Generator().manual_seed(0)
    maps = {n: torch.rand((1, INPUTS[n].channels, S, S), generator=g) for n in wrapper.names}
    if "body_mask" in maps:
        maps["body_mask"] = (maps["body_mask"] > 0.3).float()
    path = Path(path)
    export_onnx(wrapper, maps, path, output_names=list(RendererExport.OUTPUTS), opset=17)
    return path


def _load_frames(source: Path, start: int, count: int) -> list[np.ndarray]:
    from ram_avatar.capture.video import iter_frames, probe_video

    info = probe_video(source)
    frames = []
    s = start if start < info.frame_count else 0
    while len(frames) < count:
        before = len(frames)
        for f in iter_frames(source, s, min(info.frame_count, s + count - len(frames))):
            frames.append(f)
        if len(frames) == before:
            break
        s = 0  # wrap around short videos
    if not frames:
        raise RamAvatarError(f"{source} has no frames to benchmark with")
    return frames


def host_speed_ms(repeats: int = 9) -> float:
    """Median wall time (ms) of a fixed pure-Python workload (a sum of 300,000 integer
    products on one thread). It does not measure the live runtime; it measures the host, so
    that reports of ``bench live`` taken on different days can be compared (module
    docstring). Pure Python, because the speed of a library kernel depends on what else the
    process has loaded: a torch convolution took 3.5 ms before ``import onnxruntime`` and
    1.9 ms after it, in one process on a quiet host (2026-12-03). On the 2-core development
    machine this workload took 10.1-10.9 ms on a quiet host (2026-12-03; once 12.5 ms).
    """
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sum(i * i for i in range(300_000))
        times.append(1000.0 * (time.perf_counter() - t0))
    return round(float(np.median(times)), 2)


def _cpu_seconds() -> float:
    """CPU time (user + system, s) of this process, all threads."""
    t = os.times()
    return t.user + t.system


def _summary(values: list[float]) -> dict:
    a = np.asarray(values, float)
    return {"mean": round(float(a.mean()), 1), "median": round(float(np.median(a)), 1),
            "p90": round(float(np.percentile(a, 90)), 1), "max": round(float(a.max()), 1)}


def bench_live(subject_dir: str | Path, resolution: int | None = None, device: str = "auto",
               backend: str = "onnx", frames: int = 60, source: str | Path | None = None,
               warmup: int = 3, run_name: str = "default", mda: str = "auto",
               pipelined: bool = True, output=None, pacing: bool = True,
               split_pose: bool = False) -> dict:
    """Benchmark the live runtime end to end (module docstring).

    Args:
        subject_dir: captured + trained (+ exported) subject.
        resolution: one renderer side, or None for 256, 512 and 1024.
        device: ``auto`` | ``cpu`` | ``cuda``.
        backend: ``onnx`` | ``openvino`` | ``torch`` | ``tensorrt`` | ``auto``
            (:func:`~ram_avatar.runtime.engines.resolve_backend`; the report names the one
            used).
        frames: timed frames per resolution.
        source: driving video (default: the subject's ``sequence/source.mp4``, from the
            captured range).
        warmup: untimed frames before timing (the first gets the full fit).
        run_name: training run (torch backend).
        mda: motion alignment ``auto`` (on when the subject has a fitted aligner), ``on`` or
            ``off``.
        pipelined: run the stages overlapped in threads
            (:class:`ram_avatar.runtime.pipeline.LivePipeline`, the live app's path; each frame
            is submitted when the tracker asks for one (:meth:`LivePipeline.wants_input`), as
            the newest frame of a camera would be, so none is dropped and none waits in the
            input slot while the tracker finishes the frame before) instead of one after
            another (:meth:`AvatarRuntime.process`).
            ``fps`` is throughput (timed frames / wall time); ``latency_ms`` is end to end
            (submission to rendered frame), with ``p95`` added.
        pacing: the pipeline starts its track and pose stages just in time
            (:class:`~ram_avatar.runtime.pipeline.LivePipeline`); False for comparison.
        output: what the frames show, as in ``live`` (:class:`~ram_avatar.render.framing.OutputSettings`:
            background, framing, zoom, output size); None = the rendered crop over the learned
            background. Its cost is part of the render stage (composition) and of ``fps``.
        split_pose: pipelined with the fit and the maps as two stages (four in all); False
            (the live app's form): as one stage (three).
    Returns:
        JSON-able dict: machine info and, per resolution, ``fps``, ``latency_ms`` (end to
        end), ``stages_ms`` (means), ``cpu_ms_per_frame`` and ``cpu_utilisation`` (module
        docstring), ``renderer`` (``subject`` or ``random-init (timing only)``), providers,
        frames with a person, the rasterizer of the maps (``raster_backend``) and the
        per-frame fit (``fit_method``: ``gauss-newton`` or ``adam``); ``machine.reference_ms``:
        :func:`host_speed_ms` before and after the run.
    Raises:
        RamAvatarError: bad subject, backend or source.
    """
    subject_dir = Path(subject_dir)
    dev = resolve_device(device)
    backend = resolve_backend(backend, dev)
    if frames < 1:
        raise RamAvatarError("--frames must be at least 1")
    resolutions = list(DEFAULT_RESOLUTIONS) if resolution is None else [int(resolution)]
    if source is None:
        source, start = _subject_source(subject_dir)
    else:
        start = 0
    source = Path(source)
    video = _load_frames(source, start, warmup + frames)
    own = _subject_resolution(subject_dir, backend, run_name)
    report: dict = {
        "benchmark": (("live runtime, pipelined: track | fit + retarget + align "
                       + ("| maps" if split_pose else "+ maps") + " | render (threads)")
                      if pipelined else
                      "live runtime, sequential: track -> fit -> retarget -> align -> maps -> render"),
        "subject": str(subject_dir), "source": str(source),
        "frame_size": [int(video[0].shape[1]), int(video[0].shape[0])],
        "backend": backend, "device": str(dev), "frames": frames, "warmup": warmup,
        "pacing": bool(pacing) if pipelined else None,
        "output": None if output is None else {
            "background": output.spec, "framing": output.framing, "zoom": output.zoom,
            "out_size": list(output.out_size) if output.framing else None},
        "machine": {"platform": platform.platform(), "processor": platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                    "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
                    "reference_ms": {"before": host_speed_ms()}},
        "results": {},
    }
    if dev.type == "cpu":
        report["note"] = "CPU only: the CUDA / TensorRT path is code complete but unmeasured here"
    with tempfile.TemporaryDirectory(prefix="ram_avatar_bench_") as tmp:
        for R in resolutions:
            entry: dict = {}
            try:
                if backend == "tensorrt" or own == R:
                    engine = load_renderer_engine(subject_dir, backend, dev, run_name, None)
                    if engine.resolution != R:
                        raise RamAvatarError(
                            f"the subject's {backend} renderer is {engine.resolution}x"
                            f"{engine.resolution}; other sizes need their own engine (unmeasured)")
                    entry["renderer"] = "subject"
                elif backend in ("onnx", "openvino"):
                    path = export_random_onnx(R, Path(tmp) / f"random_{R}.onnx")
                    engine = (OnnxRenderer if backend == "onnx" else OpenVinoRenderer)(path, dev)
                    entry["renderer"] = "random-init (timing only)"
                elif backend == "torch":
                    engine = TorchRenderer.from_model(random_renderer(R), dev)
                    entry["renderer"] = "random-init (timing only)"
                else:
                    raise RamAvatarError(f"unknown backend {backend!r}: use onnx, openvino, torch "
                                         "or tensorrt")
                entry.update(_run(subject_dir, backend, dev, engine, video, warmup, run_name, mda,
                                  pipelined, output, pacing, split_pose))
            except RamAvatarError as e:
                entry["error"] = str(e)
            report["results"][str(R)] = entry
            log.info("bench live %s: %s", R, {k: entry.get(k) for k in ("fps", "renderer", "error")})
    report["machine"]["reference_ms"]["after"] = host_speed_ms()
    return report


def _run(subject_dir: Path, backend: str, dev: torch.device, engine, video, warmup: int,
         run_name: str, mda: str, pipelined: bool = False, output=None,
         pacing: bool = True, split_pose: bool = False) -> dict:
    rt = AvatarRuntime(subject_dir, backend=backend, device=str(dev), run_name=run_name, engine=engine,
                       mda=mda in ("auto", "on"), output=output)
    if mda == "on" and not rt.mda_available:
        raise RamAvatarError(f"motion alignment asked for but {rt.mda_status}")
    rt.want_landmarks = False  # no overlay in the benchmark
    stats: list[dict] = []
    person = 0
    wall = None
    cpu_start = None   # CPU seconds of the process when the timed frames start
    shape: list = []  # (H, W, C) of the last output frame
    done: list[dict] = []  # stats of the pipelined frames, in finishing order

    def finished(img, st):
        shape[:] = list(np.shape(img))
        done.append(st)

    try:
        if pipelined:
            from ram_avatar.runtime.pipeline import LivePipeline

            with LivePipeline(rt, on_result=finished, pacing=pacing, split_pose=split_pose) as pipe:
                t_start = None
                for i, frame in enumerate(video):
                    # a newest-frame camera: the frame is submitted when the tracker asks for
                    # one (a real camera's older frames would have been dropped), none is lost
                    while not pipe.wants_input():
                        if not pipe.running:
                            raise RamAvatarError("bench live: the pipeline stopped")
                        time.sleep(0.001)
                    if i == warmup:
                        while len(done) < warmup:  # warm-up frames out of the timing
                            time.sleep(0.001)
                        t_start, cpu_start = time.perf_counter(), _cpu_seconds()
                    pipe.submit(frame)
                while len(done) < len(video) and pipe.running:
                    time.sleep(0.001)
                wall = time.perf_counter() - (t_start or 0.0)
            stats = [st for st in done if st.get("seq", 0) > warmup and "error" not in st]
            person = sum(bool(st["person"]) for st in stats)
        else:
            for i, frame in enumerate(video):
                if i == warmup:
                    cpu_start = _cpu_seconds()
                img, st = rt.process(frame)
                shape[:] = list(np.shape(img))
                if i >= warmup:
                    stats.append(st)
                    person += bool(st["person"])
        cpu = None if cpu_start is None else _cpu_seconds() - cpu_start
    finally:
        rt.close()
    raster = rt.cond.backend
    if raster == "auto":  # what "auto" resolved to in this (the benchmark's) thread
        from ram_avatar.render.rasterizer import moderngl_available

        raster = "moderngl" if moderngl_available() else "torch"
    total = [s["total"] for s in stats]
    if wall is None:
        wall = sum(total) / 1000.0
    n_done = max(len(video) - warmup, 1)   # the CPU time covers every timed frame
    latency = [s.get("latency", s["total"]) for s in stats]
    lat = _summary(latency)
    lat["p95"] = round(float(np.percentile(latency, 95)), 1)
    return {
        "resolution": rt.resolution, "providers": list(getattr(engine, "providers", [])),
        "pipelined": bool(pipelined),
        "fps": round(len(stats) / wall, 2),
        "latency_ms": lat,
        "stages_ms": {k: round(float(np.mean([s[k] for s in stats])), 1) for k in STAGES},
        "cpu_ms_per_frame": None if cpu is None else round(1000.0 * cpu / n_done, 1),
        "cpu_utilisation": None if cpu is None or wall <= 0 else
        round(cpu / (wall * (os.cpu_count() or 1)), 3),
        "frames_with_person": person, "timed_frames": len(stats), "output_shape": shape,
        "mda": rt.mda_enabled, "raster_backend": raster, "fit_method": rt.fitter.method,
    }


# --------------------------------------------------------------------------------------------
# soak: resident memory and fps over a long live session (issue 12, item 10)


def resident_memory_bytes() -> tuple[int, str]:
    """Current resident set size of this process in bytes, and how it was read.

    Linux: ``/proc/self/statm`` (resident pages x page size). Elsewhere ``psutil`` when it is
    installed, else ``resource.getrusage`` (the *peak* RSS, said so in the second value).

    Raises:
        RamAvatarError: none of these is available.
    """
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"), "/proc/self/statm"
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # type: ignore[import-not-found]

        return int(psutil.Process().memory_info().rss), "psutil"
    except ImportError:
        pass
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024), "getrusage (peak)"
    except (ImportError, OSError) as e:
        raise RamAvatarError(f"cannot read this process's resident memory: {e}") from e


def soak_summary(rows: list[dict]) -> dict:
    """Trends of per-interval soak rows (:func:`bench_soak`).

    Memory growth is measured from the end of the first interval (warm-up: model load, graph
    optimisation, caches) to the end of the last one, in MiB and percent. The fps trend is the
    least-squares slope of fps against time over the intervals after the first, in fps per
    minute and in percent of their mean fps per minute, plus the mean fps of the last third of
    those intervals relative to the first third (1.0 = no change).

    Args:
        rows: ``{"t_min", "fps", "rss_mib", ...}`` dicts, one per interval, in time order.
    Returns:
        dict with ``rss_after_first_mib``, ``rss_end_mib``, ``rss_peak_mib``,
        ``rss_growth_after_first_mib``, ``rss_growth_after_first_pct``, ``fps_mean``,
        ``fps_slope_per_min``, ``fps_slope_pct_per_min``, ``fps_last_over_first_third`` (None
        where fewer than two intervals follow the first).
    Raises:
        RamAvatarError: no rows.
    """
    if not rows:
        raise RamAvatarError("soak: no intervals were measured (run at least one interval)")
    first, last = rows[0], rows[-1]
    out = {"intervals": len(rows), "rss_after_first_mib": first["rss_mib"], "rss_end_mib": last["rss_mib"],
           "rss_peak_mib": max(r["rss_mib"] for r in rows),
           "rss_growth_after_first_mib": round(last["rss_mib"] - first["rss_mib"], 1),
           "rss_growth_after_first_pct": round(100.0 * (last["rss_mib"] - first["rss_mib"])
                                               / max(first["rss_mib"], 1e-9), 2),
           "fps_mean": round(float(np.mean([r["fps"] for r in rows])), 2),
           "fps_slope_per_min": None, "fps_slope_pct_per_min": None,
           "fps_last_over_first_third": None}
    later = rows[1:]
    if len(later) >= 2:
        t = np.array([r["t_min"] for r in later], float)
        f = np.array([r["fps"] for r in later], float)
        slope = float(np.polyfit(t, f, 1)[0]) if np.ptp(t) > 0 else 0.0
        out["fps_slope_per_min"] = round(slope, 4)
        out["fps_slope_pct_per_min"] = round(100.0 * slope / max(float(f.mean()), 1e-9), 3)
        k = max(1, len(later) // 3)
        out["fps_last_over_first_third"] = round(float(f[-k:].mean() / max(f[:k].mean(), 1e-9)), 3)
    return out


class _SoakCounters:
    """Per-interval counters of :func:`bench_soak` (written by the render thread, read and reset
    at every row), so the soak's own bookkeeping does not grow with its length."""

    def __init__(self, dev: torch.device, loadavg, on_row=None):
        self.dev, self.loadavg, self.on_row = dev, loadavg, on_row
        self.lock = threading.Lock()
        self.cur = {"frames": 0, "person": 0, "errors": 0, "lat": []}

    def on_result(self, img, st) -> None:
        """Count one finished frame (its stage stats ``st``)."""
        with self.lock:
            if "error" in st:
                self.cur["errors"] += 1
                return
            self.cur["frames"] += 1
            self.cur["person"] += bool(st.get("person"))
            self.cur["lat"].append(float(st.get("latency", st.get("total", 0.0))))

    def take_row(self, t0: float, t_prev: float, now: float) -> dict:
        """The row of the interval ``t_prev .. now`` (seconds, ``perf_counter``); resets the
        counters. Raises RamAvatarError when every frame of the interval failed."""
        with self.lock:
            c = dict(self.cur)
            self.cur.update(frames=0, person=0, errors=0, lat=[])
        mib = 1.0 / (1 << 20)
        row = {"t_min": round((now - t0) / 60.0, 3), "frames": c["frames"],
               "fps": round(c["frames"] / max(now - t_prev, 1e-9), 2),
               "latency_ms_median": round(float(np.median(c["lat"])), 1) if c["lat"] else None,
               "frames_with_person": c["person"], "errors": c["errors"],
               "rss_mib": round(resident_memory_bytes()[0] * mib, 1),
               "load_avg_1m": self.loadavg()}
        if self.dev.type == "cuda":
            row["cuda_allocated_mib"] = round(torch.cuda.memory_allocated(self.dev) * mib, 1)
        if c["frames"] == 0 and c["errors"]:
            raise RamAvatarError(f"soak: every frame of the interval ending at {row['t_min']} min "
                                 f"failed ({c['errors']} errors)")
        if self.on_row is not None:
            self.on_row(row)
        return row


def _soak_loop(rt, video, pipelined: bool, end_s: float, interval_s: float,
               counters: _SoakCounters) -> list[dict]:
    """Feed ``video`` (looped) to the runtime for ``end_s`` seconds, one row per ``interval_s``:
    through :class:`~ram_avatar.runtime.pipeline.LivePipeline` (newest frame when its queues are
    full, as a camera) or :meth:`AvatarRuntime.process` one frame after another."""
    from ram_avatar.runtime.pipeline import LivePipeline

    rows: list[dict] = []
    t0 = t_prev = time.perf_counter()
    next_row = t0 + interval_s
    i = 0

    def row_due() -> bool:
        nonlocal t_prev, next_row
        now = time.perf_counter()
        if now < next_row:
            return False
        rows.append(counters.take_row(t0, t_prev, now))
        t_prev, next_row = now, next_row + interval_s
        return now - t0 >= end_s - 1e-6

    if pipelined:
        with LivePipeline(rt, on_result=counters.on_result) as pipe:
            while not row_due():
                if not pipe.running:
                    raise RamAvatarError("soak: the live pipeline stopped")
                if not pipe.wants_input():  # a camera's newest frame, when the tracker asks
                    time.sleep(0.001)
                    continue
                pipe.submit(video[i % len(video)])
                i += 1
    else:
        while not row_due():
            _, st = rt.process(video[i % len(video)])
            counters.on_result(None, st)
            i += 1
    return rows


def bench_soak(subject_dir: str | Path, minutes: float, resolution: int | None = None,
               device: str = "auto", backend: str = "onnx", source: str | Path | None = None,
               run_name: str = "default", mda: str = "auto", pipelined: bool = True,
               interval_s: float = 60.0, max_video_frames: int = 300,
               on_row=None) -> dict:
    """Run the live runtime for ``minutes`` on a looping video and report resident memory and
    fps over time (``ram-avatar bench live SUBJECT --soak MINUTES``).

    The driving video (default: the subject's ``sequence/source.mp4`` from its captured range,
    at most ``max_video_frames`` frames decoded into memory once) is fed again and again, as a
    camera would deliver it, through :class:`~ram_avatar.runtime.pipeline.LivePipeline` (or
    :meth:`AvatarRuntime.process` with ``pipelined=False``), with the subject's own renderer.
    Every ``interval_s`` seconds a row is recorded: elapsed minutes, frames finished and fps in
    that interval, median end-to-end latency, frames with a person, resident memory (RSS, see
    :func:`resident_memory_bytes`) and, on CUDA, allocated GPU memory. Only counters are kept
    per interval, so the benchmark's own bookkeeping does not grow with the soak length.

    Args:
        subject_dir: captured + trained (+ exported, for ``onnx``) subject.
        minutes: soak length (> 0).
        resolution: expected renderer side (None: the subject's own).
        device, backend, source, run_name, mda, pipelined: as :func:`bench_live`.
        interval_s: seconds per row (60: one row per minute).
        max_video_frames: frames of the source decoded into memory and looped.
        on_row: optional callable given each row as it is measured (progress output).
    Returns:
        JSON-able dict: ``rows`` (list of per-interval dicts), ``summary``
        (:func:`soak_summary`: growth after the first interval, fps trend), ``memory_source``,
        machine info (with the 1-minute load average at start and end: other processes on the
        machine change fps), renderer, providers.
    Raises:
        RamAvatarError: non-positive ``minutes`` / ``interval_s``, bad subject, source or
            backend, or a stage error on every frame of an interval.
    """
    subject_dir = Path(subject_dir)
    if not minutes > 0:
        raise RamAvatarError(f"--soak must be a positive number of minutes, got {minutes}")
    if not interval_s > 0:
        raise RamAvatarError(f"the soak interval must be positive, got {interval_s} s")
    dev = resolve_device(device)
    backend = resolve_backend(backend, dev)
    start = 0
    if source is None:
        source, start = _subject_source(subject_dir)
    source = Path(source)
    video = _load_frames(source, start, max_video_frames)
    rss0, mem_src = resident_memory_bytes()
    engine = load_renderer_engine(subject_dir, backend, dev, run_name, resolution)
    rt = AvatarRuntime(subject_dir, backend=backend, device=str(dev), run_name=run_name,
                       engine=engine, mda=mda in ("auto", "on"))
    rt.want_landmarks = False
    mib = 1.0 / (1 << 20)
    loadavg = (lambda: round(os.getloadavg()[0], 2)) if hasattr(os, "getloadavg") else (lambda: None)
    report: dict = {
        "benchmark": "live soak (" + ("pipelined" if pipelined else "sequential") + ")",
        "subject": str(subject_dir), "source": str(source), "looped_frames": len(video),
        "backend": backend, "device": str(dev), "resolution": engine.resolution,
        "providers": list(getattr(engine, "providers", [])), "minutes": float(minutes),
        "interval_s": float(interval_s), "memory_source": mem_src,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                    "load_avg_1m_start": loadavg()},
        "rows": [],
    }
    counters = _SoakCounters(dev, loadavg, on_row)
    try:
        report["rows"] = _soak_loop(rt, video, pipelined, float(minutes) * 60.0, interval_s,
                                    counters)
    finally:
        rt.close()
    report["rss_before_load_mib"] = round(rss0 * mib, 1)
    report["machine"]["load_avg_1m_end"] = loadavg()
    report["summary"] = soak_summary(report["rows"])
    return report
