"""``ram-avatar bench gpu``: the GPU path measured in one command, written as JSON + Markdown.

Sections (each runs on its own; a failing one records its error and the others go on; the
report is rewritten after every section, so a run cut short keeps what it measured):

``train``   per preset (default ``cpu-256``, ``gpu-512``, ``paper-1024``): the real trainer
            (:func:`ram_avatar.training.trainer.train`) on synthetic conditioning maps of the
            preset's resolution and batch size, ``warmup_steps`` untimed then ``steps`` timed:
            steps/s and the peak CUDA memory (``torch.cuda.max_memory_allocated``). The
            trainer's AMP is float16 autocast + GradScaler on CUDA. Also one renderer-only
            forward + backward under autocast in bfloat16 where the GPU supports it
            (:func:`ram_avatar.bench_render.train_step_cost`), and the memory estimate of
            :func:`estimate_train_memory` for comparison with the measured peak.
``export``  per resolution (default 256, 512, 1024): the renderer exported to ONNX (opset 17),
            ONNX -> TensorRT fp16 engine build time (the ``tensorrt`` engine builder registered
            by ``exporters``), and max |TensorRT - torch| and |ONNX Runtime CUDA - torch| in grey
            levels (x255) on held-out conditioning maps: the subject's own renderer on its real
            held-out maps at its resolution, a randomly initialised renderer of ``preset``'s
            architecture on random maps elsewhere (marked ``random-init``).
``render``  renderer latency per resolution for torch (float32, and autocast), ONNX Runtime
            (CUDA provider) and TensorRT: torch and TensorRT timed with CUDA events after a
            warm-up (median of ``repeats``), ONNX Runtime wall clock around ``session.run``
            with host arrays (so its time includes the copies to and from the GPU).
``live``    live end-to-end throughput and latency at 512^2 and 1024^2 with each backend
            (:func:`ram_avatar.bench.bench_live`) on a video; needs a captured subject.
``raster``  rasterizer time per backend (torch, moderngl, nvdiffrast) on the Anny body (rest
            pose, 3 m from the camera) at each resolution, wall clock with CUDA synchronised.

On a machine without CUDA :func:`bench_gpu` raises :class:`GpuRequiredError` (exit status 2
from the CLI) listing exactly what it would measure. ``allow_cpu=True`` runs the same code on
the CPU with the device as a parameter (the tests do, at tiny sizes): only the CUDA calls
(events, memory statistics, TensorRT, ONNX Runtime's CUDA provider) are left untested there.

Targets of issue 14 (one H100/H200) are checked in the report: TensorRT fp16 renderer at
1024^2 <= 8 ms, live >= 30 fps at 1024^2, TensorRT parity within 2 grey levels, ``paper-1024``
training >= 4 steps/s at batch 2.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import platform
import statistics
import tempfile
import time
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ram_avatar.errors import RamAvatarError
from ram_avatar.utils import atomic_write_text, resolve_device

log = logging.getLogger(__name__)

__all__ = ["bench_gpu", "GpuRequiredError", "MEASUREMENTS", "measurement_plan",
           "estimate_train_memory", "SyntheticMaps", "render_markdown", "check_targets"]

DEFAULT_PRESETS = ("cpu-256", "gpu-512", "paper-1024")
DEFAULT_SIZES = (256, 512, 1024)
DEFAULT_LIVE_SIZES = (512, 1024)
LIVE_BACKENDS = ("torch", "onnx", "tensorrt")
RASTER_BACKENDS = ("torch", "moderngl", "nvdiffrast")

#: What ``bench gpu`` measures, section by section (printed where there is no GPU).
MEASUREMENTS = {
    "train": "training steps/s and peak CUDA memory of presets cpu-256, gpu-512 and paper-1024 "
             "(the real trainer, its float16 AMP; one renderer step under bfloat16 autocast), "
             "with the CPU memory estimate beside it",
    "export": "ONNX -> TensorRT fp16 engine build time; max |TensorRT - torch| and "
              "|ONNX Runtime CUDA - torch| in grey levels on held-out conditioning maps, at "
              "256, 512 and 1024",
    "render": "renderer latency at 256, 512 and 1024 for torch, ONNX Runtime CUDA and TensorRT "
              "(CUDA events after a warm-up)",
    "live": "live end-to-end fps and latency at 512 and 1024 with the torch, onnx and tensorrt "
            "backends on a video (needs SUBJECT)",
    "raster": "rasterizer time per backend (torch, moderngl, nvdiffrast) on the Anny body at "
              "256, 512 and 1024",
}


class GpuRequiredError(RamAvatarError):
    """``bench gpu`` was asked for on a machine where PyTorch sees no CUDA device."""


def measurement_plan() -> str:
    """The list of measurements, one line per section (:data:`MEASUREMENTS`)."""
    return "\n".join(f"  - {name}: {what}" for name, what in MEASUREMENTS.items())


# --------------------------------------------------------------------------------------------
# memory estimate without a GPU
# --------------------------------------------------------------------------------------------


class _LiveBytes:
    """Bytes of the tensor storages alive while a :class:`TorchDispatchMode` sees every op.

    Storages are keyed by their StorageImpl and released through a weak reference (PyTorch
    keeps a storage's Python object alive as long as the storage lives), so ``current`` is the
    memory an exact allocator would hold and ``peak`` its maximum. Allocator rounding,
    fragmentation, cuDNN workspaces and the CUDA context are not included.
    """

    def __init__(self):
        self._refs: dict[int, weakref.ref] = {}
        self.current = 0
        self.peak = 0

    def add(self, t) -> None:
        if not isinstance(t, torch.Tensor):
            return
        st = t.untyped_storage()
        key = st._cdata
        if key in self._refs:
            return
        nbytes = int(st.nbytes())

        def release(_ref, key=key, nbytes=nbytes):
            if self._refs.pop(key, None) is not None:
                self.current -= nbytes

        self._refs[key] = weakref.ref(st, release)
        self.current += nbytes
        self.peak = max(self.peak, self.current)

    def mode(self):
        from torch.utils import _pytree as pytree
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in pytree.tree_leaves(out):
                    tracker.add(t)
                return out

        return _Mode()


def _training_modules(config, mcfg) -> tuple:
    """What the trainer builds for ``config``: (renderer, EMA copy or None, its Adam,
    discriminator or None, its Adam or None, VGG perceptual loss or None)."""
    from ram_avatar.losses.perceptual import VGG19Features, VGGPerceptualLoss
    from ram_avatar.models.discriminator import TemporalDiscriminator
    from ram_avatar.models.renderer import AvatarRenderer
    from ram_avatar.training.trainer import _param_groups

    model = AvatarRenderer(mcfg)
    ema = AvatarRenderer(mcfg).requires_grad_(False) if config.ema_decay > 0 else None
    # foreach: CUDA's default Adam implementation (its temporaries span all parameters)
    opt = torch.optim.Adam(_param_groups(model, config), lr=config.lr, betas=config.betas,
                           foreach=True)
    disc = opt_d = None
    if config.adversarial:
        disc = TemporalDiscriminator(mcfg.resolution, frames=3, base_channels=config.disc_base_channels,
                                     max_channels=config.disc_max_channels)
        opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr, betas=config.betas,
                                 foreach=True)
    vgg = None
    if config.vgg_weight > 0:
        vgg = VGGPerceptualLoss(VGG19Features()).requires_grad_(True)
    return model, ema, opt, disc, opt_d, vgg


def _generator_loss(model, disc, vgg, inputs: dict, frame_index: torch.Tensor, image: torch.Tensor,
                    config, autocast) -> tuple:
    """The trainer's generator loss (SmoothL1, mask BCE, VGG, GAN); returns (out, rgb, loss,
    the discriminator's fake logits or None)."""
    import torch.nn.functional as F

    from ram_avatar.losses.gan import g_nonsaturating_loss
    from ram_avatar.models.discriminator import stack_frames

    with autocast():
        out = model.forward_batch(inputs, frame_index)
    rgb = out["rgb"].float()
    loss = config.l1_weight * F.smooth_l1_loss(rgb, image, beta=max(config.l1_beta, 1e-6))
    loss = loss + config.mask_weight * F.binary_cross_entropy_with_logits(
        out["alpha_logit"].float(), inputs["body_mask"].float())
    if vgg is not None:
        with autocast():
            loss = loss + config.vgg_weight * vgg(rgb, image)
    fake_logits = None
    if disc is not None:
        with autocast():
            fake_logits = disc(stack_frames(image, rgb, image))
        loss = loss + config.gan_weight_max * g_nonsaturating_loss(fake_logits.float())
    return out, rgb, loss, fake_logits


def _simulated_train_step(model, ema, opt, disc, opt_d, vgg, inputs: dict, frame_index: torch.Tensor,
                          image: torch.Tensor, config, autocast) -> None:
    """One generator step (with EMA update) and one discriminator step with R1; every tensor of
    the step is freed when it returns."""
    from ram_avatar.losses.gan import d_logistic_loss, r1_penalty
    from ram_avatar.models.discriminator import stack_frames

    out, rgb, loss, fake_logits = _generator_loss(model, disc, vgg, inputs, frame_index, image,
                                                  config, autocast)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if ema is not None:
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters()):
                pe.lerp_(p.detach(), 1.0 - config.ema_decay)
    if disc is not None:
        real = stack_frames(image, image, image).detach().requires_grad_(True)
        real_logits = disc(real)
        with autocast():
            fake_logits = disc(stack_frames(image, rgb.detach(), image))
        d_loss = d_logistic_loss(real_logits.float(), fake_logits.float())
        if config.r1_gamma > 0:
            d_loss = d_loss + 0.5 * config.r1_gamma * config.r1_interval * \
                r1_penalty(real_logits, real)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()


