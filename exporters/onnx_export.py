"""ONNX export with a parity check against PyTorch, and the ONNX Runtime runner.

Both live in ``ram_avatar`` (the lowest layer that needs them; ``ram_avatar`` may not import
``exporters``) and are re-exported here under their former names:
:func:`ram_avatar.models.export.export_onnx` (the one ONNX export path, used by ``ram-avatar
export`` and the benches) and :class:`ram_avatar.runtime.engines.OnnxRunner`.
"""

from __future__ import annotations

from ram_avatar.models.export import export_onnx
from ram_avatar.runtime.engines import OnnxRunner, default_providers

__all__ = ["export_onnx", "OnnxRunner", "default_providers"]
