"""``ram-avatar bench render``: size, FLOPs and latency of the renderer's components.

For each resolution (default 256, 512, 1024) the renderer of a preset (default ``paper-1024``:
the full model with the paper's channel sizes; only ``model.resolution`` changes) is built with
random weights and random conditioning maps, and each component is measured:

- ``body_sampling``: the body feature field (neural texture or triplane) sampled at the current,
  expanded and previous-frame maps (three samplings when both attention parts are on);
- ``attention``: the dual attention (Sec. 3.2) on those three feature maps;
- ``branches``: the face and hand shallow UNets;
- ``generator``: the StyleUNet on the concatenated conditioning;
- ``total``: the whole renderer forward (maps in, composited RGB out);
- ``train_step`` (with ``train_step=True``): one forward + backward of the whole renderer at
  batch ``batch`` with a per-frame style code and an L1 loss, as a training step computes it
  (without the discriminator and the perceptual losses): ``ms`` and the peak memory, on CUDA
  ``peak_memory_mb`` from ``torch.cuda.max_memory_allocated`` (reset before the step), on CPU
  ``peak_rss_mb`` (the process's peak resident set size after the step, ``getrusage``; it is
  monotone over the process, so resolutions are measured in increasing order and the value
  at a resolution bounds that step's peak) and ``rss_before_mb``.

Per component: ``params`` (parameters it owns), ``gflops`` (counted by
``torch.utils.flop_counter.FlopCounterMode``: convolutions and matmuls (the attention's too);
``grid_sample`` and elementwise ops count as 0), ``torch_ms`` (median eager latency) and, with
``onnx=True``, ``onnxruntime_ms`` (the component exported alone to ONNX, opset 17, run by ONNX
Runtime on the CPU provider, or CUDA when the device is CUDA and the provider exists) and, on
the CPU with OpenVINO installed, ``openvino_ms`` (the same file in OpenVINO,
:class:`~ram_avatar.runtime.engines.OpenVinoRunner`, with ``openvino_precision``: ``bf16``
where the CPU has it; ``openvino_ms`` is None with the reason there when it is missing). GPU
timings synchronise first (CUDA events). Timings are wall-clock medians over ``repeats`` runs
after ``warmup`` runs, batch ``batch``; they depend on the machine's load. ONNX Runtime sessions
use the renderer's session options (:func:`ram_avatar.runtime.engines.ort_session_options`:
the measured graph level and thread count, ``RAM_AVATAR_ORT_THREADS`` overrides).

Per-op profile (``bench render --ort-profile``, :func:`ort_profile_renderer`): the preset's
whole renderer, exported as ``ram-avatar export`` does (:class:`~ram_avatar.models.export.RendererExport`,
texture pyramid frozen, :func:`~ram_avatar.models.export.export_onnx`), run by ONNX Runtime
with ``SessionOptions.enable_profiling``; :func:`parse_ort_profile` turns the trace into a
table of op types (ms per frame, % of the kernel time, nodes per frame).
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ram_avatar.errors import RamAvatarError
from ram_avatar.models.inputs import ALL_INPUTS, spec

log = logging.getLogger(__name__)

__all__ = ["bench_render", "parse_ort_profile", "format_ort_profile", "profile_onnx",
           "export_renderer_onnx", "ort_profile_renderer", "compare_ort_options"]


def _maps(cfg, batch: int, device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random renderer inputs ``(batch, C, S, S)`` for every name of the input contract
    (:mod:`ram_avatar.models.inputs`) at ``cfg.resolution``: masks of ~60 % coverage, uv in
    [0, 1) and canonical positions in [-1, 1) inside them, sparse hand/face strokes."""
    g = torch.Generator().manual_seed(seed)
    S = cfg.resolution

    def rnd(c):
        return torch.rand(batch, c, S, S, generator=g)

    out = {}
    for prefix, suffix in (("", ""), ("", "_expanded"), ("prev_", "")):
        mask = (rnd(1) > 0.4).float()
        out[f"{prefix}uv{suffix}"] = rnd(spec(f"{prefix}uv{suffix}").channels) * mask
        out[f"{prefix}body_mask{suffix}"] = mask
        out[f"{prefix}canon{suffix}"] = (rnd(spec(f"{prefix}canon{suffix}").channels) * 2 - 1) * mask
    out["hand"] = (rnd(spec("hand").channels) > 0.97).float()
    out["face"] = (rnd(spec("face").channels) > 0.97).float()
    assert set(out) == set(ALL_INPUTS)  # every input of the contract (models.inputs)
    return {k: v.to(device) for k, v in out.items()}