def estimate_train_memory(config, batch: int | None = None, amp_dtype: torch.dtype | None = None,
                          fake: bool = True, steps: int = 2) -> dict:
    """Estimate the tensor memory of training steps of ``config`` without a GPU.

    Builds what the trainer builds (renderer, its Adam and EMA copy, temporal discriminator
    and its Adam, the VGG19 perceptual network when ``vgg_weight > 0``) and runs ``steps``
    generator + discriminator steps with the trainer's losses (SmoothL1, VGG, GAN, R1 on every
    step: the periodic R1 step is the most expensive one) while counting the live tensor bytes
    (:class:`_LiveBytes`). With ``fake=True`` the tensors are fake CPU tensors
    (``FakeTensorMode``): shapes and dtypes only, no arithmetic and no memory, so
    ``paper-1024`` costs the same 10-30 s (per-op overhead) as a tiny model; CPU autocast
    applies to them, which ``meta`` tensors would ignore.

    Differences to a real CUDA run: no allocator overhead, cuDNN workspace or CUDA context
    (add roughly 1-2 GiB); VGG19 and the discriminator keep ``requires_grad`` in the generator
    step (their weight gradients are counted: an overestimate of < 0.2 GiB); autocast is
    simulated with the CPU autocast op lists (``amp_dtype``), which differ from CUDA's in
    details. The hand loss (crops) is left out.

    Args:
        config: a :class:`~ram_avatar.training.config.TrainConfig`.
        batch: images per step (default ``config.batch_size``).
        amp_dtype: ``None`` (float32) or the autocast dtype (``torch.bfloat16`` /
            ``torch.float16``).
        fake: fake tensors (True) or real CPU tensors (slow and memory-hungry at real sizes;
            the tests check that both count the same bytes).
        steps: training steps counted (the first one creates the Adam states).

    Returns:
        dict in GiB: ``weights`` (parameters and buffers of every network and the inputs),
        ``peak`` (maximum live memory), ``after_step`` (live memory after the last step:
        weights, gradients, Adam states), plus ``batch``, ``resolution``, ``amp``.
    """
    from ram_avatar.bench_render import _maps

    batch = int(batch or config.batch_size)
    mcfg = replace(config.model, num_frames=max(2, batch))
    S = mcfg.resolution
    gib = 2.0 ** 30
    if fake:
        from torch._subclasses.fake_tensor import FakeTensorMode

        fake_mode = FakeTensorMode()
    else:
        fake_mode = contextlib.nullcontext()
    tracker = _LiveBytes()
    autocast = (lambda: torch.autocast("cpu", dtype=amp_dtype)) if amp_dtype is not None \
        else contextlib.nullcontext
    with fake_mode:
        model, ema, opt, disc, opt_d, vgg = _training_modules(config, mcfg)
        maps = _maps(mcfg, batch, "cpu")
        inputs = {n: maps[n] for n in model.input_names()}
        image = torch.rand(batch, 3, S, S)
        for module in (model, ema, disc, vgg):
            if module is not None:
                for t in [*module.parameters(), *module.buffers()]:
                    tracker.add(t)
        for t in [*inputs.values(), image]:
            tracker.add(t)
        weights = tracker.current
        frame_index = torch.zeros(batch, dtype=torch.long)
        with tracker.mode():
            for _ in range(steps):
                _simulated_train_step(model, ema, opt, disc, opt_d, vgg, inputs, frame_index, image,
                                      config, autocast)
        after = tracker.current
    return {"batch": batch, "resolution": S,
            "amp": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "float32",
            "weights": _sig(weights / gib), "peak": _sig(tracker.peak / gib),
            "after_step": _sig(after / gib)}


