"""The one TensorRT engine runner (optional extra ``ram-avatar-studio[tensorrt]``).

Every user of a TensorRT engine runs it through :class:`TensorRTEngine`: the live runtime and
``drive`` (via :func:`ram_avatar.runtime.engines.load_renderer_engine`), ``ram-avatar bench``
and ``exporters`` (whose :func:`exporters.tensorrt.build_engine` writes the engine to
``<subject>/export/avatar.engine`` and re-exports this runner as ``TensorRTRunner``). It lives
here, in the lowest layer that needs it, because the runtime must not import ``exporters``.
Written against the TensorRT 10 Python API: a
``trt.Runtime`` deserialises the engine; I/O tensors are addressed by name
(``engine.get_tensor_name`` / ``get_tensor_mode``), shapes set with
``context.set_input_shape``, buffers bound with ``context.set_tensor_address`` (torch CUDA
tensors) and the engine launched with ``context.execute_async_v3`` on the current torch CUDA
stream.

Unmeasured: no NVIDIA GPU or TensorRT on the development machines; the code path is complete
and raises clear errors when TensorRT or CUDA is missing. ONNX Runtime (CPU, or its CUDA /
TensorRT execution providers) is the portable alternative.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

import torch

from ram_avatar.errors import RamAvatarError

log = logging.getLogger(__name__)

__all__ = ["TensorRTEngine", "import_tensorrt", "tensorrt_available", "torch_dtype",
           "INSTALL_HINT"]

INSTALL_HINT = (
    "TensorRT is not installed: pip install 'ram-avatar-studio[tensorrt]' on a machine with an "
    "NVIDIA GPU and a recent driver (TensorRT >= 10 wheels come from NVIDIA's index via pip), "
    "then build the engine with `ram-avatar export SUBJECT --tensorrt`. Without TensorRT run the "
    "exported ONNX model with ONNX Runtime (--backend onnx; CPU or CUDA).")


def import_tensorrt():
    """Import and return the ``tensorrt`` module (version 10 or newer).

    Raises:
        RamAvatarError: TensorRT missing or older than 10 (the message says how to install it).
    """
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as e:
        raise RamAvatarError(INSTALL_HINT) from e
    try:
        major = int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        major = 0
    if major < 10:
        raise RamAvatarError(f"TensorRT {getattr(trt, '__version__', '?')} is too old: the runtime "
                             "uses the TensorRT 10 API; pip install 'tensorrt>=10'")
    return trt


def tensorrt_available() -> bool:
    """True when TensorRT >= 10 imports and torch sees a CUDA device."""
    try:
        import_tensorrt()
    except RamAvatarError:
        return False
    return torch.cuda.is_available()


def torch_dtype(trt, dt) -> torch.dtype:
    """The torch dtype of a TensorRT tensor dtype ``dt`` (``trt.float32`` ... ``trt.bfloat16``).

    Raises:
        RamAvatarError: a dtype with no torch counterpart here (e.g. FP8, INT4).
    """
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int8: torch.int8, trt.bool: torch.bool}
    for name, tdt in (("int64", torch.int64), ("bfloat16", torch.bfloat16)):
        if hasattr(trt, name):
            table[getattr(trt, name)] = tdt
    if dt not in table:
        raise RamAvatarError(f"unsupported TensorRT tensor dtype {dt}")
    return table[dt]


class TensorRTEngine:
    """A deserialised TensorRT engine called with named torch tensors.

    Args:
        engine_path: ``.engine`` file written by :func:`exporters.tensorrt.build_engine` (built on
            this GPU model with this TensorRT version).
        device: CUDA device (``"cuda"``, ``"cuda:1"`` or a torch.device).

    Attributes:
        input_names, output_names, input_shapes (name -> engine shape, -1 for dynamic axes).

    Call: ``engine({"uv": tensor, ...}) -> {"rgb": tensor, ...}``; inputs are copied to the
    engine's device and dtype; outputs are CUDA tensors written asynchronously on the current
    torch CUDA stream (synchronise before reading them on the host).

    Raises:
        RamAvatarError: TensorRT or CUDA missing, missing or incompatible engine file, wrong
            input names, or a shape outside the engine's optimisation profile.
    """

    def __init__(self, engine_path: str | os.PathLike, device: str | torch.device = "cuda"):
        trt = import_tensorrt()
        self.trt = trt
        if not torch.cuda.is_available():
            raise RamAvatarError("the TensorRT backend needs a CUDA GPU; use --backend onnx on CPU")
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise RamAvatarError(f"the TensorRT backend runs on CUDA devices, got --device {self.device}")
        path = Path(engine_path)
        if not path.is_file():
            raise RamAvatarError(f"TensorRT engine {path} does not exist; build it on this machine "
                                 "with `ram-avatar export SUBJECT --tensorrt`")
        self.path = path
        self.logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(self.logger)
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise RamAvatarError(f"could not deserialize {path}: it was built for another GPU or "
                                     "TensorRT version; rebuild it with `ram-avatar export --tensorrt`")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self.dtypes = {n: torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.input_shapes = {n: tuple(int(d) for d in self.engine.get_tensor_shape(n))
                             for n in self.input_names}

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [n for n in self.input_names if n not in inputs]
        extra = [n for n in inputs if n not in self.input_names]
        if missing or extra:
            raise RamAvatarError(f"TensorRT engine {self.path.name}: inputs missing {missing}, "
                                 f"unknown {extra}; expected {self.input_names}")
        keep = []
        for n in self.input_names:
            t = torch.as_tensor(inputs[n]).to(self.device, self.dtypes[n], non_blocking=True).contiguous()
            keep.append(t)
            if not self.context.set_input_shape(n, tuple(t.shape)):
                raise RamAvatarError(f"input {n} of shape {tuple(t.shape)} is outside the engine's "
                                     "optimisation profile; rebuild the engine")
            self.context.set_tensor_address(n, t.data_ptr())
        outputs: dict[str, torch.Tensor] = {}
        for n in self.output_names:
            out = torch.empty(tuple(self.context.get_tensor_shape(n)), dtype=self.dtypes[n],
                              device=self.device)
            outputs[n] = out
            self.context.set_tensor_address(n, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RamAvatarError("TensorRT execution failed (see the TensorRT log above)")
        for t in keep:  # the inputs must outlive the asynchronous launch on this stream
            t.record_stream(stream)
        return outputs
