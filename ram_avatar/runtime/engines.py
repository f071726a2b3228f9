"""The one place that loads and runs the avatar's renderer, for every user: the live runtime
and app, ``drive``, ``ram-avatar bench`` and the exporters' parity checks (issue 11, item 5).

Two layers:

* runners, named tensors in and out: :class:`OnnxRunner` (an ONNX Runtime session on the CPU,
  CUDA or TensorRT execution providers) and :class:`ram_avatar.runtime.trt.TensorRTEngine`
  (a serialised TensorRT engine; the one TensorRT runner, ``exporters`` re-exports it);
* renderer engines, the trained avatar behind one interface (:class:`RendererEngine`):
  :class:`OnnxRenderer` (the export in ONNX Runtime), :class:`OpenVinoRenderer` (the same
  export in OpenVINO on the CPU, bfloat16 where the CPU has it), :class:`TorchRenderer` (the
  newest checkpoint of a run, loaded by :meth:`ram_avatar.io.subject.Run.load_renderer`) and
  :class:`TensorRTRenderer` (the engine built by ``export --tensorrt``), chosen by
  :func:`load_renderer_engine`.

Maps in are ``(B, C, S, S)`` float32 tensors named as in :mod:`ram_avatar.models.inputs`;
``engine(maps)`` returns ``rgb (B, 3, S, S)`` float32 in [0, 1] and ``engine.render(maps)``
``(rgb, alpha (B, 1, S, S) or None)``. ``ram_avatar.runtime.avatar_runtime`` re-exports the
engine names it used to define.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch

from ram_avatar.errors import CheckpointError, RamAvatarError
from ram_avatar.io.subject import Subject
from ram_avatar.models.inputs import ALL_INPUTS, BASE_INPUTS
from ram_avatar.runtime import EXPORT_KIND, RENDER_BACKENDS
from ram_avatar.utils import resolve_device

log = logging.getLogger(__name__)

__all__ = ["OnnxRunner", "default_providers", "ort_session_options", "render_threads",
           "ORT_THREADS_ENV", "DEFAULT_ORT_THREADS", "DEFAULT_ORT_GRAPH_LEVEL", "RendererEngine",
           "OnnxRenderer", "OpenVinoRunner", "OpenVinoRenderer", "TorchRenderer",
           "TensorRTRenderer", "load_renderer_engine", "resolve_backend", "to_uint8", "MAP_NAMES",
           "RENDER_BACKENDS", "EXPORT_KIND", "OV_PRECISION_ENV"]

#: the base renderer inputs every renderer reads (models.inputs.BASE_INPUTS)
MAP_NAMES = BASE_INPUTS


def default_providers() -> list[str]:
    """ONNX Runtime providers in preference order among those available: TensorRT, CUDA, CPU."""
    import onnxruntime as ort

    avail = set(ort.get_available_providers())
    order = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in order if p in avail] or ["CPUExecutionProvider"]


#: environment variable overriding :data:`DEFAULT_ORT_THREADS` (an integer >= 0; 0 = ORT's own
#: default, one thread per physical core)
ORT_THREADS_ENV = "RAM_AVATAR_ORT_THREADS"

#: ONNX Runtime intra-op threads of :class:`OnnxRunner` when neither ``threads`` nor
#: ``RAM_AVATAR_ORT_THREADS`` is given; chosen from the measurement in
#: :func:`ort_session_options`' docstring.
DEFAULT_ORT_THREADS = 1

#: graph optimisation level of :class:`OnnxRunner` (``basic`` | ``extended`` | ``all`` |
#: ``disable``), chosen from the same measurement.
DEFAULT_ORT_GRAPH_LEVEL = "all"

_GRAPH_LEVELS = ("disable", "basic", "extended", "all")


def render_threads(threads: int | None = None) -> int:
    """Intra-op threads of the CPU renderer runtimes (ONNX Runtime and OpenVINO).

    Args:
        threads: an explicit count (0 = the runtime's own default, one per physical core), or
            None: ``$RAM_AVATAR_ORT_THREADS`` when set, else :data:`DEFAULT_ORT_THREADS` (the
            measurement in :func:`ort_session_options`).

    Returns:
        the count, >= 0.

    Raises:
        RamAvatarError: a negative count, or a ``RAM_AVATAR_ORT_THREADS`` that is not an
            integer >= 0.
    """
    if threads is None:
        env = os.environ.get(ORT_THREADS_ENV, "").strip()
        if not env:
            return DEFAULT_ORT_THREADS
        try:
            threads = int(env)
        except ValueError:
            threads = -1
        if threads < 0:
            raise RamAvatarError(f"{ORT_THREADS_ENV}={env!r}: expected an integer >= 0 "
                                 "(0 = the runtime's default)")
    if int(threads) < 0:
        raise RamAvatarError(f"renderer thread count must be >= 0, got {threads}")
    return int(threads)


def ort_session_options(graph_level: str | None = None, threads: int | None = None,
                        profile_prefix: str | None = None):
    """``onnxruntime.SessionOptions`` for the renderer: graph optimisation level, intra-op
    thread count, sequential execution (one inter-op thread), optionally with ORT's profiler on.

    The renderer's defaults (:data:`DEFAULT_ORT_GRAPH_LEVEL` ``all``,
    :data:`DEFAULT_ORT_THREADS` 1) come from this measurement: the preset's renderer exported
    as ``ram-avatar export`` does (random weights, frozen texture, 256²), ``session.run``
    median ms, the 6 configurations interleaved (A B C ... A B C, 2 warm-up runs each, then
    rounds of 3 runs), ONNX Runtime 1.32 on the 2-core development machine, sequential
    execution (``/work/exp/ort_profile/measure.py options PRESET``, via
    :func:`ram_avatar.bench_render.compare_ort_options`). The machine was shared: cpu-256 run 2
    at a 1-minute load average of 2.9, run 1 and paper-1024 at 4.2-4.7 (absolute numbers there
    are well above a quiet machine's; the ranking is the point).

    ============  =======  ==================  ==================  ===================
    graph level   threads  cpu-256, run 2      cpu-256, run 1      paper-1024
                           load 2.9, 7x3 runs  load 4.2, 7x3 runs  load 4.4, 5x3 runs
    ============  =======  ==================  ==================  ===================
    basic         1        207 ms (min 201)    322 ms (min 208)    2232 ms (min 1855)
    basic         2        319 ms (min 245)    352 ms (min 310)    2667 ms (min 1821)
    extended      1        205 ms (min 199)    277 ms (min 207)    2106 ms (min 1398)
    extended      2        318 ms (min 298)    468 ms (min 281)    2655 ms (min 1394)
    all           1        194 ms (min 189)    290 ms (min 193)    1981 ms (min 1239)
    all           2        298 ms (min 262)    458 ms (min 259)    2479 ms (min 1602)
    ============  =======  ==================  ==================  ===================

    One intra-op thread wins at every level on both presets (two threads contend with the
    other processes for the 2 cores; in the live pipeline tracking, fitting and the maps run
    in their own threads next to the renderer, which is the same situation), so 1 is the
    default; on an otherwise idle machine with more cores set ``RAM_AVATAR_ORT_THREADS`` (0 =
    ORT's default, one per physical core). ``all`` is kept: best median in the quieter cpu-256
    run and on paper-1024 (``extended`` is within the noise in the loaded cpu-256 run).

    Args:
        graph_level: ``disable`` | ``basic`` | ``extended`` | ``all``
            (``GraphOptimizationLevel.ORT_DISABLE_ALL`` ... ``ORT_ENABLE_ALL``); None:
            :data:`DEFAULT_ORT_GRAPH_LEVEL`.
        threads: ``intra_op_num_threads`` (0 = ONNX Runtime's default, one per physical core);
            None: ``$RAM_AVATAR_ORT_THREADS`` when set, else :data:`DEFAULT_ORT_THREADS`.
        profile_prefix: when given, ``enable_profiling`` with this file prefix (ORT writes
            ``<prefix>_<date>.json``, a Chrome trace; ``session.end_profiling()`` returns its path).

    Returns:
        ``onnxruntime.SessionOptions``.

    Raises:
        RamAvatarError: unknown ``graph_level``, a negative thread count, or a
            ``RAM_AVATAR_ORT_THREADS`` that is not an integer >= 0.
    """
    import onnxruntime as ort

    level = DEFAULT_ORT_GRAPH_LEVEL if graph_level is None else str(graph_level).lower()
    if level not in _GRAPH_LEVELS:
        raise RamAvatarError(f"ONNX Runtime graph level must be one of {_GRAPH_LEVELS}, "
                             f"got {graph_level!r}")
    threads = render_threads(threads)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile_prefix)
    return opts


class OnnxRunner:
    """Thin ONNX Runtime session: named inputs in, named numpy outputs out.

    Args:
        path: the .onnx file.
        providers: ONNX Runtime execution providers (names or (name, options) pairs); default
            :func:`default_providers` (TensorRT > CUDA > CPU among those installed). If the
            session cannot be created with GPU providers (e.g. missing CUDA/TensorRT libraries)
            it is retried on CPU with a warning.
        threads: ONNX Runtime intra-op threads (:func:`ort_session_options`: None =
            ``$RAM_AVATAR_ORT_THREADS`` or the measured :data:`DEFAULT_ORT_THREADS`; 0 = ORT's
            default).
        graph_level: graph optimisation level (None = the measured
            :data:`DEFAULT_ORT_GRAPH_LEVEL`).
        profile_prefix: turn ORT's profiler on (:func:`ort_session_options`).

    Attributes:
        input_names, output_names, providers (those the session really uses).

    Call: ``runner({"uv": array, ...}) -> {"rgb": array, ...}``; torch tensors are accepted and
    converted (to CPU numpy, to the graph's dtype). GPU timings of this wrapper are unmeasured
    on the development machines (CPU only).
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[Any] | None = None,
                 threads: int | None = None, graph_level: str | None = None,
                 profile_prefix: str | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise RamAvatarError(f"ONNX model {self.path} does not exist; run `ram-avatar export` "
                                 "first")
        provs = list(providers) if providers is not None else default_providers()
        opts = ort_session_options(graph_level, threads, profile_prefix)
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
        feed = _numpy_feed(self.path, inputs, self.input_names, self._np_types)
        outs = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, outs))


def _numpy_feed(path: Path, inputs: Mapping[str, Any], names: Sequence[str],
                dtypes: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The graph's inputs ``names`` from ``inputs`` (torch tensors or arrays) as contiguous
    numpy arrays of ``dtypes[name]``.

    Raises:
        RamAvatarError: an input missing, or one the graph does not have.
    """
    missing = [n for n in names if n not in inputs]
    extra = [n for n in inputs if n not in names]
    if missing or extra:
        raise RamAvatarError(f"{Path(path).name}: inputs missing {missing}, unknown {extra}; "
                             f"expected {list(names)}")
    feed = {}
    for n in names:
        v = inputs[n]
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().numpy()
        feed[n] = np.ascontiguousarray(np.asarray(v, dtype=dtypes[n]))
    return feed


def _ort_type_to_numpy(t: str):
    table = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
             "tensor(double)": np.float64, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
             "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}
    return table.get(t, np.float32)


# --------------------------------------------------------------------------------------------
# renderer engines: maps (B, C, S, S) float32 -> rgb (B, 3, S, S) float32 in [0, 1]


class RendererEngine(Protocol):
    """What every renderer engine offers (:class:`OnnxRenderer`, :class:`TorchRenderer`,
    :class:`TensorRTRenderer`).

    Attributes:
        name: ``onnx`` | ``openvino`` | ``torch`` | ``tensorrt``.
        resolution: S, the side of the maps and of the frame, pixels.
        providers: where it runs (ONNX Runtime providers, ``torch:cpu``, ``tensorrt:cuda``).
        input_names: the maps it reads (:mod:`ram_avatar.models.inputs` names, input order).
        has_alpha: whether :meth:`render` returns the renderer's alpha.
        run_name: the training run it comes from (an export's ``export.json`` names it), or
            None when unknown (a timing-only renderer).
        expand_offset: ``model.expand_offset`` (metres) its expanded-mesh maps were trained
            with, or None when unknown.
    """

    name: str
    resolution: int
    providers: list[str]
    input_names: tuple[str, ...]
    has_alpha: bool
    run_name: str | None
    expand_offset: float | None

    def __call__(self, maps: dict[str, torch.Tensor]) -> np.ndarray:
        """maps (B, C, S, S) float32 -> rgb (B, 3, S, S) float32 in [0, 1]."""

    def render(self, maps: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray | None]:
        """maps -> (rgb (B, 3, S, S), alpha (B, 1, S, S) or None), float32 in [0, 1]."""


#: ``expand_offset`` of an export whose export.json does not record it (RendererConfig's default)
DEFAULT_EXPAND_OFFSET = 0.01


def _manifest_fields(manifest: Mapping[str, Any] | None) -> tuple[str | None, float | None]:
    """(run name, expand_offset) recorded in an export manifest (export.json), None when absent."""
    if not manifest:
        return None, None
    return manifest.get("run"), float(manifest.get("expand_offset", DEFAULT_EXPAND_OFFSET))


class OnnxRenderer:
    """The exported renderer in ONNX Runtime.

    Args:
        path: ``avatar.onnx`` (inputs named as in :mod:`ram_avatar.models.inputs`, with a
            fixed-size ``body_mask``; outputs ``rgb`` and, for exports since issue 13, ``alpha``).
        device: ``cpu`` uses the CPU provider only; ``cuda`` prefers TensorRT > CUDA > CPU
            providers among those installed (:func:`default_providers`).
        manifest: the export's ``export.json`` (gives :attr:`run_name` and
            :attr:`expand_offset`); None for a file without one (both None then).

    Raises:
        RamAvatarError: missing or unloadable file, or not an avatar renderer of this version
            (unknown inputs, no fixed-size ``body_mask``, no ``rgb`` output).
    """

    name = "onnx"

    def __init__(self, path: str | Path, device: torch.device,
                 manifest: Mapping[str, Any] | None = None):
        from ram_avatar.runtime.engines import OnnxRunner, default_providers

        providers = ["CPUExecutionProvider"] if device.type == "cpu" else default_providers()
        self.runner = OnnxRunner(path, providers=providers)
        self.providers = list(self.runner.providers)
        names = self.runner.input_names
        shape = self.runner.session.get_inputs()[names.index("body_mask")].shape \
            if "body_mask" in names else None
        self.resolution = _check_export_interface(path, names, self.runner.output_names, shape)
        self.input_names = tuple(names)
        self.path = Path(path)
        #: the export has the renderer's ``alpha`` output (exports before issue 13 lack it)
        self.has_alpha = "alpha" in self.runner.output_names
        self.run_name, self.expand_offset = _manifest_fields(manifest)

    def __call__(self, maps: dict[str, torch.Tensor]) -> np.ndarray:
        return self.runner({k: maps[k] for k in self.input_names})["rgb"]

    def render(self, maps: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray | None]:
        """(rgb (B,3,S,S), alpha (B,1,S,S) or None without the ``alpha`` output), float32
        in [0, 1] (one ONNX Runtime run)."""
        out = self.runner({k: maps[k] for k in self.input_names})
        return out["rgb"], out.get("alpha")


def _check_export_interface(path, input_names: Sequence[str], output_names: Sequence[str],
                            mask_shape: Sequence[Any] | None) -> int:
    """The side S of an exported renderer, after checking that it is one of this version:
    inputs named as in :mod:`ram_avatar.models.inputs`, a fixed-size ``body_mask``
    (``mask_shape`` its shape, None when absent) and an ``rgb`` output.

    Raises:
        RamAvatarError: any of these is missing (the message says to re-export).
    """
    unknown = [n for n in input_names if n not in ALL_INPUTS]
    if (unknown or mask_shape is None or not isinstance(mask_shape[-1], int)
            or "rgb" not in output_names):
        raise RamAvatarError(f"{path} is not an avatar renderer of this version (inputs "
                             f"{list(input_names)}, outputs {list(output_names)}); re-run "
                             "`ram-avatar export`")
    return int(mask_shape[-1])


#: environment variable choosing :class:`OpenVinoRenderer`'s precision (``auto`` | ``f32`` |
#: ``bf16``; default ``auto``)
OV_PRECISION_ENV = "RAM_AVATAR_OV_PRECISION"
_OV_PRECISIONS = ("auto", "f32", "bf16")


class OpenVinoRunner:
    """An ONNX file in Intel's OpenVINO runtime on the CPU: named inputs in, named float32
    numpy outputs out, like :class:`OnnxRunner` (``pip install 'ram-avatar-studio[openvino]'``).

    The graph is compiled for a static batch, one compiled model per batch size seen (compiled
    on first use, about 1 s for the ``cpu-256`` renderer): the exports have a dynamic batch axis
    and OpenVINO's dynamic-shape kernels are slower (measured in :class:`OpenVinoRenderer`).

    Args:
        path: the .onnx file; every input dimension but the first (batch) must be static.
        precision: ``auto`` (bfloat16 where the CPU reports native ``BF16`` in OpenVINO's
            ``OPTIMIZATION_CAPABILITIES``: AVX512-BF16 / AMX, else float32), ``f32`` or
            ``bf16`` (``INFERENCE_PRECISION_HINT``; bfloat16 runs the convolutions and matrix
            products in bfloat16 with float32 accumulation); None: ``$RAM_AVATAR_OV_PRECISION``
            or ``auto``.
        threads: ``INFERENCE_NUM_THREADS`` (:func:`render_threads`: None = the measured
            default of the renderer runtimes, 1; 0 = OpenVINO's default).
        perf_count: compile with OpenVINO's per-node profiling on (``PERF_COUNT``; read
            ``last_request.profiling_info`` after a call).

    Attributes:
        precision: the precision in use (``f32`` | ``bf16``); input_names, output_names;
        item_shapes: input name -> shape without the batch axis; last_request: the infer
        request of the last call (its output tensors are overwritten by the next call).

    Raises:
        RamAvatarError: OpenVINO not installed, an unknown precision, ``bf16`` on a CPU
            without it, or a missing / unreadable model, or one with dynamic sizes besides
            the batch.
    """

    def __init__(self, path: str | os.PathLike, precision: str | None = None,
                 threads: int | None = None, perf_count: bool = False):
        try:
            import openvino as ov
        except ImportError as e:
            raise RamAvatarError("--backend openvino needs OpenVINO: pip install "
                                 "'ram-avatar-studio[openvino]' (or use --backend onnx)") from e
        self.path = Path(path)
        if not self.path.is_file():
            raise RamAvatarError(f"ONNX model {self.path} does not exist; run `ram-avatar export` "
                                 "first")
        self.core = ov.Core()
        caps = set(self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        prec = (precision or os.environ.get(OV_PRECISION_ENV, "") or "auto").strip().lower()
        if prec not in _OV_PRECISIONS:
            raise RamAvatarError(f"OpenVINO precision must be one of {_OV_PRECISIONS} "
                                 f"(${OV_PRECISION_ENV}), got {prec!r}")
        if prec == "auto":
            prec = "bf16" if "BF16" in caps else "f32"
        elif prec == "bf16" and "BF16" not in caps:
            raise RamAvatarError("this CPU has no native bfloat16 (OpenVINO capabilities "
                                 f"{sorted(caps)}); use {OV_PRECISION_ENV}=f32 or auto")
        self.precision = prec
        self.threads = render_threads(threads)
        try:
            self.model = self.core.read_model(str(self.path))
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses
            raise RamAvatarError(f"OpenVINO cannot read {self.path}: {e}") from e
        self.input_names = [i.get_any_name() for i in self.model.inputs]
        self.output_names = [o.get_any_name() for o in self.model.outputs]
        self.item_shapes: dict[str, list[int]] = {}
        for i in self.model.inputs:
            shape = i.get_partial_shape()
            dims = list(shape)[1:] if shape.rank.is_static else []
            if shape.rank.is_dynamic or any(d.is_dynamic for d in dims):
                raise RamAvatarError(f"{self.path}: input {i.get_any_name()!r} has a dynamic size "
                                     f"besides the batch ({shape}); re-run `ram-avatar export`")
            self.item_shapes[i.get_any_name()] = [int(d.get_length()) for d in dims]
        self.perf_count = bool(perf_count)
        self.last_request = None
        self._requests: dict[int, Any] = {}   # batch -> request of its compiled model

    def _request(self, batch: int):
        """The infer request of the model compiled for a static ``batch`` (compiled once)."""
        req = self._requests.get(batch)
        if req is None:
            model = self.model.clone()
            model.reshape({n: [batch] + s for n, s in self.item_shapes.items()})
            compiled = self.core.compile_model(model, "CPU", {
                "INFERENCE_PRECISION_HINT": self.precision,
                "INFERENCE_NUM_THREADS": self.threads,
                "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": self.perf_count})
            req = self._requests[batch] = compiled.create_infer_request()
        return req

    def __call__(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Named inputs (torch or numpy, batch first) -> every output, float32 numpy (copies).

        Raises:
            RamAvatarError: inputs missing or unknown.
        """
        feed = _numpy_feed(self.path, inputs, self.input_names,
                           dict.fromkeys(self.input_names, np.float32))
        req = self.last_request = self._request(int(feed[self.input_names[0]].shape[0]))
        req.infer(feed)
        return {n: np.array(req.get_tensor(n).data, dtype=np.float32) for n in self.output_names}


class OpenVinoRenderer:
    """The exported renderer (``avatar.onnx``, the file :class:`OnnxRenderer` runs) in
    OpenVINO on the CPU (:class:`OpenVinoRunner`).

    Why a second CPU runtime: OpenVINO fuses the renderer's memory-bound operations
    (transposes, resizes, element-wise chains) into its convolutions and, on CPUs with native
    bfloat16 (AVX512-BF16 / AMX), runs the convolutions in bfloat16. Measured on the 2-core
    development machine (AMX), the trained ``cpu-256`` export on 12 real live frames, 1 thread,
    the four interleaved, ``session.run`` / ``infer`` median (``/work/exp/s22/ovcmp.py``):
    ONNX Runtime 166 ms, OpenVINO float32 136 ms and bfloat16 103 ms with the export's dynamic
    batch, **bfloat16 with a static batch 77 ms** (max |rgb - ONNX Runtime| 3.4e-3, PSNR 76 dB
    against it). ``paper-1024`` at 1024² (random weights, 1 thread, 8 runs each, interleaved):
    ONNX Runtime 13.5 s, OpenVINO float32 10.7 s, bfloat16 4.3 s with the dynamic batch and
    **3.5 s with a static batch** (3.9x faster; 40 dB from ONNX Runtime's output, max |diff|
    0.14, on random weights).

    Args:
        path: ``avatar.onnx`` (see :class:`OnnxRenderer`).
        device: must be the CPU (OpenVINO's GPU plugin is for Intel GPUs; on NVIDIA use
            ``--backend onnx`` or ``tensorrt``).
        manifest: the export's ``export.json`` (see :class:`OnnxRenderer`).
        precision, threads: see :class:`OpenVinoRunner`.

    Attributes:
        precision: the precision in use (``f32`` | ``bf16``); threads.

    Raises:
        RamAvatarError: a non-CPU device, or as :class:`OpenVinoRunner`, or not an avatar
            renderer of this version.
    """

    name = "openvino"

    def __init__(self, path: str | Path, device: torch.device,
                 manifest: Mapping[str, Any] | None = None, precision: str | None = None,
                 threads: int | None = None):
        if device.type != "cpu":
            raise RamAvatarError(f"--backend openvino runs on the CPU, not {device}; on an NVIDIA "
                                 "GPU use --backend onnx or tensorrt")
        self.runner = OpenVinoRunner(path, precision, threads)
        self.precision, self.threads = self.runner.precision, self.runner.threads
        names, outputs = self.runner.input_names, self.runner.output_names
        shape = self.runner.item_shapes.get("body_mask")
        self.resolution = _check_export_interface(path, names, outputs, shape)
        self.input_names = tuple(names)
        self.has_alpha = "alpha" in outputs
        self.providers = [f"openvino:CPU:{self.precision}"]
        self.path = Path(path)
        self.run_name, self.expand_offset = _manifest_fields(manifest)

    def __call__(self, maps: dict[str, torch.Tensor]) -> np.ndarray:
        return self.runner({k: maps[k] for k in self.input_names})["rgb"]

    def render(self, maps: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray | None]:
        """(rgb (B,3,S,S), alpha (B,1,S,S) or None without the ``alpha`` output), float32
        in [0, 1] (one OpenVINO inference)."""
        out = self.runner({k: maps[k] for k in self.input_names})
        return out["rgb"], out.get("alpha")


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 (rounded)."""
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def _model_inputs(model) -> tuple[str, ...]:
    """Inputs an AvatarRenderer reads (``input_names()`` of newer models, else the 4 base maps)."""
    names = getattr(model, "input_names", None)
    return tuple(names()) if callable(names) else MAP_NAMES


class TorchRenderer:
    """The latest checkpoint of a training run, evaluated in torch (mean style code).

    Loaded by :meth:`ram_avatar.io.subject.Run.load_renderer` (the run's config.yaml ``model``
    section, strictly, and the newest checkpoint), without importing the training package.
    Inference runs with the thread count torch had when the engine was made (the live runtime
    runs its other stages on one thread, the convolutions use every core).

    Args:
        subject_dir: the subject directory.
        run_name: the training run.
        device: torch device of the model.

    Raises:
        CheckpointError: no run / checkpoint, tensors that do not match the config, or a run
            trained on another capture; RunConfigError: a bad config.yaml.
    """

    name = "torch"

    def __init__(self, subject_dir: str | Path, run_name: str, device: torch.device):
        run = Subject(subject_dir).run(run_name)
        if run.latest_checkpoint() is None or not run.config_path.is_file():
            raise CheckpointError(f"no trained renderer in {run.dir}: run `ram-avatar train {subject_dir}` "
                                  "first, or use --backend onnx with an exported avatar")
        model, info = run.load_renderer()
        config, ckpt = model.config, info["checkpoint"]
        self.model = model.to(device).eval()
        self.device = device
        self.threads = torch.get_num_threads()  # the runtime runs its other stages on 1 thread
        self.resolution = int(config.resolution)
        self.input_names = _model_inputs(model)
        self.providers = [f"torch:{device}"]
        self.checkpoint = ckpt
        self.has_alpha = True
        self.run_name = run_name
        self.expand_offset = float(config.expand_offset)

    @classmethod
    def from_model(cls, model, device: torch.device | str = "cpu") -> "TorchRenderer":
        """Wrap an in-memory :class:`AvatarRenderer` (e.g. a timing-only random one)."""
        self = cls.__new__(cls)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.threads = torch.get_num_threads()
        self.resolution = int(model.config.resolution)
        self.input_names = _model_inputs(model)
        self.providers = [f"torch:{self.device}"]
        self.checkpoint = None
        self.has_alpha = True
        self.run_name = None
        self.expand_offset = float(getattr(model.config, "expand_offset", DEFAULT_EXPAND_OFFSET))
        return self

    @torch.inference_mode()
    def _forward(self, maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's output dict on ``maps`` (mean style code), with this engine's threads."""
        before = torch.get_num_threads()
        torch.set_num_threads(getattr(self, "threads", before))  # convolutions use every core
        try:
            feed = {k: (maps[k].to(self.device) if k in self.input_names else None) for k in MAP_NAMES}
            feed.update({k: maps[k].to(self.device) for k in self.input_names if k not in MAP_NAMES})
            return self.model(**feed, frame_index=None)
        finally:
            torch.set_num_threads(before)

    def __call__(self, maps: dict[str, torch.Tensor]) -> np.ndarray:
        return self._forward(maps)["rgb"].float().cpu().numpy()

    def render(self, maps: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """(rgb (B,3,S,S), alpha (B,1,S,S)) float32 in [0, 1] (one forward pass)."""
        out = self._forward(maps)
        return out["rgb"].float().cpu().numpy(), out["alpha"].float().cpu().numpy()


class TensorRTRenderer:
    """The renderer as a TensorRT engine (``export/avatar.engine``, run by the one runner
    :class:`ram_avatar.runtime.trt.TensorRTEngine`); CUDA only, unmeasured here.

    Args:
        path: the ``.engine`` file.
        device: a CUDA device.
        manifest: the export's ``export.json`` (see :class:`OnnxRenderer`).

    Raises:
        RamAvatarError: no CUDA device, TensorRT missing, unreadable engine, or an engine
            without a fixed-size ``body_mask`` input.
    """

    name = "tensorrt"

    def __init__(self, path: str | Path, device: torch.device,
                 manifest: Mapping[str, Any] | None = None):
        from ram_avatar.runtime.trt import TensorRTEngine

        if device.type != "cuda":
            raise RamAvatarError("--backend tensorrt needs --device cuda (an NVIDIA GPU)")
        self.engine = TensorRTEngine(path, device)
        shape = self.engine.input_shapes.get("body_mask")
        if shape is None or shape[-1] <= 0:
            raise RamAvatarError(f"{path} has no fixed-size 'body_mask' input; rebuild it with "
                                 "`ram-avatar export --tensorrt`")
        self.resolution = int(shape[-1])
        self.input_names = tuple(self.engine.input_names)
        self.providers = [f"tensorrt:{device}"]
        self.device = device
        self.has_alpha = "alpha" in self.engine.output_names
        self.run_name, self.expand_offset = _manifest_fields(manifest)

    def __call__(self, maps: dict[str, torch.Tensor]) -> np.ndarray:
        out = self.engine({k: maps[k] for k in self.input_names})["rgb"]
        return out.float().cpu().numpy()  # .cpu() synchronises the stream

    def render(self, maps: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray | None]:
        """(rgb (B,3,S,S), alpha (B,1,S,S) or None) float32 (one engine run)."""
        out = self.engine({k: maps[k] for k in self.input_names})
        a = out.get("alpha")
        return out["rgb"].float().cpu().numpy(), None if a is None else a.float().cpu().numpy()


def resolve_backend(backend: str, device: torch.device | str = "cpu") -> str:
    """The renderer backend ``auto`` stands for: ``openvino`` on the CPU when OpenVINO is
    installed (measured faster than ONNX Runtime on the same export: :class:`OpenVinoRenderer`),
    else ``onnx`` (on a GPU: ONNX Runtime's TensorRT / CUDA providers). Other names pass
    through unchanged (:func:`load_renderer_engine` checks them)."""
    if backend != "auto":
        return backend
    import importlib.util

    dev = resolve_device(device)
    return "openvino" if dev.type == "cpu" and importlib.util.find_spec("openvino") else "onnx"


def load_renderer_engine(subject_dir: str | Path, backend: str = "onnx",
                         device: torch.device | str = "cpu", run_name: str = "default",
                         resolution: int | None = None, model_path: str | Path | None = None):
    """The avatar's renderer behind one call signature: the one engine loader of the live
    runtime, the app, ``drive`` and ``ram-avatar bench`` (:class:`RendererEngine`).

    Args:
        subject_dir: the subject directory.
        backend: ``onnx`` | ``openvino`` | ``torch`` | ``tensorrt`` (:data:`RENDER_BACKENDS`), or
            ``auto`` (:func:`resolve_backend`).
        device: torch device (``cuda`` selects GPU providers / the engine's GPU; ``openvino``
            is CPU only).
        run_name: training run (torch backend).
        resolution: expected renderer side S; for ``onnx`` / ``openvino`` / ``tensorrt``
            ``export/avatar_<S>.onnx`` / ``.engine`` is used when it exists. None: whatever
            the subject's export or run has.
        model_path: explicit .onnx / .engine file (overrides the subject's export).
    Returns:
        an :class:`OnnxRenderer`, :class:`OpenVinoRenderer`, :class:`TorchRenderer` or
        :class:`TensorRTRenderer`; an
        export's ``run_name`` / ``expand_offset`` come from the subject's ``export.json``
        (None when it has none or an explicit ``model_path`` is given).
    Raises:
        RamAvatarError: unknown backend, missing export/engine/checkpoint, or a renderer whose
            resolution differs from ``resolution``.
    """
    subject_dir = Path(subject_dir)
    device = resolve_device(device)
    backend = resolve_backend(backend, device)
    if backend == "tensorrt" and device.type != "cuda":
        raise RamAvatarError("--backend tensorrt needs an NVIDIA GPU (--device cuda) with TensorRT "
                             "installed (pip install 'ram-avatar-studio[tensorrt]'); on this machine "
                             "use --backend onnx")
    if backend in EXPORT_KIND:
        path = Path(model_path) if model_path is not None else \
            Subject(subject_dir).export_model(EXPORT_KIND[backend], resolution)
        if not path.is_file():
            if backend == "tensorrt":
                raise RamAvatarError(f"{path} not found: build it on this GPU machine with "
                                     f"`ram-avatar export {subject_dir} --tensorrt`, or use --backend onnx")
            raise RamAvatarError(f"{path} not found: run `ram-avatar export {subject_dir}` first, "
                                 "or use --backend torch")
        manifest = None if model_path is not None else _read_manifest(Subject(subject_dir))
        cls = {"onnx": OnnxRenderer, "openvino": OpenVinoRenderer,
               "tensorrt": TensorRTRenderer}[backend]
        engine = cls(path, device, manifest)
    elif backend == "torch":
        engine = TorchRenderer(subject_dir, run_name, device)
    else:
        raise RamAvatarError(f"unknown renderer backend {backend!r}: use one of {RENDER_BACKENDS}")
    if resolution is not None and int(resolution) != engine.resolution:
        raise RamAvatarError(f"the {backend} renderer of {subject_dir} is {engine.resolution}x"
                             f"{engine.resolution}, but resolution {resolution} was asked for; "
                             f"train and export the avatar at {resolution} (or omit --resolution)")
    return engine


def _read_manifest(subject: Subject) -> dict | None:
    """The subject's export.json, or None when it has none or it cannot be read (a warning:
    the renderer itself still loads, only its run and expand_offset are unknown)."""
    if not subject.export_manifest_path.is_file():
        return None
    try:
        return subject.export_manifest()
    except RamAvatarError as e:
        log.warning("%s", e)
        return None
