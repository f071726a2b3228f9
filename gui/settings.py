"""The live app remembers its last settings (issue 13, item 8).

Stored with Qt's ``QSettings`` (organisation ``RAM-Avatar``, application ``Studio``: on Linux
``~/.config/RAM-Avatar/Studio.conf``; ``$RAM_AVATAR_LIVE_SETTINGS`` names an INI file
instead). The window writes them when it closes; ``ram-avatar live`` reads them at start, and
an option given on the command line wins over the remembered value. Runs with ``--frames``
(scripted, tests) neither read nor write them.

Remembered: the source (a webcam spec such as ``0@1280x720`` or a video file), the output
controls (framing, zoom, offset, size, zoom mode, background, virtual-camera key), the
lower-body pose, and the skeleton-overlay and motion-alignment toggles.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QSettings

#: remembered settings: name (the ``live`` option's dest) -> built-in default
DEFAULTS: dict[str, object] = {
    "source": "0", "framing": "none", "zoom": 1.0, "offset": "0,0", "out_size": "1280x720",
    "zoom_mode": "crop", "background": "learned", "vcam_key": "#00FF00",
    "lower_body": "stand", "overlay": False, "mda": False,
}
#: environment variable naming an INI file to use instead of Qt's per-user location
ENV = "RAM_AVATAR_LIVE_SETTINGS"


def settings_store(path: str | Path | None = None) -> QSettings:
    """The ``QSettings`` of the app: ``path`` (or ``$RAM_AVATAR_LIVE_SETTINGS``) as an INI
    file, else Qt's per-user location for ``RAM-Avatar/Studio``."""
    path = path or os.environ.get(ENV)
    if path:
        return QSettings(str(path), QSettings.Format.IniFormat)
    return QSettings("RAM-Avatar", "Studio")


def _typed(name: str, value):
    default = DEFAULTS[name]
    if isinstance(default, bool):
        return value if isinstance(value, bool) else str(value).lower() in ("true", "1", "yes")
    if isinstance(default, float):
        return float(value)
    return str(value)


def load_settings(store: QSettings) -> dict:
    """The remembered values present in ``store`` (typed as :data:`DEFAULTS`); values that
    cannot be read are left out."""
    out = {}
    for name in DEFAULTS:
        if store.contains(name):
            try:
                out[name] = _typed(name, store.value(name))
            except (TypeError, ValueError):
                continue
    return out


def save_settings(store: QSettings, values: dict) -> None:
    """Write the known names of ``values`` to ``store`` and flush it to disk."""
    for name, value in values.items():
        if name in DEFAULTS:
            store.setValue(name, value)
    store.sync()


def apply_saved(args, saved: dict) -> dict:
    """Fill the options the user left out (``None`` on ``args``) from ``saved``, else from
    :data:`DEFAULTS`; options given on the command line are kept.

    Returns:
        the names taken from ``saved`` and their values.
    """
    used = {}
    for name, default in DEFAULTS.items():
        if getattr(args, name, None) is None:
            value = saved.get(name, default)
            setattr(args, name, value)
            if name in saved:
                used[name] = value
    return used
