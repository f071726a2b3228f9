"""Video decoding and writing moved to :mod:`ram_avatar.io.video` (one low-level owner, so the
render and training layers can read frames without importing ``capture``); this name is kept
so existing imports work."""

from ram_avatar.io.video import (AlphaVideoWriter, VideoInfo, VideoWriter, fps_to_fraction,  # noqa: F401
                                 iter_frames, probe_video, read_frames)

__all__ = ["VideoInfo", "probe_video", "iter_frames", "read_frames", "VideoWriter",
           "AlphaVideoWriter", "fps_to_fraction"]
