"""Calibration: camera intrinsics (OpenCV checkerboard / ChArUco) and driver-to-avatar shape.

- :func:`calibration.camera.calibrate_camera` -> ``camera.json`` read by capture
  (:func:`ram_avatar.io.camera.load_camera`).
- :func:`calibration.driver.calibrate_driver` -> ``driver.json`` (the driver's body shape) read
  by retargeting.
- :func:`calibration.cli.register` adds ``ram-avatar calibrate camera|driver``.

This package imports :mod:`ram_avatar`, never the reverse. Submodules are imported lazily so that
``import calibration`` stays cheap.
"""

from __future__ import annotations

__all__ = ["calibrate_camera", "save_camera_json", "undistortion_preview", "calibrate_driver",
           "save_driver_json", "load_driver_json"]


def __getattr__(name: str):
    if name in ("calibrate_camera", "save_camera_json", "undistortion_preview"):
        from calibration import camera

        return getattr(camera, name)
    if name in ("calibrate_driver", "save_driver_json", "load_driver_json"):
        from calibration import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'calibration' has no attribute {name!r}")
