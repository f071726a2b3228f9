"""``ram-avatar live``: the PySide6 window that drives an avatar from a webcam or a video.

Layout: the avatar at display size (left; scaled to the window, aspect kept) with a message
line above it; on the right the source (webcam index or video file, Browse..., a camera
picker with the camera's resolutions, Start), a source preview, toggles (skeleton overlay, motion alignment, virtual camera), Record, the
output controls (framing ``none|full|upper|head``, zoom, offset, zoom mode ``crop|camera``,
output size, background ``learned|transparent|#RRGGBB|picture``, and the virtual camera's key
colour; the same settings as ``ram-avatar live --framing ...`` and ``drive``), and the
readouts: FPS, per-stage latency (ms), end-to-end latency p50/p95 over the last frames and
dropped frames. A transparent avatar is shown over a
checkerboard, recorded to ``.webm`` (VP9 with alpha) and keyed over the key colour on the
virtual camera. The window remembers its settings when it closes (gui.settings).

All work runs on a :class:`gui.worker.LiveWorker` on its own ``QThread``; the GUI thread only
draws what the worker sends, so the window never freezes. A lost or missing webcam, a failing
reader or the end of a video shows a message while the reader retries (see
:class:`gui.sources.LatestFrameReader`). When the tracker sees nobody for a few frames, the
message line says "no person in view" and the avatar view shows it as a banner, until someone
is tracked again.

Headless use (tests, CI, benchmarks): ``QT_QPA_PLATFORM=offscreen`` and
``ram-avatar live SUBJECT --source FILE --frames N --screenshot out.png`` run N frames through
the real window and save a grab of it.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import sys
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np
from PySide6.QtCore import QSize, Qt, QThread, QTimer, Signal
from PySide6.QtGui import QFont, QImage, QPixmap
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from gui import gc_guard
from gui.settings import save_settings
from gui.sources import check_source, list_cameras, open_source
from gui.worker import DEFAULT_KEY, LiveWorker, virtual_camera_available
from ram_avatar.errors import RamAvatarError
from ram_avatar.render.composite import parse_colour
from ram_avatar.render.framing import FRAMINGS, ZOOM_MODES, OutputSettings

__all__ = ["LiveWindow", "ImageView", "run_live", "to_qimage", "STAGE_NAMES"]

log = logging.getLogger(__name__)

STAGE_NAMES = ("track", "fit", "retarget", "align", "maps", "render", "total", "latency")
#: frames of the app's rolling latency percentiles
LATENCY_WINDOW = 120
#: side of the avatar view at start-up (it grows with the window)
DISPLAY_SIZE = 512
#: frames in a row without a tracked person before "no person in view" is shown
NO_PERSON_FRAMES = 3
NO_PERSON_MESSAGE = ("no person in view: step into the camera's view, whole body visible and "
                     "facing it; the avatar holds its last pose meanwhile")
#: output sizes offered by the app (any even WxH can be typed)
OUT_SIZES = ("1280x720", "1920x1080", "960x540", "640x360")
#: backgrounds offered by the app (a #RRGGBB colour or a picture path can be typed)
BACKGROUNDS = ("learned", "transparent", "#00FF00", "#0000FF", "#FFFFFF")


def to_qimage(img: np.ndarray) -> QImage:
    """(H, W, 3) uint8 RGB -> a QImage that owns a copy of the pixels."""
    img = np.ascontiguousarray(img)
    h, w = img.shape[:2]
    return QImage(img.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class ImageView(QLabel):
    """A label that shows the latest image scaled to its size, aspect ratio kept."""

    def __init__(self, min_size: int, text: str = ""):
        super().__init__(text)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setMinimumSize(min_size, min_size)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setStyleSheet("background: #202020; color: #bbbbbb;")
        self._image: QImage | None = None

    def set_image(self, img: np.ndarray) -> None:
        self._image = to_qimage(img)
        self._refresh()

    def resizeEvent(self, event):  # noqa: N802 (Qt API)
        super().resizeEvent(event)
        self._refresh()

    def _refresh(self) -> None:
        if self._image is None:
            return
        pix = QPixmap.fromImage(self._image).scaled(
            self.size(), Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
        self.setPixmap(pix)


class LiveWindow(QMainWindow):
    """The live avatar window (module docstring).

    Args:
        subject_dir: the avatar to drive.
        source: initial source (webcam index, ``"0"``, or a video path); None: wait for the user.
        backend, device, mda, camera, run_name, driver: passed to the runtime.
        runtime_factory: overrides how the runtime is built (tests); default builds
            :class:`~ram_avatar.runtime.avatar_runtime.AvatarRuntime`.
        source_factory: overrides how a source spec is opened (tests); default
            :func:`gui.sources.open_source`.
        loop: restart video files at their end.
        retry_s: seconds between reopening attempts of a failed source.
        record_dir: folder of recordings (default: the current directory).
        output: initial :class:`~ram_avatar.render.framing.OutputSettings` (framing, zoom,
            offset, size, background, zoom mode); default the rendered square, learned
            background. key_colour: (r, g, b) behind a transparent avatar on the virtual camera.
        settings_store: a ``QSettings`` (gui.settings) the window writes its settings to when it
            closes; None remembers nothing.
        camera_lister: lists the cameras of the picker (tests); default
            :func:`gui.sources.list_cameras`.

    Signals:
        frame_shown(int): a new avatar frame was drawn (argument: frames processed so far).
        status_changed(str, str): a status message was shown (level, text).
    """

    frame_shown = Signal(int)
    status_changed = Signal(str, str)

    def __init__(self, subject_dir: str | Path, source=None, backend: str = "auto",
                 device: str = "cpu", mda: bool = False, camera: str | Path | None = None,
                 driver: str | Path | None = None,
                 run_name: str = "default", runtime_factory: Callable[[], object] | None = None,
                 source_factory: Callable[[object], object] | None = None, loop: bool = False,
                 retry_s: float = 1.0, record_dir: str | Path | None = None,
                 max_source_failures: int | None = None, lower_body: str = "stand",
                 output: OutputSettings | None = None, key_colour=DEFAULT_KEY,
                 settings_store=None, camera_lister: Callable[[], tuple] | None = None):
        super().__init__()
        self.settings_store = settings_store
        self.camera_lister = camera_lister or list_cameras
        self.no_person_frames = 0
        self.subject_dir = Path(subject_dir)
        self.setWindowTitle(f"RAM-Avatar live - {self.subject_dir.name}")
        self.record_dir = Path(record_dir) if record_dir else Path.cwd()
        self.frames_shown = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.last_packet: dict | None = None
        self.messages: list[tuple[str, str]] = []
        self.recording = False
        self.recording_path: str | None = None
        if runtime_factory is None:
            def runtime_factory():
                from ram_avatar.runtime.avatar_runtime import AvatarRuntime

                return AvatarRuntime(self.subject_dir, backend=backend, device=device, mda=mda,
                                     camera=camera, run_name=run_name, driver=driver)
        self.worker = LiveWorker(runtime_factory, source_factory or open_source, retry_s=retry_s,
                                 loop=loop, max_source_failures=max_source_failures)
        self._build_ui(source)
        self.mda_box.setChecked(bool(mda))
        self.worker.set_mda(bool(mda))
        self.lower_body_box.setCurrentText(lower_body)
        self.worker.set_lower_body(lower_body)
        self.set_output_controls(output or OutputSettings(), key_colour)
        self._output_signals_connected = True
        self.thread = QThread(self)
        self.thread.setObjectName("avatar-worker")
        self.worker.moveToThread(self.thread)
        self.thread.started.connect(self.worker.run)
        self.worker.frame_ready.connect(self._on_frame)
        self.worker.status.connect(self.show_status)
        self.worker.runtime_ready.connect(self._on_runtime_ready)
        self.worker.recording_changed.connect(self._on_recording_changed)
        self.worker.virtual_camera_changed.connect(self._on_vcam_changed)
        self.worker.finished.connect(self.thread.quit)
        gc_guard.acquire()      # no cyclic collection on the worker's threads (gui.gc_guard)
        self._gc_held = True
        self.thread.start()
        if source is not None and str(source) != "":
            self.start_source(source)

    # -- UI -----------------------------------------------------------------------------------
    def _build_ui(self, source) -> None:
        central = QWidget()
        root = QHBoxLayout(central)
        left = QVBoxLayout()
        self.message = QLabel("starting ...")
        self.message.setWordWrap(True)
        self.message.setMinimumWidth(DISPLAY_SIZE)
        self.message.setMaximumWidth(2 * DISPLAY_SIZE)
        left.addWidget(self.message)
        self.avatar_view = ImageView(DISPLAY_SIZE, "the avatar appears here")
        left.addWidget(self.avatar_view, 1)
        root.addLayout(left, 1)

        panel = QVBoxLayout()
        src_box = QGroupBox("Source")
        src = QVBoxLayout(src_box)
        row = QHBoxLayout()
        self.source_edit = QLineEdit("" if source is None else str(source))
        self.source_edit.setPlaceholderText("webcam index (0) or video file")
        self.source_edit.returnPressed.connect(self._start_clicked)
        row.addWidget(self.source_edit, 1)
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        row.addWidget(browse)
        src.addLayout(row)
        cams = QHBoxLayout()
        self.camera_box = QComboBox()
        self.camera_box.setToolTip("the cameras of this computer; choosing one puts it in the "
                                   "source field (press Start)")
        self.resolution_box = QComboBox()
        self.resolution_box.setToolTip("resolution asked of the camera")
        refresh = QPushButton("Refresh")
        refresh.setToolTip("list the cameras again (after plugging one in)")
        refresh.clicked.connect(self.refresh_cameras)
        cams.addWidget(self.camera_box, 3)      # the name matters more than the size
        cams.addWidget(self.resolution_box, 2)
        cams.addWidget(refresh)
        src.addLayout(cams)
        self.cameras: list = []
        self.refresh_cameras()
        self.camera_box.activated.connect(self._camera_chosen)
        self.resolution_box.activated.connect(self._camera_chosen)
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self._start_clicked)
        src.addWidget(self.start_button)
        self.preview = ImageView(160, "no source")
        self.preview.setMinimumSize(256, 144)
        self.preview.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        src.addWidget(self.preview)
        panel.addWidget(src_box)

        opts = QGroupBox("Options")
        ol = QVBoxLayout(opts)
        self.overlay_box = QCheckBox("Skeleton overlay")
        self.overlay_box.toggled.connect(lambda on: self.worker.set_overlay(on))
        ol.addWidget(self.overlay_box)
        self.mda_box = QCheckBox("Motion alignment (MDA)")
        self.mda_box.setEnabled(False)
        self.mda_box.setToolTip("available once the avatar is loaded, when `ram-avatar fit-mda` was run")
        self.mda_box.toggled.connect(lambda on: self.worker.set_mda(on))
        ol.addWidget(self.mda_box)
        row_lb = QHBoxLayout()
        row_lb.addWidget(QLabel("Legs out of view:"))
        self.lower_body_box = QComboBox()
        self.lower_body_box.addItems(["stand", "sit"])
        self.lower_body_box.setToolTip("pose held by the legs when the camera does not see them "
                                       "(a webcam at a desk)")
        self.lower_body_box.currentTextChanged.connect(lambda m: self.worker.set_lower_body(m))
        row_lb.addWidget(self.lower_body_box)
        ol.addLayout(row_lb)
        self.vcam_box = QCheckBox("Virtual camera")
        ok, why = virtual_camera_available()
        self.vcam_box.setEnabled(ok)
        self.vcam_box.setToolTip(why)
        self.vcam_box.clicked.connect(lambda on: self.worker.set_virtual_camera(on))
        ol.addWidget(self.vcam_box)
        self.record_button = QPushButton("Record")
        self.record_button.setCheckable(True)
        self.record_button.clicked.connect(self._record_clicked)
        ol.addWidget(self.record_button)
        panel.addWidget(opts)
        panel.addWidget(self._build_output_box())

        stats = QGroupBox("Performance")
        form = QFormLayout(stats)
        mono = QFont("monospace")
        mono.setStyleHint(QFont.StyleHint.Monospace)
        self.fps_label = QLabel("FPS: -")
        big = QFont(mono)
        big.setPointSize(big.pointSize() + 4)
        big.setBold(True)
        self.fps_label.setFont(big)
        form.addRow(self.fps_label)
        self.latency_labels: dict[str, QLabel] = {}
        for name in STAGE_NAMES:
            lab = QLabel("-")
            lab.setFont(mono)
            self.latency_labels[name] = lab
            form.addRow(f"{name} (ms)", lab)
        self.latency_pct_label = QLabel("-")
        self.latency_pct_label.setFont(mono)
        self.latency_pct_label.setToolTip(f"end-to-end latency over the last {LATENCY_WINDOW} "
                                          "frames: median / 95th percentile")
        form.addRow("latency p50/p95", self.latency_pct_label)
        self.dropped_label = QLabel("0")
        form.addRow("dropped frames", self.dropped_label)
        self.info_label = QLabel("-")
        self.info_label.setWordWrap(True)
        form.addRow("renderer", self.info_label)
        panel.addWidget(stats)
        panel.addStretch(1)
        side = QWidget()
        side.setLayout(panel)
        side.setFixedWidth(300)
        root.addWidget(side)
        self.setCentralWidget(central)
        self.statusBar().showMessage("starting ...")

    def _build_output_box(self) -> QGroupBox:
        """The output controls: framing, zoom, offset, zoom mode, size, background, key."""
        self._output_signals_connected = False
        box = QGroupBox("Output")
        form = QFormLayout(box)
        self.framing_box = QComboBox()
        self.framing_box.addItems(("none",) + FRAMINGS)
        self.framing_box.setToolTip("none: the rendered square; full / upper (head to hips) / "
                                    "head (head and shoulders) in a 16:9 frame")
        form.addRow("Framing", self.framing_box)
        self.zoom_spin = QDoubleSpinBox()
        self.zoom_spin.setRange(0.25, 8.0)
        self.zoom_spin.setSingleStep(0.1)
        self.zoom_spin.setValue(1.0)
        self.zoom_spin.setToolTip("> 1 closer, < 1 farther (with a framing)")
        form.addRow("Zoom", self.zoom_spin)
        row = QHBoxLayout()
        self.offset_x_spin, self.offset_y_spin = QDoubleSpinBox(), QDoubleSpinBox()
        for sp in (self.offset_x_spin, self.offset_y_spin):
            sp.setRange(-1.0, 1.0)
            sp.setSingleStep(0.05)
            sp.setToolTip("shift of the view, fraction of its width (x) / height (y; - is up)")
            row.addWidget(sp)
        form.addRow("Offset x, y", row)
        self.zoom_mode_box = QComboBox()
        self.zoom_mode_box.addItems(ZOOM_MODES)
        self.zoom_mode_box.setToolTip("crop: crop and upscale the rendered frame; camera: move "
                                      "the virtual camera closer (renderers trained with scale "
                                      "augmentation draw the framed part at full resolution)")
        form.addRow("Zoom mode", self.zoom_mode_box)
        self.out_size_box = QComboBox()
        self.out_size_box.setEditable(True)
        self.out_size_box.addItems(OUT_SIZES)
        form.addRow("Output size", self.out_size_box)
        row = QHBoxLayout()
        self.background_box = QComboBox()
        self.background_box.setEditable(True)
        self.background_box.addItems(BACKGROUNDS)
        self.background_box.setToolTip("learned (the training room), transparent (alpha; "
                                       "records .webm), a colour #RRGGBB or a picture")
        row.addWidget(self.background_box, 1)
        pick = QPushButton("Picture...")
        pick.clicked.connect(self._pick_background)
        row.addWidget(pick)
        form.addRow("Background", row)
        self.key_edit = QLineEdit("#00FF00")
        self.key_edit.setToolTip("virtual cameras carry no alpha: a transparent avatar is sent "
                                 "over this colour (use OBS's chroma key filter)")
        form.addRow("Camera key", self.key_edit)
        self.framing_box.currentTextChanged.connect(self._output_changed)
        self.zoom_spin.valueChanged.connect(self._output_changed)
        self.offset_x_spin.valueChanged.connect(self._output_changed)
        self.offset_y_spin.valueChanged.connect(self._output_changed)
        self.zoom_mode_box.currentTextChanged.connect(self._output_changed)
        for combo in (self.out_size_box, self.background_box):  # typed: applied when done
            combo.textActivated.connect(self._output_changed)
            combo.lineEdit().editingFinished.connect(self._output_changed)
        self.key_edit.editingFinished.connect(self._key_changed)
        return box

    def set_output_controls(self, settings: OutputSettings, key_colour=DEFAULT_KEY) -> None:
        """Show ``settings`` in the output controls and hand them to the worker."""
        self._show_output(settings, key_colour)
        self.output = settings
        self.worker.set_output(settings)
        self.worker.set_key_colour(key_colour)

    def _show_output(self, settings: OutputSettings, key_colour=None) -> None:
        was, self._output_signals_connected = self._output_signals_connected, False
        try:
            self.framing_box.setCurrentText(settings.framing or "none")
            self.zoom_spin.setValue(settings.zoom)
            self.offset_x_spin.setValue(settings.offset[0])
            self.offset_y_spin.setValue(settings.offset[1])
            self.zoom_mode_box.setCurrentText(settings.zoom_mode)
            self.out_size_box.setCurrentText("%dx%d" % tuple(settings.out_size))
            self.background_box.setCurrentText(settings.spec)
            if key_colour is not None:
                self.key_edit.setText("#%02X%02X%02X" % tuple(key_colour))
        finally:
            self._output_signals_connected = was

    def output_from_controls(self) -> OutputSettings:
        """Validated settings from the controls.

        Raises:
            RamAvatarError (FramingError / BackgroundError): a value that cannot be used.
        """
        return OutputSettings.parse(
            background=self.background_box.currentText().strip() or "learned",
            framing=self.framing_box.currentText(), zoom=self.zoom_spin.value(),
            offset=(self.offset_x_spin.value(), self.offset_y_spin.value()),
            out_size=self.out_size_box.currentText().strip(),
            zoom_mode=self.zoom_mode_box.currentText(),
            max_camera_zoom=self.output.max_camera_zoom)

    def _output_changed(self, *_args) -> None:
        if not self._output_signals_connected:
            return
        try:
            settings = self.output_from_controls()
        except RamAvatarError as e:
            self.show_status("warning", str(e))
            self._show_output(self.output)  # back to the settings in use
            return
        if settings != self.output:
            self.output = settings
            self.worker.set_output(settings)

    def _key_changed(self) -> None:
        try:
            rgb = parse_colour(self.key_edit.text())
        except RamAvatarError as e:
            self.show_status("warning", str(e))
            return
        self.worker.set_key_colour(rgb)

    def _pick_background(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Background picture", str(Path.cwd()),
                                              "Pictures (*.png *.jpg *.jpeg *.bmp);;All files (*)")
        if path:
            self.background_box.setCurrentText(path)
            self._output_changed()

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(DISPLAY_SIZE + 340, DISPLAY_SIZE + 260)

    # -- cameras and remembered settings -----------------------------------------------------
    def refresh_cameras(self) -> None:
        """Fill the camera picker (name and index) and, for the chosen camera, its resolutions."""
        self.cameras, how = self.camera_lister()
        self.camera_box.clear()
        for cam in self.cameras:
            self.camera_box.addItem(f"{cam.name} ({cam.index})", cam.index)
        if not self.cameras:
            self.camera_box.addItem("no camera found")
        self.camera_box.setEnabled(bool(self.cameras))
        self.camera_box.setToolTip(f"cameras listed with {how}" if self.cameras else
                                   "no camera found: plug one in and press Refresh, or choose "
                                   "a video file")
        self._fill_resolutions()

    def _fill_resolutions(self) -> None:
        self.resolution_box.clear()
        i = self.camera_box.currentIndex()
        if 0 <= i < len(self.cameras):
            for w, h in self.cameras[i].resolutions:
                self.resolution_box.addItem(f"{w}x{h}", (w, h))
        self.resolution_box.setEnabled(self.resolution_box.count() > 0)

    def _camera_chosen(self, *_args) -> None:
        i = self.camera_box.currentIndex()
        if not 0 <= i < len(self.cameras):
            return
        if self.sender() is self.camera_box:
            self._fill_resolutions()
        size = self.resolution_box.currentData()
        self.source_edit.setText(self.cameras[i].spec(tuple(size) if size else None))

    def current_settings(self) -> dict:
        """The window's settings, as gui.settings remembers them."""
        return {"source": self.source_edit.text().strip() or "0",
                "framing": self.framing_box.currentText(), "zoom": self.zoom_spin.value(),
                "offset": f"{self.offset_x_spin.value():g},{self.offset_y_spin.value():g}",
                "out_size": self.out_size_box.currentText().strip(),
                "zoom_mode": self.zoom_mode_box.currentText(),
                "background": self.background_box.currentText().strip() or "learned",
                "vcam_key": self.key_edit.text().strip(),
                "lower_body": self.lower_body_box.currentText(),
                "overlay": self.overlay_box.isChecked(), "mda": self.mda_box.isChecked()}

    def save_settings(self) -> None:
        """Remember :meth:`current_settings` (no-op without a settings store)."""
        if self.settings_store is not None:
            save_settings(self.settings_store, self.current_settings())

    # -- actions ------------------------------------------------------------------------------
    def start_source(self, spec) -> None:
        """Switch the worker to ``spec`` (webcam index or video path)."""
        self.source_edit.setText(str(spec))
        self.show_status("info", f"opening {spec} ...")
        self.worker.set_source(spec)

    def _start_clicked(self) -> None:
        spec = self.source_edit.text().strip()
        if not spec:
            self.show_status("warning", "enter a webcam index (e.g. 0) or choose a video file")
            return
        self.start_source(spec)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Driving video", str(Path.cwd()),
                                              "Videos (*.mp4 *.mov *.avi *.mkv *.webm);;All files (*)")
        if path:
            self.start_source(path)

    def _record_clicked(self, on: bool) -> None:
        if on:
            stamp = _dt.datetime.now().strftime("%Y%m%d_%H%M%S")
            ext = ".webm" if self.output.has_alpha else ".mp4"  # alpha needs VP9 (or ProRes)
            self.start_recording(self.record_dir / f"ram_avatar_live_{stamp}{ext}")
        else:
            self.stop_recording()

    def start_recording(self, path: str | Path) -> None:
        self.record_button.setChecked(True)
        self.worker.start_recording(path)

    def stop_recording(self) -> None:
        self.record_button.setChecked(False)
        self.worker.stop_recording()

    # -- worker signals -----------------------------------------------------------------------
    def show_status(self, level: str, text: str) -> None:
        self.messages.append((level, text))
        color = {"error": "#d03030", "warning": "#c08000", "ended": "#c08000"}.get(level, "#3070c0")
        self.message.setText(text)
        self.message.setStyleSheet(f"color: {color}; font-weight: bold;")
        self.statusBar().showMessage(text)
        self.status_changed.emit(level, text)

    def _on_runtime_ready(self, info: dict) -> None:
        self.info_label.setText(f"{info['backend']} {info['resolution']}x{info['resolution']}\n"
                                f"{', '.join(info['providers'])}")
        self.mda_box.setEnabled(bool(info["mda_available"]))
        self.mda_box.setToolTip(str(info["mda_status"]))
        if not info["mda_available"]:
            self.mda_box.setChecked(False)

    def _on_frame(self, packet: dict) -> None:
        self.last_packet = packet
        avatar = packet["avatar"]
        if packet.get("person", True):
            if self.no_person_frames >= NO_PERSON_FRAMES:
                self.show_status("info", "person in view: tracking")
            self.no_person_frames = 0
        else:
            self.no_person_frames += 1
            if self.no_person_frames == NO_PERSON_FRAMES:
                self.show_status("warning", NO_PERSON_MESSAGE)
            if self.no_person_frames >= NO_PERSON_FRAMES:
                avatar = _banner(avatar, "no person in view")
        self.avatar_view.set_image(avatar)
        self.preview.set_image(packet["preview"])
        self.fps_label.setText(f"FPS: {packet['fps']:.1f}")
        for name, lab in self.latency_labels.items():
            v = packet["stats"].get(name)
            lab.setText("-" if v is None else f"{v:7.1f}")
        if packet["stats"].get("latency") is not None:
            self.latencies.append(float(packet["stats"]["latency"]))
            p50, p95 = np.percentile(np.asarray(self.latencies), (50, 95))
            self.latency_pct_label.setText(f"{p50:5.0f} / {p95:5.0f}")
        self.dropped_label.setText(str(packet["dropped"]))
        self.frames_shown += 1
        self.frame_shown.emit(packet["frames"])

    def _on_recording_changed(self, on: bool, text: str) -> None:
        self.recording = on
        if on:
            self.recording_path = text
        self.record_button.setChecked(on)
        self.record_button.setText("Stop recording" if on else "Record")
        self.show_status("info" if on or text.startswith("saved") else "warning", text)

    def _on_vcam_changed(self, on: bool, text: str) -> None:
        self.vcam_box.setChecked(on)
        self.show_status("info" if on or text.endswith("off") else "warning", text)

    # -- shutdown -----------------------------------------------------------------------------
    def shutdown(self, timeout_ms: int = 10000) -> bool:
        """Stop the worker and wait for its thread; True when it ended in time.

        Once the thread has ended, automatic garbage collection is handed back
        (:func:`gui.gc_guard.release`); it stays on the GUI thread while the thread runs.
        """
        self.worker.stop()
        self.thread.quit()
        ended = bool(self.thread.wait(timeout_ms))
        if ended and self._gc_held:
            self._gc_held = False
            gc_guard.release()
        return ended

    def dispose(self, timeout_ms: int = 10000) -> bool:
        """Shut down, close (:meth:`closeEvent`: the settings are saved) and delete the
        window's C++ side now, on the GUI thread.

        Use it where the window is not the application's last act (tests, scripted runs): a
        window left to Python's collector may otherwise be destroyed on another thread
        (:mod:`gui.gc_guard`). Returns what :meth:`shutdown` returned.
        """
        ended = self.shutdown(timeout_ms)
        self.close()
        gc_guard.delete_now(self)
        return ended

    def closeEvent(self, event):  # noqa: N802 (Qt API)
        self.save_settings()
        self.shutdown()
        super().closeEvent(event)


