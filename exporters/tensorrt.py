"""TensorRT engine build and runner (optional extra ``ram-avatar-studio[tensorrt]``).

Written against the TensorRT 10 Python API: ``trt.Builder`` -> network from ``trt.OnnxParser``
(explicit batch, the only mode in TensorRT 10) -> one optimisation profile covering every
dynamic input -> ``BuilderFlag.FP16`` -> ``build_serialized_network`` -> file; the runner uses
named I/O tensors (``set_input_shape``, ``set_tensor_address``) and ``execute_async_v3`` on the
current torch CUDA stream, with torch CUDA tensors as buffers.

Unmeasured: TensorRT cannot be installed on the development machines (no NVIDIA GPU), so this
module is exercised only on a GPU machine; there ONNX Runtime's CUDA/TensorRT providers
(:class:`exporters.onnx_export.OnnxRunner`) are the portable alternative. Engines are specific
to the GPU model and TensorRT version that built them.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from ram_avatar.errors import RamAvatarError
from ram_avatar.utils import atomic_path

log = logging.getLogger(__name__)

__all__ = ["build_engine", "TensorRTRunner", "import_tensorrt"]

_INSTALL_HINT = (
    "TensorRT is not installed: pip install 'ram-avatar-studio[tensorrt]' on a machine with an "
    "NVIDIA GPU and a recent driver (TensorRT 10 wheels come from NVIDIA's index via pip). "
    "Without it, run the exported ONNX model with ONNX Runtime (exporters.onnx_export.OnnxRunner,"
    " CUDA or CPU)."
)


def import_tensorrt():
    """Import and return the ``tensorrt`` module.

    Raises:
        RamAvatarError: TensorRT is not installed (message says how to install it).
    """
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as e:
        raise RamAvatarError(_INSTALL_HINT) from e
    major = int(str(getattr(trt, "__version__", "0")).split(".")[0] or 0)
    if major < 10:
        raise RamAvatarError(f"TensorRT {trt.__version__} is too old: this code uses the "
                             "TensorRT 10 API; pip install 'tensorrt>=10'")
    return trt


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


def _torch_dtype(trt, dt) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int8: torch.int8, trt.bool: torch.bool}
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    if dt not in table:
        raise RamAvatarError(f"unsupported TensorRT tensor dtype {dt}")
    return table[dt]


class TensorRTRunner:
    """Run a serialized TensorRT 10 engine on torch CUDA tensors.

    Args:
        engine_path: file written by :func:`build_engine` (same GPU model and TensorRT version).
        device: CUDA device (``"cuda"``, ``"cuda:1"``, or a torch.device).

    Call: ``runner({"uv": tensor, ...}) -> {"rgb": tensor, ...}``: inputs are moved/cast to the
    engine's device and dtypes; outputs are new CUDA tensors, produced asynchronously on the
    current torch CUDA stream (later torch work on that stream is ordered after them; call
    ``torch.cuda.synchronize()`` before timing). Unmeasured on the CPU-only development machines.

    Raises:
        RamAvatarError: TensorRT missing, no CUDA device, unreadable engine, wrong input names.
    """

    def __init__(self, engine_path: str | os.PathLike, device: str | torch.device = "cuda"):
        trt = import_tensorrt()
        self.trt = trt
        if not torch.cuda.is_available():
            raise RamAvatarError("TensorRTRunner needs a CUDA GPU; use OnnxRunner on CPU")
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise RamAvatarError(f"TensorRTRunner runs on CUDA devices, got {self.device}")
        path = Path(engine_path)
        if not path.is_file():
            raise RamAvatarError(f"TensorRT engine {path} does not exist; build it with "
                                 "`ram-avatar export --tensorrt`")
        self.logger = _logger(trt)
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(self.logger)
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise RamAvatarError(f"could not deserialize {path}: it was built for another GPU "
                                     "or TensorRT version; rebuild it on this machine")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names
                            if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [n for n in self.input_names if n not in inputs]
        extra = [n for n in inputs if n not in self.input_names]
        if missing or extra:
            raise RamAvatarError(f"TensorRT engine inputs missing {missing}, unknown {extra}; "
                                 f"expected {self.input_names}")
        keep = []
        for n in self.input_names:
            t = torch.as_tensor(inputs[n]).to(self.device, self.dtypes[n]).contiguous()
            keep.append(t)
            if not self.context.set_input_shape(n, tuple(t.shape)):
                raise RamAvatarError(f"input {n} shape {tuple(t.shape)} is outside the engine's "
                                     "optimisation profile; rebuild with a larger max_batch")
            self.context.set_tensor_address(n, t.data_ptr())
        outputs: dict[str, torch.Tensor] = {}
        for n in self.output_names:
            shape = tuple(self.context.get_tensor_shape(n))
            out = torch.empty(shape, dtype=self.dtypes[n], device=self.device)
            outputs[n] = out
            self.context.set_tensor_address(n, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RamAvatarError("TensorRT execution failed (see the TensorRT log)")
        for t in keep:  # inputs must outlive the asynchronous launch on this stream
            t.record_stream(stream)
        return outputs
