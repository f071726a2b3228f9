"""Live runtime of RAM-Avatar: camera frame -> tracking -> pose -> (MDA) -> maps -> avatar frame.

* :class:`~ram_avatar.runtime.avatar_runtime.AvatarRuntime` — the per-frame pipeline
  (``process(frame_rgb) -> (avatar_rgb, stats)``) with ONNX Runtime, OpenVINO, torch or
  TensorRT renderers.
* :mod:`~ram_avatar.runtime.tracking` — MediaPipe Holistic in video mode and the warm-started
  per-frame body fit.
* :mod:`~ram_avatar.runtime.retarget` — offline (whole-clip) retargeting used by ``drive``.
* :mod:`~ram_avatar.runtime.engines` — the one renderer loader (``load_renderer_engine``:
  ONNX Runtime, OpenVINO, torch or TensorRT engines, used by live, the app, drive and the
  benches) and the
  ONNX Runtime session wrapper; :mod:`~ram_avatar.runtime.trt` — the one TensorRT 10 engine
  runner (optional extra).

The runtime imports neither ``ram_avatar.training`` nor ``ram_avatar.capture.pipeline`` (the
live app stays light). Names are imported lazily, so ``import ram_avatar.runtime`` is cheap.
"""

from __future__ import annotations

__all__ = ["AvatarRuntime", "LiveRetargeter", "load_renderer_engine", "STAGES"]

#: renderer backends of :func:`~ram_avatar.runtime.engines.load_renderer_engine`: the
#: ``--backend`` choices of drive, live and bench besides ``auto`` (here, so the command line
#: reads them without importing torch)
RENDER_BACKENDS = ("onnx", "openvino", "torch", "tensorrt")

#: ``--backend`` help of drive, bench and live
BACKEND_HELP = ("renderer: auto (default: openvino on the CPU when installed, else onnx), onnx "
                "(the export in ONNX Runtime), openvino (the same export in OpenVINO on the CPU, "
                "bfloat16 where the CPU has it; the [openvino] extra), torch (the run's "
                "checkpoint) or tensorrt (export --tensorrt, NVIDIA GPU)")

#: the exported file each export-based backend reads (``Subject.export_model`` kind): OpenVINO
#: reads the same ``avatar.onnx`` as ONNX Runtime
EXPORT_KIND = {"onnx": "onnx", "openvino": "onnx", "tensorrt": "tensorrt"}


def __getattr__(name: str):
    if name in __all__:
        from ram_avatar.runtime import avatar_runtime

        return getattr(avatar_runtime, name)
    raise AttributeError(f"module 'ram_avatar.runtime' has no attribute {name!r}")