def _sig(x: float) -> float:
    """4 significant digits (tiny test configs use MiB-sized tensors, presets GiB)."""
    return float(f"{x:.4g}")


# --------------------------------------------------------------------------------------------
# synthetic training data
# --------------------------------------------------------------------------------------------


class SyntheticMaps(Dataset):
    """Random conditioning maps and images with every key training ``config`` reads.

    Speed and memory of a training step do not depend on the maps' content, so the benchmark
    needs no captured subject for them. Items follow docs/INTERFACES.md at
    ``config.model.resolution``: a random body silhouette, its UVs, sparse hand/face strokes,
    a random image, and the extras of :func:`~ram_avatar.training.trainer.required_item_keys`
    (expanded/previous maps, neighbour images, hand boxes of S/8 px).

    Args:
        config: training config.
        n: number of items (frame indices 0..n-1).
        seed: RNG seed of the content.
    """

    def __init__(self, config, n: int = 8, seed: int = 0):
        from ram_avatar.training.trainer import required_item_keys

        self.S = config.model.resolution
        self.n = int(n)
        self.seed = seed
        self.keys = required_item_keys(config)
        self.num_frames = self.n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        S = self.S
        g = torch.Generator().manual_seed(self.seed * 100_003 + int(i))

        def rnd(c):
            return torch.rand(c, S, S, generator=g)

        def silhouette():
            return (torch.nn.functional.avg_pool2d(rnd(1)[None], 9, 1, 4)[0] > 0.5).float()

        mask = silhouette()
        item = {"uv": rnd(2) * mask, "body_mask": mask, "hand": (rnd(5) > 0.98).float(),
                "face": (rnd(3) > 0.98).float(), "image": rnd(3), "person_mask": mask,
                "frame_index": int(i)}
        for key in self.keys:
            if key in ("uv_expanded", "prev_uv"):
                m = silhouette()
                item[key] = rnd(2) * m
                item[key.replace("uv", "body_mask")] = m
            elif key.startswith("canon") or key == "prev_canon":
                item[key] = rnd(3) * 2 - 1
            elif key in ("image_prev", "image_next"):
                item[key] = rnd(3)
            elif key == "hand_boxes":
                c = S / 8
                item[key] = torch.tensor([[c, c, 2 * c, 2 * c], [S - 2 * c, c, S - c, 2 * c]])
                item["hand_valid"] = torch.ones(2, dtype=torch.bool)
        return item