def _banner(img: np.ndarray, text: str) -> np.ndarray:
    """A copy of ``img`` (H, W, 3) uint8 with ``text`` on a dark strip across its top (display
    only: recordings and the virtual camera get the plain avatar)."""
    import cv2

    out = img.copy()
    h, w = out.shape[:2]
    strip = max(16, h // 12)
    out[:strip] = (out[:strip] * 0.35).astype(np.uint8)
    scale = strip / 40.0
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(out, text, (max(2, (w - tw) // 2), (strip + th) // 2), cv2.FONT_HERSHEY_SIMPLEX,
                scale, (255, 200, 60), max(1, strip // 20), cv2.LINE_AA)
    return out


def _ensure_platform(headless: bool) -> None:
    """Use Qt's offscreen platform when asked to, or when there is no display at all."""
    if "QT_QPA_PLATFORM" in os.environ:
        return
    if headless or not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                        or sys.platform in ("win32", "darwin")):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"


def run_live(subject_dir: str | Path, source="0", backend: str = "auto", device: str = "cpu",
             mda: bool = False, camera: str | Path | None = None, run_name: str = "default",
             driver: str | Path | None = None,
             frames: int | None = None, screenshot: str | Path | None = None,
             record: str | Path | None = None, loop: bool = False, timeout_s: float = 600.0,
             headless: bool | None = None, overlay: bool = False, lower_body: str = "stand",
             output: OutputSettings | None = None, key_colour=DEFAULT_KEY,
             virtual_camera: bool = False, settings_store=None) -> dict:
    """Open the live window; with ``frames`` / ``screenshot`` run that many frames and close.

    Args:
        frames: process this many frames, then save ``screenshot`` (if given) and quit.
        screenshot: PNG path of a grab of the whole window (after ``frames`` frames, default 30).
        record: start recording the avatar to this mp4 at once.
        overlay: start with the skeleton overlay on.
        lower_body: ``stand`` | ``sit``: pose of legs the camera does not see.
        output: framing, zoom, offset, size, background and zoom mode
            (:class:`~ram_avatar.render.framing.OutputSettings`); ``record`` must then be
            ``.webm`` / ``.mov`` for a transparent background.
        key_colour: (r, g, b) behind a transparent avatar on the virtual camera.
        virtual_camera: start the virtual camera at once (needs pyvirtualcam and a backend).
        settings_store: where the window remembers its settings when it closes (gui.settings);
            None remembers nothing.
        timeout_s: in ``frames`` mode, give up after this many seconds.
        headless: force the offscreen platform (default: when ``frames`` / ``screenshot`` are
            given, or when there is no display).
    Returns:
        summary: frames processed, fps, mean per-stage latency (ms), screenshot path, messages.
    Raises:
        SourceError / VideoError: in ``frames`` mode, the source file is missing or unreadable,
            or the webcam cannot be opened in 3 tries (within seconds, before any window opens);
            a source lost later ends the run after 3 failed reopenings (``completed`` False).
    """
    if screenshot is not None and frames is None:
        frames = 30
    if frames is not None:
        check_source(source, tries=3, wait_s=1.0)
    _ensure_platform(bool(headless) if headless is not None else frames is not None)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    win = LiveWindow(subject_dir, source=source, backend=backend, device=device, mda=mda,
                     camera=camera, run_name=run_name, loop=loop, driver=driver,
                     max_source_failures=3 if frames is not None else None, lower_body=lower_body,
                     output=output, key_colour=key_colour, settings_store=settings_store)
    win.resize(win.sizeHint())
    win.overlay_box.setChecked(bool(overlay))
    win.show()
    if record is not None:
        win.start_recording(record)
    if virtual_camera:
        win.vcam_box.setChecked(True)
        win.worker.set_virtual_camera(True)
    sums: dict[str, float] = {}
    result = {"frames": 0, "completed": frames is None}

    def on_frame(n: int) -> None:
        if frames is None:
            return
        stats = win.last_packet["stats"]
        if not stats.get("full_fit"):
            for k in STAGE_NAMES:
                sums[k] = sums.get(k, 0.0) + float(stats[k])
            sums["_n"] = sums.get("_n", 0.0) + 1
        result["frames"] = n
        result["output_size"] = list(win.last_packet["output"].shape[1::-1])
        result["output_channels"] = int(win.last_packet["output"].shape[2])
        if n >= frames:
            result["completed"] = True
            finish()

    def on_status(level: str, text: str) -> None:
        if frames is None:
            return
        if level == "ended" or (level == "error" and text.startswith(
                ("cannot load the avatar", "cannot use the output settings"))):
            QTimer.singleShot(200, finish)  # the source ended / the avatar failed before N frames

    finished = {"done": False}

    def finish() -> None:
        if finished["done"]:
            return
        finished["done"] = True
        if record is not None:
            win.stop_recording()
        app.processEvents()
        if screenshot is not None:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            win.grab().save(str(screenshot))
        app.quit()

    win.frame_shown.connect(on_frame)
    win.status_changed.connect(on_status)
    if frames is not None:
        QTimer.singleShot(int(timeout_s * 1000), finish)
    app.exec()
    win.shutdown()
    n = sums.pop("_n", 0.0)
    summary = {"frames": result["frames"], "completed": bool(result["completed"]),
               "output_size": result.get("output_size"),
               "output_channels": result.get("output_channels"),
               "fps": round(float(win.worker.fps), 2),
               "latency_ms_mean": {k: round(v / n, 1) for k, v in sums.items()} if n else {},
               "screenshot": str(screenshot) if screenshot else None,
               "messages": [m for _, m in win.messages[-5:]]}
    win.dispose()   # closed (its settings saved) and deleted here, on the GUI thread
    return summary
