"""User-facing errors.

Every error a user can fix (bad input, missing files, wrong shapes) derives from
:class:`RamAvatarError`; the CLI prints its message (what was wrong and what to do) and exits
with status 2 instead of showing a traceback.
"""


class RamAvatarError(Exception):
    """Base class of all errors caused by user input or environment, with an actionable message."""


class VideoError(RamAvatarError):
    """A video is missing, unreadable, corrupt or has no decodable frames."""


class NoPersonError(RamAvatarError):
    """No person was detected in most frames of a video."""


class ModelFileError(RamAvatarError):
    """A body-model file (e.g. SMPL-X) is missing or has the wrong content."""


class SequenceFormatError(RamAvatarError):
    """A FittedSequence file has missing keys, wrong shapes or an unsupported version."""


class CheckpointError(RamAvatarError):
    """A training checkpoint is missing, corrupt or does not match the model."""


class TrainingDivergedError(RamAvatarError):
    """Training produced a non-finite loss (NaN/Inf)."""


class CaptureError(RamAvatarError):
    """A capture cannot give a usable subject (too few valid frames, the output folder holds
    another subject)."""


class RunLockedError(RamAvatarError):
    """Another live process holds the lock of the same run / subject folder."""


class DiskFullError(RamAvatarError):
    """The disk filled up while an output was written; nothing half-written is left behind."""