# --------------------------------------------------------------------------------------------
# timing helpers (the CUDA-event timer is bench_render's)
# --------------------------------------------------------------------------------------------


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _wall_ms(fn: Callable[[], object], dev: torch.device, warmup: int, repeats: int) -> float:
    """Median wall-clock milliseconds of ``fn()`` with CUDA synchronised before and after (for
    work that is partly on the host: ONNX Runtime with host arrays, the moderngl rasterizer)."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            _sync(dev)
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------


def _preset_config(name: str, overrides):
    from ram_avatar.training.config import apply_overrides, get_preset

    cfg = get_preset(name)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg


def _amp_dtype(dev: torch.device) -> torch.dtype:
    """bfloat16 where supported (every CPU; CUDA GPUs from Ampere on), else float16."""
    if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def bench_train(preset: str, dev: torch.device, work: Path, steps: int = 30,
                warmup_steps: int = 5, overrides=None, estimate: bool = True) -> dict:
    """The ``train`` section for one preset (module docstring).

    Returns:
        dict: ``preset``, ``resolution``, ``batch_size``, ``steps``, ``steps_per_s``, ``amp``,
        ``peak_memory_gib`` / ``peak_reserved_gib`` (CUDA; None on CPU), ``num_parameters``,
        ``loss``, ``vgg`` (``loaded`` or ``fallback (SSIM)``), ``renderer_step_amp``
        (``dtype``, ``ms``, memory) and ``memory_estimate`` (float32 and autocast,
        :func:`estimate_train_memory`).
    """
    from dataclasses import replace as dc_replace

    from ram_avatar.bench_render import _maps, train_step_cost
    from ram_avatar.eval.metrics import TORCHVISION_FILES, find_weight_file
    from ram_avatar.models.renderer import AvatarRenderer
    from ram_avatar.training.trainer import train

    cfg = _preset_config(preset, overrides)
    never = 10 ** 9
    cfg.checkpoint_interval = cfg.preview_interval = cfg.val_interval = never
    cfg.log_interval = max(1, steps)
    cfg.keep_checkpoints = 1
    cuda = dev.type == "cuda"
    data = SyntheticMaps(cfg, n=max(4, 2 * cfg.batch_size))
    run_dir = work / f"train_{preset}"
    train(data, None, run_dir, cfg, steps=warmup_steps, device=dev, show_progress=False)
    _sync(dev)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    summary = train(data, None, run_dir, cfg, steps=warmup_steps + steps, device=dev,
                    show_progress=False)
    _sync(dev)
    vgg_found = find_weight_file([TORCHVISION_FILES["vgg19"][0]], cfg.vgg_weights) is not None
    entry = {
        "preset": preset, "resolution": cfg.model.resolution, "batch_size": cfg.batch_size,
        "steps": summary["steps_run"], "steps_per_s": round(summary["steps_per_s"], 3),
        "amp": "float16 autocast + GradScaler (trainer)" if cuda and cfg.amp else "float32",
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(dev) / 2 ** 30, 2) if cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved(dev) / 2 ** 30, 2) if cuda else None,
        "num_parameters": summary["num_parameters"],
        "loss": summary["losses"].get("total"),
        "vgg": ("loaded" if vgg_found else "fallback (SSIM): VGG19 weights absent")
        if cfg.vgg_weight > 0 else "off",
    }
    # renderer-only forward + backward under autocast (bf16 where supported)
    dtype = _amp_dtype(dev)
    mcfg = dc_replace(cfg.model, num_frames=1)
    torch.manual_seed(0)
    model = AvatarRenderer(mcfg).to(dev)
    maps = _maps(mcfg, cfg.batch_size, dev)
    maps = {n: maps[n] for n in model.input_names()}
    with torch.autocast(dev.type, dtype=dtype):
        train_step_cost(model, maps, dev)  # warm-up (cuDNN autotuning, allocator)
        cost = train_step_cost(model, maps, dev)
    entry["renderer_step_amp"] = {"dtype": str(dtype).replace("torch.", ""), **cost}
    del model, maps
    if estimate:
        entry["memory_estimate"] = {
            "float32": estimate_train_memory(cfg),
            "autocast": estimate_train_memory(cfg, amp_dtype=dtype),
            "note": "CPU estimate (fake tensors): tensor bytes only, no allocator overhead, "
                    "cuDNN workspace or CUDA context",
        }
    log.info("bench gpu train %s: %s", preset, {k: entry[k] for k in ("steps_per_s", "peak_memory_gib")})
    return entry


def _subject_renderer(subject: Path, run_name: str, frames: int = 4):
    """The subject's renderer, its resolution and real held-out maps (as ``export`` uses)."""
    from ram_avatar.io.subject import Subject
    from ram_avatar.models.inputs import uses_previous
    from ram_avatar.render.sequence import (add_previous_maps, map_render_options, maps_to_float,
                                            render_sequence_maps)

    run = Subject(subject).run(run_name)
    model, _ = run.load_renderer()
    seq = run.subject.load_sequence()
    S = model.config.resolution
    val = run.split(seq).val
    idx = (val if len(val) else np.arange(seq.num_frames))[:frames]
    names = tuple(model.input_names())
    maps = render_sequence_maps(seq, idx, S, desc="held-out maps",
                                **map_render_options(names, model.config.expand_offset))
    if uses_previous(names):
        add_previous_maps(maps)
    maps = maps_to_float(maps)
    return model.eval(), S, {n: maps[n] for n in names}, [int(i) for i in idx]


