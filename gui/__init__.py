"""PySide6 live app of RAM-Avatar Studio (optional extra ``ram-avatar-studio[gui]``).

``ram-avatar live SUBJECT_DIR --source 0`` opens :class:`gui.app.LiveWindow`: webcam or video
-> :class:`ram_avatar.runtime.avatar_runtime.AvatarRuntime` on a worker thread -> the avatar at
display size, with FPS and per-stage latency, skeleton overlay, motion alignment, recording to
mp4 and an optional virtual camera. The package uses ``ram_avatar.runtime`` (and the video
writer / frame decoder of ``ram_avatar.capture.video``); nothing in ``ram_avatar`` imports it.
Importing ``gui`` itself is cheap; Qt is imported by ``gui.app`` / ``gui.worker``.
"""
