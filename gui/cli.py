"""``ram-avatar live``: registered through the ``ram_avatar.commands`` entry point."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("subject", help="captured, trained and exported subject directory")
    p.add_argument("--source", default="0", help="webcam index (default 0) or a video file")
    p.add_argument("--backend", default="onnx", choices=["onnx", "torch", "tensorrt"],
                   help="renderer: ONNX Runtime (default), torch checkpoint, TensorRT engine (GPU)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="compute device (default: auto = CUDA when available)")
    p.add_argument("--run", default="default", help="training run (torch backend)")
    p.add_argument("--camera", default=None, help="camera.json of the live camera")
    p.add_argument("--driver", default=None, help="driver.json from `ram-avatar calibrate driver`")
    p.add_argument("--mda", action="store_true", help="start with motion alignment on (when fitted)")
    p.add_argument("--overlay", action="store_true", help="start with the skeleton overlay on")
    p.add_argument("--lower-body", default="stand", choices=["stand", "sit"],
                   help="pose of legs the camera does not see (a webcam at a desk): stand "
                        "(default) or sit; also an app control")
    p.add_argument("--loop", action="store_true", help="restart a video file at its end")
    p.add_argument("--record", default=None, metavar="MP4", help="record the avatar from the start")
    p.add_argument("--frames", type=int, default=None,
                   help="process N frames, then quit (with --screenshot: save a grab first); "
                        "runs offscreen (QT_QPA_PLATFORM=offscreen)")
    p.add_argument("--screenshot", default=None, metavar="PNG", help="save a grab of the window")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before --frames gives up")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``live`` verb to the ``ram-avatar`` parser."""
    p = sub.add_parser("live", help="drive the avatar live from a webcam or video (Qt window)")
    add_arguments(p)
    p.set_defaults(func=run_from_args)


def run_from_args(a) -> int:
    from ram_avatar.errors import RamAvatarError

    try:
        from gui.app import run_live
    except ImportError as e:
        raise RamAvatarError(f"the live app needs PySide6: pip install 'ram-avatar-studio[gui]' ({e})") from e
    summary = run_live(a.subject, source=a.source, backend=a.backend, device=a.device, mda=a.mda,
                       camera=a.camera, driver=a.driver, run_name=a.run, frames=a.frames, screenshot=a.screenshot,
                       record=a.record, loop=a.loop, timeout_s=a.timeout, overlay=a.overlay,
                       lower_body=a.lower_body)
    if a.frames is not None or a.screenshot is not None:
        sys.stdout.write(json.dumps(summary, indent=1) + "\n")
        return 0 if summary["completed"] else 1
    return 0


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - `python -m gui.cli`
    """The live app without the ``ram-avatar`` front end (``python -m gui.cli SUBJECT ...``).
    Lives here, not in ``gui.app``, so that ``gui.app`` never imports ``gui.cli`` (no cycle)."""
    p = argparse.ArgumentParser(prog="ram-avatar-live")
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