def _default_engine_builder():
    """The TensorRT engine builder that ``exporters`` registers (entry point group
    ``ram_avatar.engine_builders``, name ``tensorrt``); ram_avatar never imports exporters."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="ram_avatar.engine_builders"):
        if ep.name == "tensorrt":
            return ep.load()
    raise RamAvatarError("no TensorRT engine builder is registered (entry point "
                         "ram_avatar.engine_builders:tensorrt from exporters); reinstall the "
                         "project: pip install -e .")


def _default_engine_loader(path: Path, dev: torch.device):
    from ram_avatar.runtime.trt import TensorRTEngine

    return TensorRTEngine(path, dev)


def bench_renderers(sizes, dev: torch.device, work: Path, preset: str = "paper-1024",
                    subject: Path | None = None, run_name: str = "default", repeats: int = 20,
                    warmup: int = 5, engine_builder: Callable | None = None,
                    engine_loader: Callable | None = None, overrides=None) -> tuple[dict, dict]:
    """The ``export`` and ``render`` sections (module docstring), one resolution at a time.

    ``engine_builder(onnx_path, engine_path) -> report dict`` and ``engine_loader(engine_path,
    device) -> callable(dict of tensors) -> {"rgb": tensor}`` default to the TensorRT builder
    registered by ``exporters`` and :class:`ram_avatar.runtime.trt.TensorRTEngine`; TensorRT
    runs only on CUDA unless both are given.

    Returns:
        ``(export, render)``: dicts keyed by resolution (string).
    """
    from ram_avatar.bench_render import _maps, _time, _Total
    from ram_avatar.models.renderer import AvatarRenderer
    from ram_avatar.runtime.engines import OnnxRunner

    import onnxruntime as ort

    own = None
    if subject is not None:
        own = _subject_renderer(subject, run_name)
    cuda = dev.type == "cuda"
    providers = ["CPUExecutionProvider"]
    if cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    trt_possible = (engine_builder is not None and engine_loader is not None) or cuda
    export: dict = {}
    render: dict = {}
    for S in sizes:
        ex: dict = {}
        rd: dict = {}
        export[str(S)], render[str(S)] = ex, rd
        try:
            if own is not None and own[1] == S:
                model, _, maps, frames = own
                ex["renderer"] = rd["renderer"] = "subject"
                ex["held_out_frames"] = frames
            else:
                cfg = _preset_config(preset, overrides)
                mcfg = replace(cfg.model, resolution=int(S), num_frames=1)
                torch.manual_seed(0)
                model = AvatarRenderer(mcfg).eval()
                maps = _maps(mcfg, 1, "cpu")
                maps = {n: maps[n] for n in model.input_names()}
                ex["renderer"] = rd["renderer"] = f"random-init {preset} (random maps)"
            names = list(maps)
            wrapper = _Total(model, names).eval()
            cpu_inputs = [maps[n][:1].float().contiguous() for n in names]
            onnx_path = work / f"renderer_{S}.onnx"
            from ram_avatar.models.export import export_onnx  # the one ONNX export path

            rep = export_onnx(wrapper.cpu(), dict(zip(names, cpu_inputs)), onnx_path, ["rgb"],
                              dynamic_batch=True, opset=17, exporter="legacy")
            ex["onnx_export_s"] = round(float(rep["export_seconds"]), 2)
            ex["onnx_mb"] = round(onnx_path.stat().st_size / 2 ** 20, 1)
            wrapper.to(dev)
            dev_inputs = [t.to(dev) for t in cpu_inputs]
            with torch.no_grad():
                ref = wrapper(*dev_inputs).float()
            ref_np = ref.cpu().numpy()
            grey: dict = {}
            # torch
            rd["torch_ms"] = round(_time(lambda: wrapper(*dev_inputs), dev, warmup, repeats), 3)
            dtype = _amp_dtype(dev)

            def amp_call():
                with torch.autocast(dev.type, dtype=dtype):
                    return wrapper(*dev_inputs)

            rd["torch_autocast_ms"] = round(_time(amp_call, dev, warmup, repeats), 3)
            rd["torch_autocast_dtype"] = str(dtype).replace("torch.", "")
            # ONNX Runtime
            runner = OnnxRunner(onnx_path, providers=providers)
            feed = {n: t.numpy() for n, t in zip(names, cpu_inputs)}
            got = runner(feed)["rgb"]
            grey["onnxruntime"] = round(float(np.abs(got - ref_np).max()) * 255.0, 4)
            rd["onnxruntime_ms"] = round(_wall_ms(lambda: runner(feed), dev, warmup, repeats), 3)
            rd["onnxruntime_provider"] = runner.providers[0]
            ex["onnxruntime_provider"] = runner.providers[0]
            # TensorRT
            if trt_possible:
                builder = engine_builder or _default_engine_builder()
                loader = engine_loader or _default_engine_loader
                engine_path = work / f"renderer_{S}.engine"
                t0 = time.perf_counter()
                build = builder(onnx_path, engine_path)
                ex["tensorrt_build_s"] = round(float((build or {}).get("build_seconds",
                                                     time.perf_counter() - t0)), 1)
                ex["tensorrt_fp16"] = (build or {}).get("fp16")
                engine = loader(engine_path, dev)
                feed_t = dict(zip(names, dev_inputs))
                out = engine(feed_t)["rgb"]
                _sync(dev)
                out = torch.as_tensor(np.asarray(out.cpu() if torch.is_tensor(out) else out))
                grey["tensorrt"] = round(float((out.float() - ref.cpu()).abs().max()) * 255.0, 4)
                rd["tensorrt_ms"] = round(_time(lambda: engine(feed_t), dev, warmup, repeats), 3)
            else:
                ex["tensorrt"] = rd["tensorrt"] = "skipped: TensorRT needs a CUDA GPU"
            ex["max_abs_grey_levels"] = grey
            model.cpu()
        except Exception as exc:  # noqa: BLE001 - recorded; the next size still runs
            log.exception("bench gpu renderer %s", S)
            ex["error"] = rd["error"] = _err(exc)
        log.info("bench gpu renderer %s: %s | %s", S, ex, rd)
    return export, render


def bench_live_section(subject: Path, sizes, backends, dev: torch.device, frames: int,
                       video: Path | None = None, run_name: str = "default") -> dict:
    """The ``live`` section: :func:`ram_avatar.bench.bench_live` per backend and resolution."""
    from ram_avatar.bench import bench_live

    out: dict = {}
    for backend in backends:
        for R in sizes:
            key = f"{backend}@{R}"
            try:
                rep = bench_live(subject, resolution=R, device=str(dev), backend=backend,
                                 frames=frames, source=video, run_name=run_name)
                res = rep["results"][str(R)]
                out[key] = {k: res.get(k) for k in ("fps", "latency_ms", "stages_ms", "renderer",
                                                     "providers", "raster_backend", "error")
                            if k in res}
            except Exception as exc:  # noqa: BLE001
                out[key] = {"error": _err(exc)}
            log.info("bench gpu live %s: %s", key, out[key])
    return out


def _body_mesh() -> tuple[torch.Tensor, torch.Tensor]:
    """Anny rest pose 3 m in front of the camera: verts (1,V,3), faces (F,3)."""
    from ram_avatar.body import load_body_model

    body = load_body_model("anny")
    with torch.no_grad():
        verts = body(body.zero_params(1)).vertices
    return verts.float(), body.faces.long()


def bench_raster(sizes, dev: torch.device, repeats: int = 20, warmup: int = 3,
                 mesh: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """The ``raster`` section: milliseconds per :func:`rasterize` call per backend and size
    (``mesh`` = (verts (1,V,3), faces (F,3)), default the Anny body)."""
    from ram_avatar.render import rasterizer as R

    verts, faces = mesh if mesh is not None else _body_mesh()
    status = R.backend_status()
    out: dict = {"auto": status["auto"]}
    for S in sizes:
        K = torch.tensor([[1.2 * S, 0.0, S / 2], [0.0, 1.2 * S, S / 2], [0.0, 0.0, 1.0]])
        row: dict = {}
        for backend in RASTER_BACKENDS:
            if not status[backend]["ok"]:
                row[backend] = f"unavailable: {status[backend]['reason']}"
                continue
            v = verts.to(dev)
            try:
                fr = R.rasterize(v, faces, K, (S, S), backend=backend)
                row[backend] = {
                    "ms": round(_wall_ms(lambda: R.rasterize(v, faces, K, (S, S), backend=backend),
                                         dev, warmup, repeats), 3),
                    "coverage": round(float(fr.mask.float().mean()), 4)}
            except Exception as exc:  # noqa: BLE001
                row[backend] = {"error": _err(exc)}
        out[str(S)] = row
        log.info("bench gpu raster %s: %s", S, row)
    return out


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def check_targets(report: dict) -> list[dict]:
    """Issue 14's targets against the report: each ``{target, value, ok}`` with ``ok`` None
    when the figure is absent (not measured or failed)."""
    sec = report.get("sections", {})
    rows = []

    def get(*path):
        node = sec
        for p in path:
            if not isinstance(node, dict) or p not in node:
                return None
            node = node[p]
        return node

    trt_ms = get("render", "1024", "tensorrt_ms")
    rows.append({"target": "TensorRT fp16 renderer at 1024^2 <= 8 ms", "value": trt_ms,
                 "ok": None if trt_ms is None else trt_ms <= 8.0})
    fps = [v.get("fps") for k, v in (get("live") or {}).items()
           if k.endswith("@1024") and isinstance(v, dict) and v.get("fps") is not None]
    best = max(fps) if fps else None
    rows.append({"target": "live end-to-end >= 30 fps at 1024^2 (best backend)", "value": best,
                 "ok": None if best is None else best >= 30.0})
    greys = [v.get("max_abs_grey_levels", {}).get("tensorrt")
             for v in (get("export") or {}).values() if isinstance(v, dict)]
    greys = [g for g in greys if g is not None]
    worst = max(greys) if greys else None
    rows.append({"target": "TensorRT parity within 2 grey levels (max over sizes)",
                 "value": worst, "ok": None if worst is None else worst <= 2.0})
    sps = get("train", "paper-1024", "steps_per_s")
    rows.append({"target": "paper-1024 training >= 4 steps/s at batch 2", "value": sps,
                 "ok": None if sps is None else sps >= 4.0})
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    if isinstance(v, dict):
        return "; ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return str(v)


def render_markdown(report: dict) -> str:
    """The report as Markdown: machine, targets, then one table per section."""
    m = report["machine"]
    lines = [f"# ram-avatar bench gpu ({report['date']})", "",
             f"Device `{report['device']}`: {m.get('gpu') or 'no GPU'}; torch {m['torch']} "
             f"(CUDA {m.get('cuda')}), onnxruntime {m.get('onnxruntime')}, "
             f"TensorRT {m.get('tensorrt') or '-'}, {m['platform']}.", ""]
    if report.get("note"):
        lines += [f"> {report['note']}", ""]
    lines += ["## Targets (issue 14, one H100/H200)", "", "| target | value | met |",
              "| --- | --- | --- |"]
    for t in report.get("targets", []):
        met = "not measured" if t["ok"] is None else ("yes" if t["ok"] else "NO")
        lines.append(f"| {t['target']} | {_fmt(t['value'])} | {met} |")
    sec = report["sections"]
    if "train" in sec:
        lines += ["", "## Training", "", "| preset | S | batch | steps/s | peak GiB | amp | "
                  "renderer step (autocast) | estimate GiB fp32 / autocast |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, e in sec["train"].items():
            if "error" in e:
                lines.append(f"| {name} | error: {e['error']} | | | | | | |")
                continue
            est = e.get("memory_estimate") or {}
            step = e.get("renderer_step_amp") or {}
            lines.append(
                f"| {name} | {_fmt(e.get('resolution'))} | {_fmt(e.get('batch_size'))} | "
                f"{_fmt(e.get('steps_per_s'))} | {_fmt(e.get('peak_memory_gib'))} | "
                f"{_fmt(e.get('amp'))} | {step.get('dtype', '-')} "
                f"{_fmt(step.get('ms'))} ms | {_fmt((est.get('float32') or {}).get('peak'))} / "
                f"{_fmt((est.get('autocast') or {}).get('peak'))} |")
    if "export" in sec:
        lines += ["", "## Export and parity", "", "| S | renderer | ONNX export s | TensorRT "
                  "build s | max grey-level error |", "| --- | --- | --- | --- | --- |"]
        for S, e in sec["export"].items():
            lines.append(f"| {S} | {e.get('renderer', '-')} | {_fmt(e.get('onnx_export_s'))} | "
                         f"{_fmt(e.get('tensorrt_build_s', e.get('tensorrt')))} | "
                         f"{_fmt(e.get('max_abs_grey_levels', e.get('error')))} |")
    if "render" in sec:
        lines += ["", "## Renderer latency (ms)", "", "| S | torch fp32 | torch autocast | "
                  "ONNX Runtime | TensorRT |", "| --- | --- | --- | --- | --- |"]
        for S, e in sec["render"].items():
            lines.append(f"| {S} | {_fmt(e.get('torch_ms', e.get('error')))} | "
                         f"{_fmt(e.get('torch_autocast_ms'))} | {_fmt(e.get('onnxruntime_ms'))} "
                         f"({e.get('onnxruntime_provider', '-')}) | "
                         f"{_fmt(e.get('tensorrt_ms', e.get('tensorrt')))} |")
    if "live" in sec:
        lines += ["", "## Live end to end", ""]
        if isinstance(sec["live"], dict) and "skipped" in sec["live"]:
            lines.append(sec["live"]["skipped"])
        else:
            lines += ["| backend@S | fps | latency ms (mean / p90) | renderer |",
                      "| --- | --- | --- | --- |"]
            for k, e in sec["live"].items():
                lat = e.get("latency_ms") or {}
                lines.append(f"| {k} | {_fmt(e.get('fps', e.get('error')))} | "
                             f"{_fmt(lat.get('mean'))} / {_fmt(lat.get('p90'))} | "
                             f"{e.get('renderer', '-')} |")
    if "raster" in sec:
        lines += ["", f"## Rasterizer (ms per call; auto = {sec['raster'].get('auto')})", "",
                  "| S | " + " | ".join(RASTER_BACKENDS) + " |",
                  "| --- |" + " --- |" * len(RASTER_BACKENDS)]
        for S, row in sec["raster"].items():
            if S == "auto" or not isinstance(row, dict):
                continue
            cells = [_fmt(row[b]["ms"]) if isinstance(row.get(b), dict) and "ms" in row[b]
                     else _fmt(row.get(b)) for b in RASTER_BACKENDS]
            lines.append(f"| {S} | " + " | ".join(cells) + " |")
    errors = {k: v["error"] for k, v in sec.items() if isinstance(v, dict) and "error" in v}
    if errors:
        lines += ["", "## Section errors", ""] + [f"- {k}: {v}" for k, v in errors.items()]
    return "\n".join(lines) + "\n"


def _machine(dev: torch.device) -> dict:
    info = {"platform": platform.platform(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "gpu": None, "gpu_memory_gib": None}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2 ** 30, 1),
                    capability=f"{p.major}.{p.minor}", cudnn=torch.backends.cudnn.version(),
                    bf16=torch.cuda.is_bf16_supported())
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    try:
        import tensorrt  # type: ignore[import-not-found]

        info["tensorrt"] = tensorrt.__version__
    except Exception:  # noqa: BLE001
        info["tensorrt"] = None
    return info


def write_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    """Write ``bench_gpu.json`` and ``bench_gpu.md`` atomically into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report["targets"] = check_targets(report)
    js, md = out_dir / "bench_gpu.json", out_dir / "bench_gpu.md"
    atomic_write_text(js, json.dumps(report, indent=1, default=str))
    atomic_write_text(md, render_markdown(report))
    return js, md


