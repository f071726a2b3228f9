"""Inference engines of the runtime: ONNX Runtime session (CPU, CUDA or TensorRT execution
providers). The TensorRT-engine runner lives in ``exporters.tensorrt`` next to its builder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ram_avatar.errors import RamAvatarError

log = logging.getLogger(__name__)


def default_providers() -> list[str]:
    """ONNX Runtime providers in preference order among those available: TensorRT, CUDA, CPU."""
    import onnxruntime as ort

    avail = set(ort.get_available_providers())
    order = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in order if p in avail] or ["CPUExecutionProvider"]


class OnnxRunner:
    """Thin ONNX Runtime session: named inputs in, named numpy outputs out.

    Args:
        path: the .onnx file.
        providers: ONNX Runtime execution providers (names or (name, options) pairs); default
            :func:`default_providers` (TensorRT > CUDA > CPU among those installed). If the
            session cannot be created with GPU providers (e.g. missing CUDA/TensorRT libraries)
            it is retried on CPU with a warning.

    Attributes:
        input_names, output_names, providers (those the session really uses).

    Call: ``runner({"uv": array, ...}) -> {"rgb": array, ...}``; torch tensors are accepted and
    converted (to CPU numpy, to the graph's dtype). GPU timings of this wrapper are unmeasured
    on the development machines (CPU only).
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[Any] | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise RamAvatarError(f"ONNX model {self.path} does not exist; run `ram-avatar export` "
                                 "first")
        provs = list(providers) if providers is not None else default_providers()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=provs)
        except Exception as e:  # noqa: BLE001
            if provs == ["CPUExecutionProvider"]:
                raise RamAvatarError(f"ONNX Runtime cannot load {self.path}: {e}") from e
            log.warning("ONNX Runtime session with %s failed (%s); using CPU", provs, e)
            self.session = ort.InferenceSession(str(self.path), sess_options=opts,
                                                providers=["CPUExecutionProvider"])
        self.providers = self.session.get_providers()
        self._inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_names = list(self._inputs)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._np_types = {n: _ort_type_to_numpy(i.type) for n, i in self._inputs.items()}

    def __call__(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        extra = [n for n in inputs if n not in self._inputs]
        if missing or extra:
            raise RamAvatarError(f"{self.path.name}: inputs missing {missing}, unknown {extra}; "
                                 f"expected {self.input_names}")
        feed = {}
        for n in self.input_names:
            v = inputs[n]
            if isinstance(v, torch.Tensor):
                v = v.detach().cpu().numpy()
            feed[n] = np.ascontiguousarray(np.asarray(v, dtype=self._np_types[n]))
        outs = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, outs))


def _ort_type_to_numpy(t: str):
    table = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
             "tensor(double)": np.float64, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
             "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}
    return table.get(t, np.float32)
