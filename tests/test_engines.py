"""One engine loader and one TensorRT runner (issue 11, item 5)."""

from __future__ import annotations

import sys

import pytest

from ram_avatar.errors import RamAvatarError


def test_one_tensorrt_runner_and_import_check(tmp_path, monkeypatch):
    """exporters' runner is the runtime's (no second copy), with the same install hint."""
    import exporters
    import exporters.tensorrt as ex_trt
    from ram_avatar.runtime import trt

    assert ex_trt.TensorRTRunner is trt.TensorRTEngine is exporters.TensorRTRunner
    assert ex_trt.import_tensorrt is trt.import_tensorrt
    assert not hasattr(ex_trt, "_torch_dtype")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    for call in (lambda: ex_trt.build_engine(tmp_path / "a.onnx", tmp_path / "a.engine"),
                 lambda: trt.TensorRTEngine(tmp_path / "a.engine")):
        with pytest.raises(RamAvatarError) as err:
            call()
        assert str(err.value) == trt.INSTALL_HINT
    assert "pip install 'ram-avatar-studio[tensorrt]'" in trt.INSTALL_HINT


def test_tensorrt_dtype_table():
    """TensorRT tensor dtypes map onto torch dtypes; unknown ones are a clear error."""
    import types

    import torch

    from ram_avatar.runtime.trt import torch_dtype

    fake = types.SimpleNamespace(float32="f32", float16="f16", int32="i32", int8="i8",
                                 bool="b", int64="i64")
    assert torch_dtype(fake, "f16") is torch.float16
    assert torch_dtype(fake, "i64") is torch.int64
    with pytest.raises(RamAvatarError, match="unsupported TensorRT tensor dtype fp8"):
        torch_dtype(fake, "fp8")