def bench_gpu(out_dir: str | Path = "bench_gpu", subject: str | Path | None = None, *,
              device: str = "auto", run_name: str = "default", video: str | Path | None = None,
              sections=("train", "export", "live", "raster"), presets=DEFAULT_PRESETS,
              sizes=DEFAULT_SIZES, live_sizes=DEFAULT_LIVE_SIZES, live_backends=LIVE_BACKENDS,
              renderer_preset: str = "paper-1024", train_steps: int = 30, warmup_steps: int = 5,
              repeats: int = 20, warmup: int = 5, frames: int = 60, overrides=None,
              estimate: bool = True, engine_builder: Callable | None = None,
              engine_loader: Callable | None = None, raster_mesh=None,
              allow_cpu: bool = False) -> dict:
    """Measure the GPU path (module docstring) and write ``bench_gpu.json`` + ``bench_gpu.md``.

    Args:
        out_dir: folder of the two reports (created).
        subject: captured + trained subject (optional): its renderer and real held-out maps
            for the parity at its resolution, and the ``live`` section.
        device: ``auto`` | ``cuda`` | ``cuda:N`` (``cpu`` only with ``allow_cpu``).
        run_name: the subject's training run.
        video: driving video of the ``live`` section (default the subject's own).
        sections: any of ``train``, ``export`` (export + render latency), ``live``, ``raster``.
        presets / sizes / live_sizes / live_backends: what to measure.
        renderer_preset: architecture of the random-init renderers of ``export``/``render``.
        train_steps, warmup_steps: timed / untimed trainer steps per preset.
        repeats, warmup: timed / untimed runs per latency.
        frames: timed live frames.
        overrides: ``key=value`` config overrides applied to every preset (tests: tiny sizes).
        estimate: add :func:`estimate_train_memory` to each preset.
        engine_builder, engine_loader: TensorRT stand-ins (see :func:`bench_renderers`).
        raster_mesh: (verts, faces) instead of the Anny body.
        allow_cpu: run without CUDA (the code path on the CPU, for tests).

    Returns:
        the report dict (also written): ``date``, ``device``, ``machine``, ``sections``,
        ``targets``, ``json`` / ``markdown`` paths.

    Raises:
        GpuRequiredError: no CUDA device and not ``allow_cpu`` (nothing is written).
    """
    if not allow_cpu and (not torch.cuda.is_available() or str(device) == "cpu"):
        raise GpuRequiredError(
            "ram-avatar bench gpu needs a CUDA GPU (PyTorch sees none: run `ram-avatar doctor`). "
            "On a GPU machine it measures and writes bench_gpu.json + bench_gpu.md:\n"
            + measurement_plan())
    dev = resolve_device(device)
    unknown = set(sections) - {"train", "export", "live", "raster"}
    if unknown:
        raise RamAvatarError(f"unknown bench gpu sections {sorted(unknown)}; use train, export, "
                             "live, raster")
    out = Path(out_dir)
    subject = Path(subject) if subject is not None else None
    report: dict = {
        "benchmark": "ram-avatar bench gpu",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(dev), "machine": _machine(dev), "subject": str(subject) if subject else None,
        "settings": {"presets": list(presets), "sizes": list(sizes), "live_sizes": list(live_sizes),
                     "renderer_preset": renderer_preset, "train_steps": train_steps,
                     "warmup_steps": warmup_steps, "repeats": repeats, "warmup": warmup,
                     "frames": frames, "overrides": overrides},
        "sections": {},
    }
    if dev.type != "cuda":
        report["note"] = "CPU run of the benchmark's code path (allow_cpu): not GPU figures"
    sec = report["sections"]
    with tempfile.TemporaryDirectory(prefix="ram_avatar_bench_gpu_") as tmp:
        work = Path(tmp)
        if "train" in sections:
            sec["train"] = {}
            for p in presets:
                try:
                    sec["train"][p] = bench_train(p, dev, work, steps=train_steps,
                                                  warmup_steps=warmup_steps, overrides=overrides,
                                                  estimate=estimate)
                except Exception as exc:  # noqa: BLE001
                    log.exception("bench gpu train %s", p)
                    sec["train"][p] = {"error": _err(exc)}
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                write_report(report, out)
        if "export" in sections:
            try:
                sec["export"], sec["render"] = bench_renderers(
                    sizes, dev, work, preset=renderer_preset, subject=subject, run_name=run_name,
                    repeats=repeats, warmup=warmup, engine_builder=engine_builder,
                    engine_loader=engine_loader, overrides=overrides)
            except Exception as exc:  # noqa: BLE001
                log.exception("bench gpu export")
                sec["export"] = {"error": _err(exc)}
            write_report(report, out)
        if "live" in sections:
            if subject is None:
                sec["live"] = {"skipped": "needs a captured, trained and exported subject: "
                                          "ram-avatar bench gpu SUBJECT"}
            else:
                sec["live"] = bench_live_section(subject, live_sizes, live_backends, dev, frames,
                                                 Path(video) if video else None, run_name)
            write_report(report, out)
        if "raster" in sections:
            try:
                sec["raster"] = bench_raster(sizes, dev, repeats=repeats, warmup=min(warmup, 3),
                                             mesh=raster_mesh)
            except Exception as exc:  # noqa: BLE001
                log.exception("bench gpu raster")
                sec["raster"] = {"error": _err(exc)}
    js, md = write_report(report, out)
    report["json"], report["markdown"] = str(js), str(md)
    return report
