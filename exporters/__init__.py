"""Deployment exporters: ONNX export with a PyTorch parity check, ONNX Runtime runner, and the
optional TensorRT engine build (needs the ``tensorrt`` extra and an NVIDIA GPU); the runners are
``ram_avatar.runtime`` (``engines.OnnxRunner``, ``trt.TensorRTEngine``), re-exported here."""

from exporters.onnx_export import OnnxRunner, default_providers, export_onnx
from exporters.tensorrt import TensorRTRunner, build_engine

__all__ = ["export_onnx", "OnnxRunner", "default_providers", "build_engine", "TensorRTRunner"]