class _Sampling(nn.Module):
    """The renderer's body sampling on stacked maps (:meth:`AvatarRenderer.sample_stacked`):
    ``(coords, masks)`` -> ``(features,)`` or ``(features, rgb)``."""

    def __init__(self, model, batch: int):
        super().__init__()
        self.model = model
        self.batch = batch

    def forward(self, coords, masks):
        return tuple(t for t in self.model.sample_stacked(coords, masks, self.batch)
                     if t is not None)


class _Attention(nn.Module):
    """The dual attention on the stacked features
    (:meth:`DualAttention.forward_stacked`)."""

    def __init__(self, attention, batch: int, rows: dict[str, int]):
        super().__init__()
        self.attention = attention
        self.batch = batch
        self.rows = dict(rows)

    def forward(self, stacked):
        return self.attention.forward_stacked(stacked, self.batch, self.rows)


class _Branches(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.hand = getattr(model, "hand_branch", None)
        self.face = getattr(model, "face_branch", None)

    def forward(self, hand, face):
        out = []
        if self.hand is not None:
            out.append(self.hand(hand))
        if self.face is not None:
            out.append(self.face(face))
        return tuple(out)


class _Generator(nn.Module):
    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, x):
        return self.generator(x, None)


class _Total(nn.Module):
    def __init__(self, model, names):
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, *maps):
        return self.model.forward_batch(dict(zip(self.names, maps)), None)["rgb"]


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    return int(counter.get_total_flops())


