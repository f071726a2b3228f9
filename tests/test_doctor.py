"""``ram-avatar doctor``: report keys and types, and the fix line of every missing piece (CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from ram_avatar import doctor
from ram_avatar.cli import main
from ram_avatar.render import rasterizer as R

CHECKS = ["torch", "cuda", "onnxruntime", "openvino", "tensorrt", "moderngl", "nvdiffrast", "rasterizer",
          "mediapipe", "anny", "weights.vgg19", "weights.alexnet", "weights.lpips_heads",
          "weights.inception", "virtual_camera"]


@pytest.fixture(scope="module")
def report():
    return doctor.run_checks()


def test_report_keys_types_and_fix_lines(report):
    assert list(report["checks"]) == CHECKS
    assert set(report["system"]) == {"ram_avatar_studio", "python", "platform", "cpu_count"}
    for name, c in report["checks"].items():
        assert isinstance(c["ok"], bool) and isinstance(c["summary"], str) and c["summary"], name
        assert "\n" not in c["summary"], name
        if c["ok"]:
            assert c["fix"] is None, name
        else:  # every missing piece comes with exactly one line that fixes it
            assert isinstance(c["fix"], str) and c["fix"].strip() and "\n" not in c["fix"], name
    assert report["missing"] == [n for n, c in report["checks"].items() if not c["ok"]]
    json.loads(json.dumps(report))  # JSON-serialisable as is


def test_torch_and_cuda_match_this_machine(report):
    t, cuda = report["checks"]["torch"], report["checks"]["cuda"]
    assert t["ok"] and t["version"] == torch.__version__ and t["cuda_build"] == torch.version.cuda
    assert isinstance(t["bf16"], bool)
    assert cuda["ok"] == torch.cuda.is_available()
    assert len(cuda["gpus"]) == torch.cuda.device_count()
    for g in cuda["gpus"]:
        assert isinstance(g["name"], str) and g["memory_gib"] > 0
    if not torch.cuda.is_available():
        assert "torch" in cuda["fix"] or "nvidia" in cuda["fix"].lower()
        assert not report["checks"]["nvdiffrast"]["ok"]
        assert "[nvdiffrast]" in report["checks"]["nvdiffrast"]["fix"]


def test_runtimes(report):
    ort = report["checks"]["onnxruntime"]
    assert ort["ok"] and "CPUExecutionProvider" in ort["providers"]
    import onnxruntime

    assert ort["version"] == onnxruntime.__version__
    trt = report["checks"]["tensorrt"]
    try:
        import tensorrt  # noqa: F401
        has_trt = True
    except ImportError:
        has_trt = False
    assert trt["ok"] == has_trt
    if not has_trt:
        assert "[tensorrt]" in trt["fix"] and trt["version"] is None
    ov = report["checks"]["openvino"]
    try:
        import openvino
    except ImportError:
        assert not ov["ok"] and "[openvino]" in ov["fix"] and ov["precision"] is None
    else:  # the precision --backend openvino / auto runs at on this CPU
        assert ov["ok"] and ov["version"] == openvino.__version__
        assert ov["precision"] == ("bf16" if "BF16" in ov["capabilities"] else "f32")
        assert ov["precision"] in ov["summary"]


def test_openvino_missing_is_reported_with_its_fix(monkeypatch):
    """Without OpenVINO the check fails with the extra to install (the renderer falls back
    to ONNX Runtime)."""
    import builtins

    real = builtins.__import__

    def no_openvino(name, *a, **k):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    c = doctor.check_openvino()
    assert not c["ok"] and c["fix"] == "pip install 'ram-avatar-studio[openvino]'"
    assert "ONNX Runtime" in c["summary"] and c["version"] is None


def test_rasterizer_reports_auto_choice(report):
    ras, gl = report["checks"]["rasterizer"], report["checks"]["moderngl"]
    assert ras["auto"] == R.auto_backend() and ras["auto"] in ras["available"]
    assert "torch" in ras["available"] and ras["auto"] in ras["summary"]
    assert gl["ok"] == R.moderngl_available()
    if gl["ok"]:
        assert isinstance(gl["renderer"], str) and gl["renderer"] in gl["summary"]
        assert gl["gpu"] == ("llvmpipe" not in gl["renderer"].lower())
    else:
        assert "libegl1" in gl["fix"]


def test_mediapipe_models(report, monkeypatch, tmp_path):
    mp = report["checks"]["mediapipe"]
    assert set(mp["models"]) == set(doctor.MEDIAPIPE_MODELS)
    assert mp["ok"] == all(mp["models"].values())
    # a mediapipe without its bundled models (e.g. a newer release)
    (tmp_path / "modules" / "pose_detection").mkdir(parents=True)
    (tmp_path / "modules" / "pose_detection" / "pose_detection.tflite").write_bytes(b"x")
    monkeypatch.setattr(doctor, "_mediapipe_dir", lambda: tmp_path)
    c = doctor.check_mediapipe()
    assert not c["ok"] and c["models"]["pose_detection/pose_detection.tflite"]
    assert sum(c["models"].values()) == 1 and "mediapipe==0.10.21" in c["fix"]
    monkeypatch.setattr(doctor, "_mediapipe_dir", lambda: None)
    c = doctor.check_mediapipe()
    assert not c["ok"] and c["version"] is None and "mediapipe==0.10.21" in c["fix"]


def test_anny_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ANNY_CACHE_DIR", str(tmp_path))
    c = doctor.check_anny()
    assert not c["ok"] and c["cached_files"] == 0 and c["cache_dir"] == str(tmp_path)
    assert "anny.Anny()" in c["fix"]
    (tmp_path / "v14").mkdir()
    (tmp_path / "v14" / "build_model_data_0123.safetensors").write_bytes(b"x")
    c = doctor.check_anny()
    assert c["ok"] and c["cached_files"] == 1 and c["fix"] is None


def test_weights_found_by_the_project_finders(monkeypatch, tmp_path):
    hub, mine = tmp_path / "hub", tmp_path / "mine"
    (hub / "checkpoints").mkdir(parents=True)
    mine.mkdir()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setenv("RAM_AVATAR_WEIGHTS", str(mine))
    monkeypatch.setattr("ram_avatar.eval.metrics._lpips_package_weight_dirs", lambda: [])
    w = doctor.check_weights()
    assert set(w) == {"vgg19", "alexnet", "lpips_heads", "inception"}
    for name, c in w.items():
        assert not c["ok"] and c["path"] is None, name
    assert "vgg19-dcbb9e9d.pth" in w["vgg19"]["fix"] and str(hub / "checkpoints") in w["vgg19"]["fix"]
    assert "alexnet-owt-7be5be79.pth" in w["alexnet"]["fix"]
    assert "inception-2015-12-05.pt" in w["inception"]["fix"]
    assert "lpips" in w["lpips_heads"]["fix"]
    (mine / "vgg19-dcbb9e9d.pth").write_bytes(b"x")
    (hub / "checkpoints" / "inception-2015-12-05.pt").write_bytes(b"x")
    (mine / "lpips_v0.1_alex.pth").write_bytes(b"x")
    w = doctor.check_weights()
    assert w["vgg19"]["ok"] and w["vgg19"]["path"] == str(mine / "vgg19-dcbb9e9d.pth")
    assert w["inception"]["ok"] and w["inception"]["path"].endswith("inception-2015-12-05.pt")
    assert w["lpips_heads"]["ok"] and not w["alexnet"]["ok"]


def test_virtual_camera(monkeypatch, tmp_path):
    monkeypatch.setattr(doctor.sys, "platform", "linux")
    monkeypatch.setattr(doctor, "_version", lambda d: "0.15.0" if d == "pyvirtualcam" else None)
    c = doctor.check_virtual_camera(sysfs=tmp_path / "none")
    assert not c["ok"] and c["backend"] == "v4l2loopback" and "modprobe v4l2loopback" in c["fix"]
    (tmp_path / "v4l" / "video7").mkdir(parents=True)
    c = doctor.check_virtual_camera(sysfs=tmp_path / "v4l")
    assert c["ok"] and c["devices"] == ["/dev/video7"] and c["fix"] is None
    monkeypatch.setattr(doctor, "_version", lambda d: None)
    c = doctor.check_virtual_camera(sysfs=tmp_path / "v4l")
    assert not c["ok"] and "[gui]" in c["fix"]


def test_cli_json_and_text(capsys):
    assert main(["doctor", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["checks"]) == CHECKS
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert text.count("fix: ") == len(out["missing"])
    assert f"backend='auto' picks {out['checks']['rasterizer']['auto']}" in text
    for name in CHECKS:
        assert f" {name} " in text
