"""Exports are all-or-nothing: a failed export or TensorRT build leaves the previous export."""

from __future__ import annotations

import hashlib
import json

import pytest

from ram_avatar.cli import main
from ram_avatar.errors import RamAvatarError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, anny_body):
    from tiny_subject import TINY_TRAIN, write_tiny_subject

    subject = write_tiny_subject(tmp_path_factory.mktemp("export") / "s", anny_body, T=12)
    argv = ["train", str(subject), "--preset", "cpu-256-v1", "--device", "cpu", "--steps", "2"]
    for s in TINY_TRAIN:
        argv += ["--set", s]
    assert main(argv) == 0
    assert main(["export", str(subject)]) == 0
    return subject


def _state(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _hidden(subject):
    return sorted(p.name for p in subject.iterdir() if p.name.startswith("."))


def test_export_is_consistent(exported):
    meta = json.loads((exported / "export" / "export.json").read_text())
    onnx = exported / "export" / "avatar.onnx"
    assert meta["path"] == str(onnx)
    assert meta["sha256"] == hashlib.sha256(onnx.read_bytes()).hexdigest()
    assert _hidden(exported) == []


def test_tensorrt_missing_fails_before_writing(exported, capsys):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    before = _state(exported / "export")
    assert main(["export", str(exported), "--tensorrt"]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err
    assert _state(exported / "export") == before and _hidden(exported) == []


def test_failed_engine_build_keeps_the_previous_export(exported, monkeypatch):
    import exporters.tensorrt as trt_mod

    before = _state(exported / "export")
    stale = exported / ".export.k1ll3d"                       # left by a killed export
    stale.mkdir()
    (stale / "avatar.onnx").write_bytes(b"half")
    built = []

    def failing_build(onnx_path, engine_path, fp16=True):
        built.append(onnx_path)
        assert onnx_path.is_file() and onnx_path.parent != exported / "export"
        raise RamAvatarError("TensorRT engine build failed (simulated)")

    monkeypatch.setattr(trt_mod, "import_tensorrt", lambda: object())
    monkeypatch.setattr(trt_mod, "build_engine", failing_build)
    from exporters.avatar import export_avatar

    with pytest.raises(RamAvatarError, match="simulated"):
        export_avatar(exported, tensorrt=True)
    assert built                                              # the new ONNX was made ...
    assert _state(exported / "export") == before              # ... but nothing was replaced
    assert _hidden(exported) == []                            # stale and new temp folders gone


def test_successful_reexport_replaces_everything_together(exported, monkeypatch):
    import exporters.tensorrt as trt_mod

    def fake_build(onnx_path, engine_path, fp16=True):
        engine_path.write_bytes(b"engine for " + onnx_path.read_bytes()[:16])
        return {"engine_path": str(engine_path), "onnx_path": str(onnx_path)}

    monkeypatch.setattr(trt_mod, "import_tensorrt", lambda: object())
    monkeypatch.setattr(trt_mod, "build_engine", fake_build)
    from exporters.avatar import export_avatar

    report = export_avatar(exported, tensorrt=True)
    out = exported / "export"
    assert sorted(p.name for p in out.iterdir()) == ["avatar.engine", "avatar.onnx", "export.json"]
    meta = json.loads((out / "export.json").read_text())
    assert meta == json.loads(json.dumps(report, default=str))
    assert meta["tensorrt"]["engine_path"] == str(out / "avatar.engine")
    assert meta["sha256"] == hashlib.sha256((out / "avatar.onnx").read_bytes()).hexdigest()
    assert _hidden(exported) == []