def _time(fn, device, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``fn()``; CUDA timed with events after a synchronise."""
    cuda = device.type == "cuda"
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize(device)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(device)
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def _ort_time(module: nn.Module, inputs: list[torch.Tensor], path: Path, device,
              warmup: int, repeats: int) -> tuple[float | None, str | None]:
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime not installed"
    names = [f"in{i}" for i in range(len(inputs))]
    cpu_inputs = [t.detach().cpu() for t in inputs]
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            module_cpu = module.cpu().eval()
            outs = module_cpu(*cpu_inputs)
            n_out = len(outs) if isinstance(outs, tuple) else 1
            out_names = [f"out{i}" for i in range(n_out)]
            from ram_avatar.models.export import export_onnx  # the one ONNX export path

            export_onnx(module_cpu, dict(zip(names, cpu_inputs)), path, out_names,
                        dynamic_batch=True, opset=17, exporter="legacy")
    except Exception as exc:  # noqa: BLE001 - report, do not abort the benchmark
        return None, f"export failed: {type(exc).__name__}: {exc}"
    finally:
        module.to(device)
    from ram_avatar.runtime.engines import ort_session_options

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), sess_options=ort_session_options(),
                                providers=providers)
    feed = {n: t.numpy() for n, t in zip(names, cpu_inputs)}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times)), providers[0]


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB (Linux ``/proc``, getrusage)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    current = peak
    try:
        with open("/proc/self/statm") as fh:
            current = int(fh.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") / 2 ** 20)
    except (OSError, ValueError, IndexError):
        pass
    return current, peak


def train_step_cost(model: nn.Module, maps: dict[str, torch.Tensor], device) -> dict:
    """Time and peak memory of one renderer forward + backward (module docstring,
    ``train_step``). ``model`` is put in train mode and its gradients are freed afterwards.

    Args:
        model: an :class:`~ram_avatar.models.renderer.AvatarRenderer` with ``num_frames >= 1``.
        maps: its input maps ``(B,C,S,S)`` on ``device``.
    Returns:
        dict ``ms``, and ``peak_memory_mb`` (CUDA) or ``peak_rss_mb`` / ``rss_before_mb`` (CPU).
    """
    import torch.nn.functional as F

    model.train()
    batch = next(iter(maps.values())).shape[0]
    frame_index = torch.zeros(batch, dtype=torch.long, device=device)
    target = torch.full_like(maps["body_mask"].expand(-1, 3, -1, -1), 0.5)
    cuda = device.type == "cuda"
    out: dict = {}
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        out["rss_before_mb"] = round(_rss_mb()[0], 1)
    t0 = time.perf_counter()
    rgb = model.forward_batch(maps, frame_index)["rgb"]
    F.l1_loss(rgb, target).backward()
    if cuda:
        torch.cuda.synchronize(device)
    out["ms"] = round((time.perf_counter() - t0) * 1e3, 1)
    if cuda:
        out["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    else:
        out["peak_rss_mb"] = round(_rss_mb()[1], 1)
    del rgb
    model.zero_grad(set_to_none=True)
    model.eval()
    return out


def _ov_time(path: Path, inputs: list[torch.Tensor], warmup: int,
             repeats: int) -> tuple[float | None, str | None]:
    """Median ms of the ONNX file ``path`` (inputs ``in0``, ``in1``, ... as :func:`_ort_time`
    exported it) in OpenVINO on the CPU (:class:`~ram_avatar.runtime.engines.OpenVinoRunner`,
    its default precision), and that precision; (None, reason) without OpenVINO or a file."""
    from ram_avatar.runtime.engines import OpenVinoRunner

    if not path.is_file():
        return None, "no ONNX export"
    try:
        runner = OpenVinoRunner(path)
    except RamAvatarError as e:
        return None, str(e)
    feed = {f"in{i}": t.detach().cpu().numpy() for i, t in enumerate(inputs)}
    for _ in range(warmup):
        runner(feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner(feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times)), runner.precision


def bench_render(resolutions=(256, 512, 1024), device: str | torch.device = "cpu",
                 preset: str = "paper-1024", batch: int = 1, repeats: int = 3, warmup: int = 1,
                 onnx: bool = True, overrides: list[str] | None = None,
                 train_step: bool = False) -> dict:
    """Benchmark the renderer's components (module docstring) at each resolution.

    Args:
        resolutions: output sides to measure (powers of two).
        device: ``cpu``, ``cuda`` or ``auto``.
        preset: training preset whose model config is used (resolution replaced).
        batch: batch size.
        repeats / warmup: timed / untimed runs per measurement.
        onnx: also export each component and time it in ONNX Runtime (and in OpenVINO on the
            CPU).
        overrides: ``key=value`` config overrides (e.g. ``model.attention_channels=48``).
        train_step: also measure one forward + backward (``train_step``, module docstring).

    Returns:
        JSON-serialisable dict: ``device``, ``preset``, ``batch``, versions, ``threads`` and
        ``results`` mapping each resolution (as a string) to ``components`` (name ->
        ``params``, ``gflops``, ``torch_ms``, ``onnxruntime_ms``, ``onnxruntime_provider``,
        ``openvino_ms``, ``openvino_precision``) and
        the model's ``config``.
    """
    from ram_avatar.models.renderer import AvatarRenderer
    from ram_avatar.training.config import apply_overrides, get_preset
    from ram_avatar.utils import resolve_device

    dev = resolve_device(device)
    report = {"device": str(dev), "preset": preset, "batch": batch, "repeats": repeats,
              "torch_version": torch.__version__, "threads": torch.get_num_threads(),
              "results": {}}
    try:
        import onnxruntime as ort

        report["onnxruntime_version"] = ort.__version__
    except ImportError:
        report["onnxruntime_version"] = None
    try:
        import openvino

        report["openvino_version"] = openvino.__version__
    except ImportError:
        report["openvino_version"] = None
    if dev.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(dev)
    for S in sorted(resolutions) if train_step else resolutions:
        cfg = get_preset(preset)
        if overrides:
            cfg = apply_overrides(cfg, overrides)
        mcfg = replace(cfg.model, resolution=int(S), num_frames=1)
        torch.manual_seed(0)
        model = AvatarRenderer(mcfg).to(dev).eval()
        maps = _maps(mcfg, batch, dev)
        tri = mcfg.variant == "full" and mcfg.body_features == "triplane"
        key = "canon" if tri else "uv"
        attention = getattr(model, "attention", None)
        sample_sets = [(key, "body_mask")]
        rows: dict[str, int] = {}
        for part, c_name, m_name in (("spatial", f"{key}_expanded", "body_mask_expanded"),
                                     ("temporal", f"prev_{key}", "prev_body_mask")):
            if attention is not None and getattr(attention, part) is not None:
                rows[part] = len(sample_sets)
                sample_sets.append((c_name, m_name))
        sampling_in = [torch.cat([maps[c] for c, _ in sample_sets]),
                       torch.cat([maps[m] for _, m in sample_sets])]
        sampling = _Sampling(model, batch)
        with torch.no_grad():
            sampled = sampling(*sampling_in)
        stacked = sampled[0]  # learned features of every map (the attention sees only these)
        rgb = sampled[1] if len(sampled) > 1 else None  # the RGB colour of the current map
        components: dict[str, tuple[nn.Module, list[torch.Tensor], nn.Module]] = {
            "body_sampling": (sampling, sampling_in, model.body_features)}
        if attention is not None:
            components["attention"] = (_Attention(attention, batch, rows), [stacked], attention)
        branches = _Branches(model)
        if mcfg.variant == "full" and (branches.hand is not None or branches.face is not None):
            components["branches"] = (branches, [maps["hand"], maps["face"]], branches)
        names = model.input_names()
        with torch.no_grad():
            if mcfg.variant == "full":
                body = attention.forward_stacked(stacked, batch, rows) \
                    if attention is not None else stacked
                x = torch.cat([body, *([] if rgb is None else [rgb]),
                               *branches(maps["hand"], maps["face"]), maps["body_mask"]], 1)
            else:
                x = torch.cat([stacked, *([] if rgb is None else [rgb]), maps["hand"],
                               maps["face"], maps["body_mask"]], 1)
        components["generator"] = (_Generator(model.generator), [x], model.generator)
        components["total"] = (_Total(model, names), [maps[n] for n in names], model)
        res = {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, (module, inputs, owner) in components.items():
                entry = {"params": _params(owner),
                         "gflops": round(_flops(lambda: module(*inputs)) / 1e9, 3),
                         "torch_ms": round(_time(lambda: module(*inputs), dev, warmup, repeats), 2)}
                if onnx:
                    ms, provider = _ort_time(module, inputs, Path(tmp) / f"{name}.onnx", dev,
                                             warmup, repeats)
                    entry["onnxruntime_ms"] = round(ms, 2) if ms is not None else None
                    entry["onnxruntime_provider"] = provider
                    if dev.type == "cpu":
                        ms, prec = _ov_time(Path(tmp) / f"{name}.onnx", inputs, warmup, repeats)
                        entry["openvino_ms"] = round(ms, 2) if ms is not None else None
                        entry["openvino_precision"] = prec
                res[name] = entry
                log.info("bench %d^2 %s: %s", S, name, entry)
        entry = {"components": res, "config": mcfg.to_dict()}
        if train_step:
            entry["train_step"] = train_step_cost(model, {n: maps[n] for n in names}, dev)
            log.info("bench %d^2 train step: %s", S, entry["train_step"])
        report["results"][str(S)] = entry
        del model
    return report


# --------------------------------------------------------------------------------------------
# ONNX Runtime per-op profile and session-option comparison (issue 13, item 6)


def parse_ort_profile(trace, skip_runs: int = 1, top: int | None = 15) -> dict:
    """Per-op-type table of an ONNX Runtime profile (``SessionOptions.enable_profiling``).

    ORT writes a Chrome trace (a JSON list of events). Kernel events have ``cat == "Node"``,
    a name ending in ``_kernel_time``, ``dur`` in microseconds and ``args.op_name`` (the op
    type, after graph optimisation: fused ops appear as e.g. ``FusedConv``); each
    ``session.run`` is one ``cat == "Session"`` event named ``model_run``. Kernel events that
    start before the end of the first ``skip_runs`` runs (warm-up: allocations, first-run
    kernel selection) are dropped; the rest are summed per op type and divided by the number of
    kept runs.

    Args:
        trace: the trace file's path, or its already-loaded list of events.
        skip_runs: leading ``model_run`` events to ignore (0 keeps all).
        top: keep the ``top`` op types by time (None: all); percentages are of the kernel time
            of all op types, so the kept rows sum to <= 100 (== 100 when nothing is cut).

    Returns:
        dict ``runs`` (kept runs), ``kernel_ms_per_frame`` (sum of all kernels per run, ms),
        ``run_ms_per_frame`` (median ``model_run`` duration, ms, includes the session's own
        overhead), ``op_types`` (number of distinct op types), and ``rows``: list of
        ``{"op_type", "ms_per_frame", "percent", "count"}`` (count = nodes of that type per run),
        sorted by time, largest first.

    Raises:
        RamAvatarError: no ``model_run`` left after ``skip_runs``, or no kernel events (the
            trace is not an ONNX Runtime profile, or profiling was off).
    """
    import json

    events = trace
    if isinstance(trace, (str, os.PathLike)):
        with open(trace) as fh:
            events = json.load(fh)
    if isinstance(events, dict):  # Chrome's object form {"traceEvents": [...]}
        events = events.get("traceEvents", [])
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    if len(runs) <= skip_runs:
        raise RamAvatarError(f"ONNX Runtime profile has {len(runs)} model_run events; need more "
                             f"than skip_runs={skip_runs} (run the session more often)")
    start = runs[skip_runs - 1]["ts"] + runs[skip_runs - 1]["dur"] if skip_runs > 0 else -1
    kept = runs[skip_runs:]
    per_op: dict[str, list[float]] = {}
    for e in events:
        if (e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")
                and e.get("ts", 0) >= start):
            op = e.get("args", {}).get("op_name", "?")
            per_op.setdefault(op, []).append(float(e.get("dur", 0)))
    if not per_op:
        raise RamAvatarError("ONNX Runtime profile has no kernel (cat 'Node') events")
    n = len(kept)
    total_us = sum(sum(v) for v in per_op.values())
    rows = [{"op_type": op, "ms_per_frame": round(sum(d) / n / 1e3, 3),
             "percent": round(100.0 * sum(d) / total_us, 2) if total_us else 0.0,
             "count": round(len(d) / n, 2)}
            for op, d in per_op.items()]
    rows.sort(key=lambda r: -r["ms_per_frame"])
    return {"runs": n, "kernel_ms_per_frame": round(total_us / n / 1e3, 3),
            "run_ms_per_frame": round(statistics.median(e["dur"] for e in kept) / 1e3, 3),
            "op_types": len(rows), "rows": rows if top is None else rows[:top]}


def format_ort_profile(table: dict, title: str | None = None) -> str:
    """Markdown table of :func:`parse_ort_profile`'s result (op type, ms/frame, %, count)."""
    lines = [] if title is None else [f"### {title}", ""]
    call = "infer" if table.get("runtime") == "openvino" else "session.run"
    lines += [f"kernel time {table['kernel_ms_per_frame']:.1f} ms/frame, {call} median "
              f"{table['run_ms_per_frame']:.1f} ms, {table['runs']} runs, "
              f"{table['op_types']} op types", "",
              "| op type | ms / frame | % | count |", "|---|---:|---:|---:|"]
    for r in table["rows"]:
        lines.append(f"| {r['op_type']} | {r['ms_per_frame']:.2f} | {r['percent']:.1f} | "
                     f"{r['count']:g} |")
    return "\n".join(lines) + "\n"


def profile_onnx(path: str | os.PathLike, feed: dict, runs: int = 10, warmup: int = 1,
                 graph_level: str | None = None, threads: int | None = None,
                 top: int | None = 15, trace_dir: str | os.PathLike | None = None) -> dict:
    """Profile an ONNX model in ONNX Runtime (CPU provider) and tabulate it per op type.

    Args:
        path: the .onnx file.
        feed: input name -> numpy array or torch tensor.
        runs / warmup: profiled runs after ``warmup`` untimed ones (dropped from the table).
        graph_level / threads: session options (:func:`ram_avatar.runtime.engines.ort_session_options`;
            None = the renderer's measured defaults).
        top: rows kept (:func:`parse_ort_profile`).
        trace_dir: where ORT writes its trace (kept, path in ``trace``); None: a temporary
            folder, deleted afterwards.

    Returns:
        :func:`parse_ort_profile`'s dict plus ``graph_level``, ``threads`` and ``trace``.
    """
    import onnxruntime as ort

    from ram_avatar.runtime.engines import DEFAULT_ORT_GRAPH_LEVEL, ort_session_options

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(trace_dir) if trace_dir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        opts = ort_session_options(graph_level, threads,
                                   profile_prefix=str(folder / Path(path).stem))
        sess = ort.InferenceSession(str(path), sess_options=opts,
                                    providers=["CPUExecutionProvider"])
        np_feed = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v)
                   for k, v in feed.items()}
        for _ in range(warmup + runs):
            sess.run(None, np_feed)
        trace = sess.end_profiling()
        table = parse_ort_profile(trace, skip_runs=warmup, top=top)
        table["graph_level"] = graph_level or DEFAULT_ORT_GRAPH_LEVEL
        table["threads"] = int(opts.intra_op_num_threads)
        table["trace"] = str(trace) if trace_dir is not None else None
    return table


