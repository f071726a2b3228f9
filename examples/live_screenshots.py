"""Screenshots of the live app in each framing and background mode (issue 13 closing note).

Opens the real window offscreen on a trained subject driven by a video (looping), and for each
output setting (``--framing`` x ``--background``) waits until a few frames with that setting have
been shown, then saves a grab of the whole window as ``<out>/live_<framing>_<background>.png``.
One runtime serves every setting (the app's own output controls are set, as a user would).

Usage::

    QT_QPA_PLATFORM=offscreen python examples/live_screenshots.py SUBJECT \\
        --source examples/basketball_drive.mp4 --out /tmp/live_shots
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

SETTINGS = [("none", "learned"), ("full", "learned"), ("upper", "learned"), ("head", "learned"),
            ("upper", "transparent"), ("upper", "#00FF00"), ("full", "transparent")]


def main(argv=None) -> dict:
    from PySide6.QtWidgets import QApplication

    from gui.app import LiveWindow
    from ram_avatar.render.framing import OutputSettings

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("subject")
    p.add_argument("--source", default="examples/basketball_drive.mp4")
    p.add_argument("--out", default="/tmp/live_shots")
    p.add_argument("--frames", type=int, default=4, help="frames shown per setting before the grab")
    p.add_argument("--zoom-mode", default="crop", choices=["crop", "camera"])
    p.add_argument("--timeout", type=float, default=300.0)
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication([])
    win = LiveWindow(a.subject, source=a.source, device="cpu", loop=True)
    win.resize(win.sizeHint())
    win.show()
    shots = {}

    def wait(cond, what):
        t0 = time.monotonic()
        while not cond():
            app.processEvents()
            time.sleep(0.01)
            if time.monotonic() - t0 > a.timeout:
                raise SystemExit(f"timed out waiting for {what}: {win.messages[-3:]}")

    try:
        wait(lambda: win.frames_shown >= 2, "the first frames")
        for framing, bg in SETTINGS:
            s = OutputSettings.parse(bg, framing, out_size="1280x720", zoom_mode=a.zoom_mode)
            win.set_output_controls(s)
            W, H = s.output_size(win.worker.runtime.resolution)
            C = 4 if s.has_alpha else 3
            wait(lambda: win.last_packet["output"].shape == (H, W, C), f"{framing}/{bg} frames")
            n = win.frames_shown
            wait(lambda: win.frames_shown >= n + a.frames, f"{framing}/{bg} frames")
            name = f"live_{framing}_{bg.lstrip('#')}.png"
            win.grab().save(str(out / name))
            shots[f"{framing}/{bg}"] = str(out / name)
            print(framing, bg, out / name, flush=True)
    finally:
        win.shutdown()
        win.close()
    (out / "screenshots.json").write_text(json.dumps(shots, indent=1))
    return shots


if __name__ == "__main__":
    main()
