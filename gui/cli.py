"""``ram-avatar live``: registered through the ``ram_avatar.commands`` entry point."""

from __future__ import annotations

import argparse
import json
import sys

from ram_avatar.runtime import BACKEND_HELP, RENDER_BACKENDS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("subject", help="captured, trained and exported subject directory")
    p.add_argument("--source", default=None,
                   help="webcam index, N@WxH for a resolution (e.g. 0@1280x720), or a video file "
                        "(default: the last source used, else 0)")
    p.add_argument("--backend", default="auto", choices=("auto",) + RENDER_BACKENDS,
                   help=BACKEND_HELP)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="compute device (default: auto = CUDA when available)")
    p.add_argument("--run", default="default", help="training run (torch backend)")
    p.add_argument("--camera", default=None, help="camera.json of the live camera")
    p.add_argument("--driver", default=None, help="driver.json from `ram-avatar calibrate driver`")
    p.add_argument("--mda", action="store_true", default=None,
                   help="start with motion alignment on (when fitted)")
    p.add_argument("--overlay", action="store_true", default=None,
                   help="start with the skeleton overlay on")
    p.add_argument("--lower-body", default=None, choices=["stand", "sit"],
                   help="pose of legs the camera does not see (a webcam at a desk): stand "
                        "(default) or sit; also an app control")
    p.add_argument("--framing", default=None, choices=["none", "full", "upper", "head"],
                   help="place the avatar in a 16:9 frame (--out-size): the whole person, head to "
                        "hips, or head and shoulders; none (default) shows the rendered square. "
                        "Also an app control")
    p.add_argument("--zoom", type=float, default=None, help="with --framing: > 1 closer, < 1 farther")
    p.add_argument("--offset", default=None, metavar="X,Y",
                   help="with --framing: shift of the view, fractions of its width and height "
                        "(0,-0.1 moves it up)")
    p.add_argument("--out-size", default=None, metavar="WxH",
                   help="output size with --framing (default 1280x720, the usual virtual-camera size)")
    p.add_argument("--zoom-mode", default=None, choices=["crop", "camera"],
                   help="crop: crop and upscale the rendered frame (default); camera: move the "
                        "virtual camera closer, so the renderer draws the framed part at its full "
                        "resolution (for renderers trained with scale augmentation)")
    p.add_argument("--max-camera-zoom", type=float, default=None, metavar="Z",
                   help="with --zoom-mode camera: magnify the camera at most Z times over the "
                        "training crop (e.g. the top of the scale augmentation), crop the rest")
    p.add_argument("--background", default=None,
                   help="learned (the training room, default), transparent (alpha: record to "
                        ".webm/.mov; keyed on the virtual camera), a colour #RRGGBB, or a picture")
    p.add_argument("--vcam-key", default=None, metavar="#RRGGBB",
                   help="key colour behind a transparent avatar on the virtual camera (virtual "
                        "cameras carry no alpha; default green)")
    p.add_argument("--virtual-camera", action="store_true",
                   help="start the virtual camera at once (needs pyvirtualcam and a backend)")
    p.add_argument("--loop", action="store_true", help="restart a video file at its end")
    p.add_argument("--record", default=None, metavar="FILE",
                   help="record the avatar from the start: .mp4 (H.264), .webm (VP9 with alpha) or "
                        ".mov (ProRes 4444); a transparent background needs .webm or .mov")
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


def output_from_args(a):
    """The validated output settings and key colour of the parsed options.

    Raises:
        FramingError / BackgroundError: a value that cannot be used; RamAvatarError: a
            transparent background recorded to a file without alpha.
    """
    from pathlib import Path

    from ram_avatar.errors import RamAvatarError
    from ram_avatar.render.composite import parse_colour
    from ram_avatar.render.framing import OutputSettings

    out = OutputSettings.parse(a.background, a.framing, a.zoom, a.offset, a.out_size, a.zoom_mode,
                               a.max_camera_zoom)
    key = parse_colour(a.vcam_key)
    if a.record is not None:
        suffix = Path(a.record).suffix.lower()
        if suffix not in (".mp4", ".webm", ".mov"):
            raise RamAvatarError(f"--record {a.record}: use .mp4 (H.264), .webm (VP9 with alpha) "
                                 "or .mov (ProRes 4444)")
        if out.has_alpha and suffix == ".mp4":
            raise RamAvatarError(f"--background transparent needs a video with alpha: record to "
                                 f"{Path(a.record).with_suffix('.webm').name} (VP9, for OBS) or "
                                 f"{Path(a.record).with_suffix('.mov').name} (ProRes 4444)")
    return out, key


def run_from_args(a) -> int:
    """Run ``live``: options left out come from the remembered settings (gui.settings), except
    in a scripted ``--frames`` / ``--screenshot`` run, which uses the built-in defaults and
    remembers nothing."""
    import logging

    from ram_avatar.errors import RamAvatarError

    try:
        from gui.app import run_live
        from gui.settings import apply_saved, load_settings, settings_store
    except ImportError as e:
        raise RamAvatarError(f"the live app needs PySide6: pip install 'ram-avatar-studio[gui]' ({e})") from e
    scripted = a.frames is not None or a.screenshot is not None
    store = None if scripted else settings_store()
    given = {k: getattr(a, k, None) for k in ("framing", "zoom", "offset", "out_size",
                                               "zoom_mode", "background", "vcam_key")}
    used = apply_saved(a, {} if store is None else load_settings(store))
    try:
        output, key = output_from_args(a)  # bad values fail before any window opens
    except RamAvatarError as e:
        if not used:
            raise
        # a remembered value no longer works (e.g. a deleted background picture): defaults
        logging.getLogger(__name__).warning("remembered settings not used (%s)", e)
        for k, v in given.items():
            setattr(a, k, v)
        apply_saved(a, {})
        output, key = output_from_args(a)
    summary = run_live(a.subject, source=a.source, backend=a.backend, device=a.device, mda=a.mda,
                       camera=a.camera, driver=a.driver, run_name=a.run, frames=a.frames, screenshot=a.screenshot,
                       record=a.record, loop=a.loop, timeout_s=a.timeout, overlay=a.overlay,
                       lower_body=a.lower_body, output=output, key_colour=key,
                       virtual_camera=a.virtual_camera, settings_store=store)
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
