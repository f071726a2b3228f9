"""TensorRT engine build (optional extra ``ram-avatar-studio[tensorrt]``).

Written against the TensorRT 10 Python API: ``trt.Builder`` -> network from ``trt.OnnxParser``
(explicit batch, the only mode in TensorRT 10) -> one optimisation profile covering every
dynamic input -> ``BuilderFlag.FP16`` -> ``build_serialized_network`` -> file.

Running an engine is not done here: the one runner is
:class:`ram_avatar.runtime.trt.TensorRTEngine` (the runtime may not import ``exporters``), also
available here under its former name ``TensorRTRunner``; :func:`import_tensorrt` is the
runtime's too. ``build_engine`` is registered as the ``tensorrt`` entry point of the group
``ram_avatar.engine_builders`` (``ram-avatar bench gpu`` finds it without importing exporters).

Unmeasured: TensorRT cannot be installed on the development machines (no NVIDIA GPU), so this
module is exercised only on a GPU machine; there ONNX Runtime's CUDA/TensorRT providers
(:class:`ram_avatar.runtime.engines.OnnxRunner`) are the portable alternative. Engines are
specific to the GPU model and TensorRT version that built them.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from ram_avatar.errors import RamAvatarError
from ram_avatar.runtime.trt import TensorRTEngine, import_tensorrt
from ram_avatar.utils import atomic_path

log = logging.getLogger(__name__)

__all__ = ["build_engine", "TensorRTRunner", "import_tensorrt"]

#: the one TensorRT runner, under the name this module used to define it by
TensorRTRunner = TensorRTEngine


def _logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, fp16: bool = True,
                 min_batch: int = 1, opt_batch: int = 1, max_batch: int = 4,
                 workspace_gb: float = 4.0,
                 shapes: Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
                 | None = None) -> dict[str, Any]:
    """Build a TensorRT engine from an ONNX file and write it atomically.

    Args:
        onnx_path: model exported by :func:`exporters.onnx_export.export_onnx`.
        engine_path: destination ``.engine`` / ``.plan`` file.
        fp16: allow FP16 kernels (``BuilderFlag.FP16``); skipped with a warning when the GPU has
            no fast FP16.
        min_batch, opt_batch, max_batch: optimisation profile for a dynamic axis 0 of every
            input (the live app runs batch 1).
        workspace_gb: builder workspace memory pool limit in GiB.
        shapes: optional explicit (min, opt, max) shape per input name, for inputs with other
            dynamic axes; overrides the batch profile for that input.

    Returns:
        report dict: engine path, TensorRT version, fp16, inputs (name, min/opt/max shapes),
        size_bytes, build_seconds.

    Raises:
        RamAvatarError: TensorRT missing, ONNX file missing or unparsable, a dynamic axis other
            than batch without ``shapes``, or the build failed.

    Unmeasured on the CPU-only development machines.
    """
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise RamAvatarError(f"ONNX file {onnx_path} does not exist; run `ram-avatar export` first")
    if not (1 <= min_batch <= opt_batch <= max_batch):
        raise RamAvatarError(f"batch profile must satisfy 1 <= min <= opt <= max, got "
                             f"{min_batch}, {opt_batch}, {max_batch}")
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is implicit in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RamAvatarError(f"TensorRT could not parse {onnx_path}: " + "; ".join(errs))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        if builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        else:
            log.warning("this GPU has no fast FP16; building an FP32 engine")
            fp16 = False

    profile = builder.create_optimization_profile()
    profile_report = []
    need_profile = False
    for i in range(network.num_inputs):
        t = network.get_input(i)
        dims = tuple(int(d) for d in t.shape)
        if shapes is not None and t.name in shapes:
            lo, opt, hi = (tuple(int(v) for v in s) for s in shapes[t.name])
        else:
            if any(d < 0 for d in dims[1:]):
                raise RamAvatarError(f"input {t.name} has dynamic axes {dims} besides batch; pass "
                                     "shapes={name: (min, opt, max)} for it")
            rest = dims[1:]
            lo, opt, hi = ((min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))
            if dims and dims[0] >= 0:  # static batch: the profile must equal it
                lo = opt = hi = dims
        need_profile = need_profile or any(d < 0 for d in dims)
        profile.set_shape(t.name, lo, opt, hi)
        profile_report.append({"name": t.name, "min": list(lo), "opt": list(opt), "max": list(hi)})
    if need_profile:
        config.add_optimization_profile(profile)

    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RamAvatarError("TensorRT engine build failed (see the TensorRT log above); try "
                             "fp16=False, a larger workspace_gb or a newer TensorRT")
    build_s = time.perf_counter() - t0
    engine_path = Path(engine_path)
    with atomic_path(engine_path) as tmp:
        with open(tmp, "wb") as f:
            f.write(memoryview(serialized))
    report = {
        "engine_path": str(engine_path),
        "onnx_path": str(onnx_path),
        "tensorrt_version": trt.__version__,
        "fp16": bool(fp16),
        "workspace_gb": workspace_gb,
        "inputs": profile_report,
        "size_bytes": engine_path.stat().st_size,
        "build_seconds": round(build_s, 1),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    log.info("TensorRT engine written to %s (%.1f s)", engine_path, build_s)
    return report