def profile_openvino(path: str | os.PathLike, feed: dict, runs: int = 10, warmup: int = 1,
                     precision: str | None = None, threads: int | None = None,
                     top: int | None = 15) -> dict:
    """Profile an ONNX model in OpenVINO on the CPU (the ``--backend openvino`` runtime,
    :class:`~ram_avatar.runtime.engines.OpenVinoRunner` with ``PERF_COUNT``) and tabulate it
    per node type, in the form of :func:`parse_ort_profile`.

    OpenVINO reports each executed node of the compiled graph (after its fusions: a
    convolution with its fused element-wise tail is one ``Convolution`` node) with its type
    and ``real_time``; the table sums them per type and divides by ``runs``.

    Args:
        path: the .onnx file.
        feed: input name -> numpy array or torch tensor (batch 1).
        runs / warmup: profiled runs after ``warmup`` untimed ones.
        precision / threads: :class:`~ram_avatar.runtime.engines.OpenVinoRunner`'s (None = its
            defaults: bfloat16 where the CPU has it, 1 thread).
        top: rows kept (None: all); percentages are of all node types' time.

    Returns:
        dict ``runs``, ``kernel_ms_per_frame`` (sum of the nodes' real time per run),
        ``run_ms_per_frame`` (median wall time of ``infer``), ``op_types``, ``rows`` (as
        :func:`parse_ort_profile`), ``precision``, ``threads`` and ``runtime`` (``openvino``).

    Raises:
        RamAvatarError: OpenVINO missing or the model unreadable (:class:`OpenVinoRunner`).
    """
    from ram_avatar.runtime.engines import OpenVinoRunner

    runner = OpenVinoRunner(path, precision, threads, perf_count=True)
    for _ in range(warmup):
        runner(feed)
    per_type: dict[str, list[float]] = {}
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner(feed)
        walls.append((time.perf_counter() - t0) * 1e3)
        for info in runner.last_request.profiling_info:
            if info.status != info.status.EXECUTED:
                continue
            row = per_type.setdefault(info.node_type, [0.0, 0])
            row[0] += info.real_time.total_seconds() * 1e3
            row[1] += 1
    total = sum(v[0] for v in per_type.values())
    rows = [{"op_type": k, "ms_per_frame": round(v[0] / runs, 3),
             "percent": round(100.0 * v[0] / total, 2) if total > 0 else 0.0,
             "count": v[1] / runs}
            for k, v in sorted(per_type.items(), key=lambda kv: -kv[1][0])]
    return {"runs": runs, "kernel_ms_per_frame": round(total / runs, 3),
            "run_ms_per_frame": round(float(statistics.median(walls)), 3),
            "op_types": len(rows), "rows": rows if top is None else rows[:top],
            "precision": runner.precision, "threads": runner.threads, "runtime": "openvino"}


