"""``ram-avatar calibrate camera|driver``: command-line front end of :mod:`calibration`.

:func:`register` adds the ``calibrate`` verb to the ``ram-avatar`` argument parser; each
sub-command stores its handler as ``args.func`` (``func(args) -> int`` exit status), writes its
output file atomically and prints a JSON summary on stdout. ``python -m calibration.cli ...``
runs the same commands stand-alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["register", "run_camera", "run_driver", "main"]


def _source(value: str):
    """A webcam index (``0``, ``1``, ...) stays a string of digits; the library decides (an
    existing file named ``0`` wins)."""
    return value


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``calibrate`` (with ``camera`` and ``driver``) to an ``add_subparsers()`` object.

    Returns:
        the ``calibrate`` parser.
    """
    from calibration.camera import BOARD_TYPES

    p = subparsers.add_parser(
        "calibrate", help="camera intrinsics from a board, or the driver's body shape",
        description="Calibrate the camera (intrinsics and lens distortion from a printed "
                    "checkerboard or ChArUco board) or the driver (body shape of the person who "
                    "drives an avatar).")
    sub = p.add_subparsers(dest="calibrate_command", metavar="{camera,driver}")
    sub.required = True

    cam = sub.add_parser(
        "camera", help="intrinsics + distortion from views of a board -> camera.json",
        description="Film or photograph a flat printed board from 10-40 different positions "
                    "(image corners, near and far, tilted up to ~45 degrees), then run this on the "
                    "video, the image folder, or a webcam index (the board is moved in front of "
                    "the webcam for --seconds).")
    cam.add_argument("input", type=_source, help="video file, folder of images, or webcam index (0, 1, ...)")
    cam.add_argument("--board", choices=BOARD_TYPES, default="checkerboard", help="board type (default: checkerboard)")
    cam.add_argument("--cols", type=int, required=True,
                     help="checkerboard: INNER corners per row; charuco: squares per row")
    cam.add_argument("--rows", type=int, required=True,
                     help="checkerboard: INNER corners per column; charuco: squares per column")
    cam.add_argument("--square-mm", type=float, required=True, help="side of one square in mm")
    cam.add_argument("--marker-mm", type=float, default=None, help="charuco: marker side in mm (default 0.75 x square)")
    cam.add_argument("--dictionary", default="DICT_5X5_100", help="charuco: ArUco dictionary (default DICT_5X5_100)")
    cam.add_argument("--max-views", type=int, default=40, help="most views used by the calibration (default 40)")
    cam.add_argument("--max-frames", type=int, default=300, help="most frames checked for the board (default 300)")
    cam.add_argument("--seconds", type=float, default=30.0, help="webcam: recording time (default 30)")
    cam.add_argument("--k3", action="store_true", help="also estimate the k3 distortion term (wide-angle lenses)")
    cam.add_argument("-o", "--output", default="camera.json", help="output camera.json (default ./camera.json)")
    cam.add_argument("--preview", default=None, metavar="PNG",
                     help="also write a side-by-side original|undistorted PNG of one view")
    cam.set_defaults(func=run_camera)

    drv = sub.add_parser(
        "driver", help="body shape of the driver from a short clip -> driver.json",
        description="Stand in full view, facing the camera, arms slightly away from the body, for a "
                    "few seconds; the first --seconds of the video or webcam are fitted.")
    drv.add_argument("source", type=_source, help="video file or webcam index (0, 1, ...)")
    drv.add_argument("-o", "--output", default="driver.json", help="output driver.json (default ./driver.json)")
    drv.add_argument("--seconds", type=float, default=3.0, help="length of the clip used (default 3)")
    drv.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    drv.add_argument("--body-model", default="anny", help="anny (default) or smplx")
    drv.add_argument("--model-path", default=None, help="smplx: directory or file of the SMPL-X model")
    drv.add_argument("--camera", default=None, help="camera.json of the driver's camera (optional)")
    drv.set_defaults(func=run_driver)
    return p


def _print_json(data: dict) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def run_camera(args) -> int:
    """Handler of ``calibrate camera``; returns the exit status (0)."""
    from calibration.camera import camera_json_dict, calibrate_camera, save_camera_json, undistortion_preview

    res = calibrate_camera(args.input, board=args.board, cols=args.cols, rows=args.rows,
                           square_mm=args.square_mm, marker_mm=args.marker_mm,
                           dictionary=args.dictionary, max_views=args.max_views,
                           max_frames=args.max_frames, webcam_seconds=args.seconds,
                           fix_k3=not args.k3)
    out = save_camera_json(res, args.output)
    summary = {k: v for k, v in camera_json_dict(res).items()
               if k in ("K", "dist", "width", "height", "rms", "coverage", "frames_checked",
                        "frames_with_board")}
    summary["views_used"] = len(res["views"])
    summary["max_view_error"] = float(np.max(res["per_view_errors"]))
    summary["fov_deg"] = float(np.degrees(2 * np.arctan(max(res["width"], res["height"])
                                                        / (2 * res["K"][0, 0]))))
    summary["output"] = str(out)
    if args.preview:
        undistortion_preview(res["preview_rgb"], res["K"], res["dist"], args.preview)
        summary["preview"] = str(args.preview)
    _print_json(summary)
    return 0


def run_driver(args) -> int:
    """Handler of ``calibrate driver``; returns the exit status (0)."""
    from calibration.driver import calibrate_driver, save_driver_json

    res = calibrate_driver(args.source, seconds=args.seconds, body_model=args.body_model,
                           device=args.device, camera=args.camera, model_path=args.model_path)
    out = save_driver_json(res, args.output)
    _print_json({**res, "output": str(out)})
    return 0


def main(argv=None) -> int:
    """Stand-alone entry point: ``python -m calibration.cli calibrate camera ...``."""
    from ram_avatar.errors import RamAvatarError
    from ram_avatar.utils import setup_logging

    parser = argparse.ArgumentParser(prog="python -m calibration.cli")
    parser.add_argument("-v", "--verbose", action="store_true")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except RamAvatarError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
