"""``ram-avatar doctor``: what this machine can do for RAM-Avatar Studio, and how to fix the rest.

Every check returns a dict with at least ``ok`` (bool), ``summary`` (one line, with versions)
and ``fix`` (the one command or action that supplies a missing piece, ``None`` when ``ok``).
Checks, in order:

``torch``           version, its CUDA and cuDNN builds, bf16 support.
``cuda``            a CUDA device visible to torch: name, memory (GiB), compute capability.
``onnxruntime``     version and execution providers (CPU / CUDA / TensorRT).
``openvino``        OpenVINO importable (the CPU renderer that ``--backend auto`` picks) and the
                    precision it runs at here (bfloat16 where the CPU has it).
``tensorrt``        TensorRT >= 10 importable (``runtime.trt.import_tensorrt``).
``moderngl``        an EGL OpenGL 3.3 context: its ``GL_RENDERER`` string (``llvmpipe`` is Mesa's
                    CPU rasterizer; a GPU driver names the GPU).
``nvdiffrast``      the CUDA rasterizer backend (needs CUDA and the ``[nvdiffrast]`` extra).
``rasterizer``      which backend ``backend="auto"`` picks here, and which are available.
``mediapipe``       version and the Holistic / selfie-segmentation ``.tflite`` models that
                    mediapipe 0.10.21 bundles (capture and live tracking need them offline).
``anny``            the embedded body model and its data cache (first construction builds it).
``weights.*``       optional ImageNet / metric weights found by the project's own finders:
                    ``vgg19`` (perceptual loss), ``alexnet`` + ``lpips_heads`` (LPIPS),
                    ``inception`` (FID).
``virtual_camera``  pyvirtualcam and, on Linux, a v4l2loopback device to send frames to.

Nothing here downloads, builds or writes anything; the slowest step is creating the EGL
context (and, where CUDA and nvdiffrast are present, nvdiffrast's first context).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["run_checks", "format_report", "MEDIAPIPE_MODELS"]

#: Files of mediapipe 0.10.21 that Holistic (model_complexity=1, refine_face_landmarks) and
#: SelfieSegmentation load, relative to ``mediapipe/modules``. Complexity 0 and 2 download
#: their pose models at run time, which is why the project uses 1 (DESIGN.md).
MEDIAPIPE_MODELS = (
    "holistic_landmark/holistic_landmark_cpu.binarypb",
    "pose_detection/pose_detection.tflite",
    "pose_landmark/pose_landmark_full.tflite",
    "holistic_landmark/hand_recrop.tflite",
    "hand_landmark/hand_landmark_full.tflite",
    "face_landmark/face_landmark_with_attention.tflite",
    "selfie_segmentation/selfie_segmentation.tflite",
)
MEDIAPIPE_VERSION = "0.10.21"

_SOFTWARE_GL = ("llvmpipe", "softpipe", "swrast", "software")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _check(ok: bool, summary: str, fix: str | None = None, **details) -> dict:
    return {"ok": bool(ok), "summary": summary, "fix": None if ok else fix, **details}


# --------------------------------------------------------------------------------------------
# individual checks
# --------------------------------------------------------------------------------------------


def check_torch() -> dict:
    """torch version and the CUDA / cuDNN it was built with (``None`` for a CPU build)."""
    import torch

    cuda_build = torch.version.cuda
    cudnn = None
    if cuda_build is not None:
        try:
            cudnn = torch.backends.cudnn.version()
        except Exception:  # noqa: BLE001 - cuDNN library missing
            cudnn = None
    bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    build = f"CUDA {cuda_build}, cuDNN {cudnn}" if cuda_build else "CPU build"
    return _check(True, f"torch {torch.__version__} ({build})", version=torch.__version__,
                  cuda_build=cuda_build, cudnn=cudnn, bf16=bf16)


def check_cuda() -> dict:
    """CUDA devices torch can use: ``gpus`` list of ``{index, name, memory_gib, capability}``."""
    import torch

    if torch.version.cuda is None:
        return _check(False, "PyTorch is a CPU build: no CUDA",
                      "pip install --force-reinstall torch  # Linux wheels from the package "
                      "index are CUDA builds; needs an NVIDIA GPU and driver", gpus=[])
    if not torch.cuda.is_available():
        return _check(False, f"PyTorch has CUDA {torch.version.cuda} but sees no GPU",
                      "install or update the NVIDIA driver until `nvidia-smi` lists the GPU "
                      "(check CUDA_VISIBLE_DEVICES)", gpus=[])
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append({"index": i, "name": p.name,
                     "memory_gib": round(p.total_memory / 2 ** 30, 1),
                     "capability": f"{p.major}.{p.minor}"})
    names = ", ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in gpus)
    return _check(True, f"{len(gpus)} GPU(s): {names}", gpus=gpus)


def check_onnxruntime(cuda: bool) -> dict:
    """ONNX Runtime version and providers; on a CUDA machine the CUDA provider is expected."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return _check(False, f"onnxruntime not importable ({exc})", "pip install onnxruntime",
                      version=None, providers=[])
    providers = list(ort.get_available_providers())
    gpu = [p for p in providers if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")]
    ok = bool(gpu) or not cuda
    summary = f"onnxruntime {ort.__version__}: {', '.join(providers)}"
    fix = ("pip uninstall -y onnxruntime && pip install onnxruntime-gpu  # CUDA execution provider"
           if cuda else None)
    if not cuda and not gpu:
        summary += " (CPU only: no CUDA on this machine)"
    return _check(ok, summary, fix, version=ort.__version__, providers=providers,
                  gpu_providers=gpu)


def check_openvino() -> dict:
    """OpenVINO importable, and the renderer precision ``--backend openvino`` / ``auto`` uses
    on this CPU (``bf16`` where OpenVINO reports native ``BF16``, else ``f32``)."""
    try:
        import openvino as ov
    except ImportError as exc:
        return _check(False, f"OpenVINO not installed ({exc}); the CPU renderer falls back to "
                             "ONNX Runtime", "pip install 'ram-avatar-studio[openvino]'",
                      version=None, precision=None)
    try:
        caps = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception as exc:  # noqa: BLE001 - a broken plug-in behind the import
        return _check(False, f"OpenVINO {ov.__version__} has no usable CPU device: {exc}",
                      "pip install --force-reinstall openvino", version=ov.__version__,
                      precision=None)
    precision = "bf16" if "BF16" in caps else "f32"
    return _check(True, f"OpenVINO {ov.__version__}: CPU renderer in {precision}",
                  version=ov.__version__, precision=precision, capabilities=caps)


def check_tensorrt() -> dict:
    """TensorRT >= 10 importable (the runtime's own import check)."""
    from ram_avatar.errors import RamAvatarError
    from ram_avatar.runtime.trt import import_tensorrt

    if importlib.util.find_spec("tensorrt") is None:
        return _check(False, "TensorRT not installed",
                      "pip install 'ram-avatar-studio[tensorrt]'  # NVIDIA GPU machines only",
                      version=None)
    try:
        trt = import_tensorrt()
    except RamAvatarError as exc:
        return _check(False, f"TensorRT unusable: {exc}", "pip install 'tensorrt>=10'",
                      version=None)
    except Exception as exc:  # noqa: BLE001 - broken CUDA libraries behind the import
        return _check(False, f"TensorRT import failed: {type(exc).__name__}: {exc}",
                      "pip install --force-reinstall 'tensorrt>=10'", version=None)
    return _check(True, f"TensorRT {trt.__version__}", version=str(trt.__version__))


def check_rasterizers() -> tuple[dict, dict, dict]:
    """(moderngl, nvdiffrast, rasterizer) checks from ``render.rasterizer.backend_status``."""
    from ram_avatar.render.rasterizer import backend_status

    st = backend_status()
    gl = st["moderngl"]
    if gl["ok"]:
        renderer = gl.get("renderer") or "?"
        software = any(k in renderer.lower() for k in _SOFTWARE_GL)
        kind = "software, CPU" if software else "GPU"
        mgl = _check(True, f"moderngl {_version('moderngl')} EGL: {renderer} ({kind}), "
                           f"OpenGL {gl.get('version')}", version=_version("moderngl"),
                     renderer=renderer, gl_version=gl.get("version"), vendor=gl.get("vendor"),
                     gpu=not software)
    else:
        mgl = _check(False, f"no EGL OpenGL 3.3 context: {gl['reason']}",
                     "apt-get install libegl1 libgl1-mesa-dri  # or the NVIDIA driver's EGL",
                     version=_version("moderngl"), renderer=None, gl_version=None, vendor=None,
                     gpu=False)
    nv = st["nvdiffrast"]
    nv_version = None
    if importlib.util.find_spec("nvdiffrast") is not None:
        try:
            import nvdiffrast

            nv_version = str(getattr(nvdiffrast, "__version__", None))
        except Exception:  # noqa: BLE001
            nv_version = None
    nvd = _check(nv["ok"], f"nvdiffrast {nv_version}" if nv["ok"]
                 else f"nvdiffrast unavailable: {nv['reason']}",
                 "pip install 'ram-avatar-studio[nvdiffrast]'  # needs CUDA torch and nvcc",
                 version=nv_version)
    ras = _check(True, f"backend='auto' picks {st['auto']} (available: "
                       f"{', '.join(st['available'])})", auto=st["auto"],
                 available=st["available"])
    return mgl, nvd, ras


def _mediapipe_dir() -> Path | None:
    """Folder of the installed mediapipe package, found without importing it (slow)."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def check_mediapipe() -> dict:
    """mediapipe version and whether its bundled Holistic models are on disk."""
    fix = (f"pip install mediapipe=={MEDIAPIPE_VERSION}  # the last release that bundles the "
           "Holistic models")
    root = _mediapipe_dir()
    if root is None:
        return _check(False, "mediapipe not installed", fix, version=None, models={})
    version = _version("mediapipe")
    models = {m: (root / "modules" / m).is_file() for m in MEDIAPIPE_MODELS}
    missing = [m for m, ok in models.items() if not ok]
    ok = not missing
    summary = f"mediapipe {version}: {len(models) - len(missing)}/{len(models)} Holistic models"
    if missing:
        summary += f" (missing {', '.join(Path(m).name for m in missing)})"
    return _check(ok, summary, fix, version=version, models=models)


def _anny_cache_dir() -> Path:
    """``ANNY_CACHE_DIR`` or ``~/.cache/anny`` (the rule of ``anny.paths``, without importing
    anny, which takes seconds)."""
    return Path(os.environ.get("ANNY_CACHE_DIR", str(Path.home() / ".cache" / "anny")))


def check_anny() -> dict:
    """The Anny package and its built model-data cache (``<cache>/v*/*.safetensors``)."""
    version = _version("anny")
    cache = _anny_cache_dir()
    if version is None:
        return _check(False, "anny not installed", "pip install 'anny>=0.6'", version=None,
                      cache_dir=str(cache), cached_files=0)
    files = sorted(cache.glob("v*/*.safetensors")) if cache.is_dir() else []
    summary = f"anny {version}, cache {cache}: {len(files)} built model file(s)"
    return _check(bool(files), summary,
                  "python -c 'import anny; anny.Anny()'  # builds the cache once, about a minute",
                  version=version, cache_dir=str(cache), cached_files=len(files))


def check_weights() -> dict[str, dict]:
    """Optional weights, located with the project's finders (``eval.metrics``, ``eval.fid``)."""
    from ram_avatar.eval.fid import FID_WEIGHTS_FILE, FID_WEIGHTS_URL, find_fid_weights
    from ram_avatar.eval.metrics import (TORCHVISION_FILES, WEIGHTS_ENV, _find_lpips_heads,
                                         find_weight_file, weight_search_dirs)

    dest = weight_search_dirs()[-1]  # the torch hub cache
    where = f"into {dest} (or a folder named by ${WEIGHTS_ENV})"
    out: dict[str, dict] = {}
    for key, used in (("vgg19", "VGG19 perceptual loss"), ("alexnet", "LPIPS backbone")):
        fname, _, url = TORCHVISION_FILES[key]
        path = find_weight_file([fname])
        out[key] = _check(path is not None, f"{fname} ({used}): " + (str(path) if path
                          else "absent"), f"download {url} {where}", file=fname,
                          path=str(path) if path else None)
    heads = _find_lpips_heads("alex", None)
    out["lpips_heads"] = _check(heads is not None, "LPIPS v0.1 alex heads: " + (
        str(heads) if heads else "absent"), "pip install --no-deps lpips  # ships the heads",
        file="alex.pth", path=str(heads) if heads else None)
    path = find_fid_weights()
    out["inception"] = _check(path is not None, f"{FID_WEIGHTS_FILE} (FID): " + (
        str(path) if path else "absent"), f"download {FID_WEIGHTS_URL} {where}",
        file=FID_WEIGHTS_FILE, path=str(path) if path else None)
    return out


def _v4l2loopback_devices(sysfs: Path = Path("/sys/devices/virtual/video4linux")) -> list[str]:
    """``/dev/videoN`` of v4l2loopback devices (virtual video4linux devices)."""
    if not sysfs.is_dir():
        return []
    return sorted(f"/dev/{d.name}" for d in sysfs.iterdir() if d.name.startswith("video"))


def check_virtual_camera(sysfs: Path | None = None) -> dict:
    """pyvirtualcam and its platform backend (Linux: a v4l2loopback device must exist)."""
    version = _version("pyvirtualcam")
    if version is None:
        return _check(False, "pyvirtualcam not installed",
                      "pip install 'ram-avatar-studio[gui]'  # pyvirtualcam", version=None,
                      backend=None, devices=[])
    if sys.platform.startswith("linux"):
        devices = _v4l2loopback_devices(sysfs) if sysfs is not None else _v4l2loopback_devices()
        summary = f"pyvirtualcam {version}, backend v4l2loopback: " + (
            ", ".join(devices) if devices else "no loopback device")
        return _check(bool(devices), summary,
                      "sudo modprobe v4l2loopback devices=1 exclusive_caps=1  # apt-get install "
                      "v4l2loopback-dkms", version=version, backend="v4l2loopback",
                      devices=devices)
    backend = "obs or unitycapture" if sys.platform == "win32" else "obs"
    return _check(True, f"pyvirtualcam {version}, backend {backend} (checked when opened)",
                  version=version, backend=backend, devices=[])


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def run_checks() -> dict:
    """Run every check (module docstring).

    Returns:
        JSON-serialisable dict: ``system`` (ram-avatar-studio and Python versions, platform,
        CPU count), ``checks`` (name -> check dict; weights as ``weights.vgg19`` ...) and
        ``missing`` (names of the checks that are not ok, in order). Never raises for a missing
        piece: that is what the report is for.
    """
    checks: dict[str, dict] = {}
    checks["torch"] = check_torch()
    checks["cuda"] = check_cuda()
    checks["onnxruntime"] = check_onnxruntime(cuda=checks["cuda"]["ok"])
    checks["openvino"] = check_openvino()
    checks["tensorrt"] = check_tensorrt()
    checks["moderngl"], checks["nvdiffrast"], checks["rasterizer"] = check_rasterizers()
    checks["mediapipe"] = check_mediapipe()
    checks["anny"] = check_anny()
    for name, c in check_weights().items():
        checks[f"weights.{name}"] = c
    checks["virtual_camera"] = check_virtual_camera()
    return {
        "system": {"ram_avatar_studio": _version("ram-avatar-studio"),
                   "python": platform.python_version(), "platform": platform.platform(),
                   "cpu_count": os.cpu_count()},
        "checks": checks,
        "missing": [n for n, c in checks.items() if not c["ok"]],
    }


def format_report(report: dict) -> str:
    """Human-readable report: one line per check, ``fix:`` under each missing piece."""
    sysinfo = report["system"]
    lines = [f"RAM-Avatar Studio {sysinfo['ram_avatar_studio']} on Python {sysinfo['python']}, "
             f"{sysinfo['platform']}, {sysinfo['cpu_count']} CPUs"]
    width = max(len(n) for n in report["checks"])
    for name, c in report["checks"].items():
        lines.append(f"  {'ok' if c['ok'] else '--'}  {name:<{width}}  {c['summary']}")
        if not c["ok"] and c.get("fix"):
            lines.append(f"      {'':<{width}}  fix: {c['fix']}")
    n = len(report["missing"])
    lines.append("everything is in place" if n == 0 else
                 f"{n} missing: {', '.join(report['missing'])}")
    return "\n".join(lines) + "\n"
