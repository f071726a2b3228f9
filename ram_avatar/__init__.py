"""RAM-Avatar Studio: real-time photo-realistic full-body avatars from one monocular video.

Implements "RAM-Avatar: Real-time Photo-Realistic Avatar from Monocular Videos with
Full-body Control" (Deng et al., CVPR 2024). The package imports on CPU with core
dependencies only; heavy optional parts (SMPL-X, TensorRT, the Qt app) are imported lazily.
"""

__version__ = "0.1.0"
