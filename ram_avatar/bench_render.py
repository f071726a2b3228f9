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
``torch.utils.flop_counter.FlopCounterMode``: convolutions, matmuls and the attention's einsums;
``grid_sample`` and elementwise ops count as 0), ``torch_ms`` (median eager latency) and, with
``onnx=True``, ``onnxruntime_ms`` (the component exported alone to ONNX, opset 17, run by ONNX
Runtime on the CPU provider, or CUDA when the device is CUDA and the provider exists). GPU
timings synchronise first (CUDA events). Timings are wall-clock medians over ``repeats`` runs
after ``warmup`` runs, batch ``batch``; they depend on the machine's load.
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

from ram_avatar.models.inputs import ALL_INPUTS, spec

log = logging.getLogger(__name__)

__all__ = ["bench_render"]


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
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *maps):
        n = len(maps) // 2
        return tuple(self.model.sample_body_maps(list(maps[:n]), list(maps[n:])))


class _Attention(nn.Module):
    def __init__(self, attention):
        super().__init__()
        self.attention = attention

    def forward(self, f, fe, fp):
        return self.attention(f, fe, fp)


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
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), providers=providers)
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
        onnx: also export each component and time it in ONNX Runtime.
        overrides: ``key=value`` config overrides (e.g. ``model.attention_channels=48``).
        train_step: also measure one forward + backward (``train_step``, module docstring).

    Returns:
        JSON-serialisable dict: ``device``, ``preset``, ``batch``, versions, ``threads`` and
        ``results`` mapping each resolution (as a string) to ``components`` (name ->
        ``params``, ``gflops``, ``torch_ms``, ``onnxruntime_ms``, ``onnxruntime_provider``) and
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
        if attention is not None and attention.spatial is not None:
            sample_sets.append((f"{key}_expanded", "body_mask_expanded"))
        if attention is not None and attention.temporal is not None:
            sample_sets.append((f"prev_{key}", "prev_body_mask"))
        sampling_in = [maps[c] for c, _ in sample_sets] + [maps[m] for _, m in sample_sets]
        sampling = _Sampling(model)
        with torch.no_grad():
            feats = sampling(*sampling_in)
        f_all = feats[0]  # learned features (+ the fixed RGB texture's 3 channels, texture_rgb)
        nc = mcfg.body_channels
        rgb = f_all[:, nc:] if mcfg.texture_rgb else None
        feats = [t[:, :nc] for t in feats]  # the attention sees the learned features only
        f = feats[0]
        fe = feats[1] if len(feats) > 1 and attention.spatial is not None else f
        fp = feats[-1] if attention is not None and attention.temporal is not None else f
        components: dict[str, tuple[nn.Module, list[torch.Tensor], nn.Module]] = {
            "body_sampling": (sampling, sampling_in, model.body_features)}
        if attention is not None:
            components["attention"] = (_Attention(attention), [f, fe, fp], attention)
        branches = _Branches(model)
        if mcfg.variant == "full" and (branches.hand is not None or branches.face is not None):
            components["branches"] = (branches, [maps["hand"], maps["face"]], branches)
        names = model.input_names()
        with torch.no_grad():
            if mcfg.variant == "full":
                body = attention(f, fe, fp) if attention is not None else f
                x = torch.cat([body, *([] if rgb is None else [rgb]),
                               *branches(maps["hand"], maps["face"]), maps["body_mask"]], 1)
            else:
                x = torch.cat([f_all, maps["hand"], maps["face"], maps["body_mask"]], 1)
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
                res[name] = entry
                log.info("bench %d^2 %s: %s", S, name, entry)
        entry = {"components": res, "config": mcfg.to_dict()}
        if train_step:
            entry["train_step"] = train_step_cost(model, {n: maps[n] for n in names}, dev)
            log.info("bench %d^2 train step: %s", S, entry["train_step"])
        report["results"][str(S)] = entry
        del model
    return report