def export_renderer_onnx(preset: str, resolution: int, path: str | os.PathLike,
                         freeze: bool = True, overrides: list[str] | None = None,
                         seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    """Export the preset's renderer (random weights, ``model.resolution = resolution``) as
    ``ram-avatar export`` does: :class:`~ram_avatar.models.export.RendererExport` (mean style,
    rgb + alpha; ``freeze`` collapses the texture pyramid into a constant) through
    :func:`~ram_avatar.models.export.export_onnx` (opset 17, dynamic batch, parity checked).

    Returns:
        (path, example inputs ``(1, C, S, S)`` by input name, :func:`_maps`).
    """
    from ram_avatar.models.export import RendererExport, export_onnx
    from ram_avatar.models.renderer import AvatarRenderer
    from ram_avatar.training.config import apply_overrides, get_preset

    cfg = get_preset(preset)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    mcfg = replace(cfg.model, resolution=int(resolution), num_frames=1)
    torch.manual_seed(seed)
    wrapper = RendererExport(AvatarRenderer(mcfg).eval(), freeze=freeze).eval()
    maps = _maps(mcfg, 1, torch.device("cpu"), seed)
    feed = {n: maps[n] for n in wrapper.names}
    export_onnx(wrapper, feed, path, output_names=list(RendererExport.OUTPUTS), opset=17,
                exporter="legacy")
    return Path(path), feed


def ort_profile_renderer(preset: str = "paper-1024", resolution: int = 256, runs: int = 10,
                         freeze: bool = True, graph_level: str | None = None,
                         threads: int | None = None, top: int | None = 15,
                         out_dir: str | os.PathLike | None = None,
                         overrides: list[str] | None = None) -> dict:
    """``bench render --ort-profile``: per-op ONNX Runtime profile of the preset's exported
    renderer (:func:`export_renderer_onnx`, :func:`profile_onnx`) at ``resolution``, and the
    same file's per-node-type OpenVINO profile (:func:`profile_openvino`) when it is installed.

    Returns:
        :func:`profile_onnx`'s dict plus ``preset``, ``resolution``, ``frozen_texture``,
        ``onnxruntime_version``, ``openvino`` (:func:`profile_openvino`'s dict, or
        ``{"error": why}``) and ``markdown`` (:func:`format_ort_profile`, both tables). With
        ``out_dir``: the trace is kept there and ``ort_profile_<preset>_<S>.json`` / ``.md``
        are written (atomically).
    """
    import json

    import onnxruntime as ort

    from ram_avatar.utils import atomic_write_text

    with tempfile.TemporaryDirectory() as tmp:
        path, feed = export_renderer_onnx(preset, resolution, Path(tmp) / f"{preset}_{resolution}.onnx",
                                          freeze=freeze, overrides=overrides)
        table = profile_onnx(path, feed, runs=runs, graph_level=graph_level, threads=threads,
                             top=top, trace_dir=out_dir)
        try:
            ov_table = profile_openvino(path, feed, runs=runs, threads=threads, top=top)
        except RamAvatarError as e:  # OpenVINO not installed: the ORT table alone
            ov_table = {"error": str(e)}
    table.update(preset=preset, resolution=int(resolution), frozen_texture=bool(freeze),
                 onnxruntime_version=ort.__version__, openvino=ov_table)
    title = (f"{preset} at {resolution}², graph level {table['graph_level']}, "
             f"{table['threads']} intra-op threads, texture "
             f"{'frozen' if freeze else 'pyramid'}")
    table["markdown"] = format_ort_profile(table, title)
    if "rows" in ov_table:
        table["markdown"] += "\n" + format_ort_profile(
            ov_table, f"the same export in OpenVINO, {ov_table['precision']}, "
                      f"{ov_table['threads']} threads, static batch")
    if out_dir is not None:
        stem = Path(out_dir) / f"ort_profile_{preset}_{resolution}"
        atomic_write_text(f"{stem}.json", json.dumps(table, indent=1) + "\n")
        atomic_write_text(f"{stem}.md", table["markdown"])
    return table


def compare_ort_options(path: str | os.PathLike, feed: dict, configs: list[dict],
                        rounds: int = 5, runs_per_round: int = 3, warmup: int = 2) -> list[dict]:
    """Median ``session.run`` latency of one ONNX model under several session options,
    measured interleaved (A B C A B C ...: one session per config, ``rounds`` rounds of
    ``runs_per_round`` runs each) so a change of the machine's load hits every config alike.

    Args:
        path: the .onnx file.
        feed: input name -> numpy array or torch tensor.
        configs: ``{"graph_level": ..., "threads": ...}`` dicts
            (:func:`ram_avatar.runtime.engines.ort_session_options`).
        rounds / runs_per_round / warmup: timing schedule (warm-up runs per session first).

    Returns:
        one dict per config: its keys plus ``median_ms``, ``p90_ms``, ``min_ms``, ``n``.
    """
    import numpy as np
    import onnxruntime as ort

    from ram_avatar.runtime.engines import ort_session_options

    np_feed = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v)
               for k, v in feed.items()}
    sessions = []
    for c in configs:
        opts = ort_session_options(c.get("graph_level"), c.get("threads"))
        sess = ort.InferenceSession(str(path), sess_options=opts,
                                    providers=["CPUExecutionProvider"])
        for _ in range(warmup):
            sess.run(None, np_feed)
        sessions.append(sess)
    times: list[list[float]] = [[] for _ in configs]
    for _ in range(rounds):
        for i, sess in enumerate(sessions):
            for _ in range(runs_per_round):
                t0 = time.perf_counter()
                sess.run(None, np_feed)
                times[i].append((time.perf_counter() - t0) * 1e3)
    out = []
    for c, t in zip(configs, times):
        a = np.asarray(t)
        out.append({**c, "median_ms": round(float(np.median(a)), 2),
                    "p90_ms": round(float(np.percentile(a, 90)), 2),
                    "min_ms": round(float(a.min()), 2), "n": int(a.size)})
    return out
