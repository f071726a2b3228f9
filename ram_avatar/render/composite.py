"""Background modes of rendered avatar frames: ``--background learned|transparent|#RRGGBB|IMAGE``.

The renderer (:class:`ram_avatar.models.renderer.AvatarRenderer`) predicts a foreground colour
``fg`` and an alpha, and composites them over the background it learned from the training room:
``rgb = alpha * fg + (1 - alpha) * bg_learned``. Any other background ``c`` follows from the
composited frame and the alpha alone, without the foreground:

    alpha * fg + (1 - alpha) * c  =  rgb + (1 - alpha) * (c - bg_learned)

so an engine that outputs ``rgb`` and ``alpha`` (torch, or an ONNX export with the ``alpha``
output) supports every mode. ``transparent`` returns straight (non-premultiplied) RGBA with
``fg`` recovered as ``(rgb - (1 - alpha) bg_learned) / alpha`` where alpha is large enough.

Shapes: images ``(N,3,H,W)`` float in [0,1], alpha ``(N,1,H,W)``, learned background
``(1,3,H,W)``; numpy ``(N,H,W,C)`` uint8 variants in :func:`compose_uint8`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ram_avatar.errors import RamAvatarError

MODES = ("learned", "transparent", "colour", "image")
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


class BackgroundError(RamAvatarError, ValueError):
    """A ``--background`` value that is neither a mode, a colour nor a readable image."""


@dataclass(frozen=True)
class Background:
    """A parsed ``--background`` value.

    Attributes:
        mode: ``learned``, ``transparent``, ``colour`` or ``image``.
        colour: (r, g, b) in [0,1] for ``colour``.
        image: path of the background picture for ``image``.
    """

    mode: str
    colour: tuple[float, float, float] | None = None
    image: Path | None = None

    @property
    def has_alpha(self) -> bool:
        """True when the output carries an alpha channel (``transparent``)."""
        return self.mode == "transparent"

    def tensor(self, size: tuple[int, int], device=None) -> torch.Tensor | None:
        """The background as ``(1,3,H,W)`` float in [0,1] (``colour``/``image``), else None.

        Raises:
            BackgroundError: the image cannot be read.
        """
        H, W = size
        if self.mode == "colour":
            return torch.tensor(self.colour, dtype=torch.float32, device=device).view(1, 3, 1, 1) \
                .expand(1, 3, H, W)
        if self.mode == "image":
            import cv2

            img = cv2.imread(str(self.image), cv2.IMREAD_COLOR)
            if img is None:
                raise BackgroundError(f"cannot read background image {self.image}: give a PNG "
                                      f"or JPEG file, a colour (#RRGGBB), 'learned' or "
                                      f"'transparent'")
            img = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), (W, H),
                             interpolation=cv2.INTER_AREA)
            return torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255.0).to(device)
        return None


def parse_background(spec: str | None) -> Background:
    """Parse ``learned`` (default for None), ``transparent``, ``#RRGGBB`` / ``RRGGBB`` or an
    image path.

    Raises:
        BackgroundError: an unknown word that is not an existing file.
    """
    if spec is None or spec == "learned":
        return Background("learned")
    if spec == "transparent":
        return Background("transparent")
    m = _HEX.match(spec)
    if m and not Path(spec).is_file():
        h = m.group(1)
        return Background("colour", colour=tuple(int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4)))
    path = Path(spec)
    if path.is_file():
        return Background("image", image=path)
    raise BackgroundError(f"--background {spec!r} is not understood: use learned, transparent, "
                          f"a colour like #00FF00, or the path of an existing image")


def compose(rgb: torch.Tensor, alpha: torch.Tensor, learned: torch.Tensor,
            background: Background) -> torch.Tensor:
    """Re-composite renderer output over ``background`` (module docstring).

    Args:
        rgb: ``(N,3,H,W)`` frames composited over the learned background, [0,1].
        alpha: ``(N,1,H,W)`` the renderer's alpha, [0,1].
        learned: ``(1,3,H,W)`` the learned background, [0,1].
        background: parsed mode.

    Returns:
        ``(N,3,H,W)`` for learned/colour/image, ``(N,4,H,W)`` straight RGBA for transparent.
    """
    if background.mode == "learned":
        return rgb
    alpha = alpha.clamp(0, 1)
    learned = learned.to(rgb)
    if background.mode == "transparent":
        premult = (rgb - (1.0 - alpha) * learned).clamp(min=0)
        fg = torch.where(alpha > 1e-3, premult / alpha.clamp_min(1e-3), torch.zeros_like(rgb))
        return torch.cat([fg.clamp(0, 1), alpha], dim=1)
    c = background.tensor(rgb.shape[-2:], device=rgb.device)
    return (rgb + (1.0 - alpha) * (c - learned)).clamp(0, 1)


def compose_uint8(rgb: np.ndarray, alpha: np.ndarray, learned: np.ndarray,
                  background: Background) -> np.ndarray:
    """:func:`compose` on uint8 frames: ``rgb (N,H,W,3)``, ``alpha (N,H,W)`` or ``(N,H,W,1)``,
    ``learned (H,W,3)`` -> ``(N,H,W,3)`` or ``(N,H,W,4)`` uint8."""
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float() / 255.0
    a = torch.from_numpy(np.ascontiguousarray(alpha)).float()
    a = (a if a.dim() == 4 else a[..., None]).permute(0, 3, 1, 2)
    a = a / 255.0 if alpha.dtype == np.uint8 else a
    bg = torch.from_numpy(np.ascontiguousarray(learned)).permute(2, 0, 1)[None].float() / 255.0
    out = compose(t, a, bg, background)
    return (out.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def replace_background_uint8(rgb: np.ndarray, alpha: np.ndarray, learned: np.ndarray,
                             new: np.ndarray) -> np.ndarray:
    """Swap the learned background of opaque frames for another picture (module docstring:
    ``rgb + (1 - alpha) (new - learned)``).

    Args:
        rgb: (...,H,W,3) uint8 rendered frames; alpha: (...,H,W) uint8 renderer alpha;
        learned, new: (H,W,3) uint8 backgrounds.
    Returns:
        (...,H,W,3) uint8.
    """
    a = alpha.astype(np.float32)[..., None] / 255.0
    out = rgb.astype(np.float32) + (1.0 - a) * (new.astype(np.float32) - learned.astype(np.float32))
    return (np.clip(out, 0, 255) + 0.5).astype(np.uint8)


def over_image(rgba: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Straight RGBA (H,W,4) uint8 over an opaque (H,W,3) uint8 background -> (H,W,3) uint8
    (``cv2.blendLinear``, one pass; within 1 level of the float formula)."""
    w = rgba[..., 3].astype(np.float32) * np.float32(1.0 / 255.0)
    import cv2

    return cv2.blendLinear(np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(background),
                           w, 1.0 - w)


def over_colour(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """An opaque frame for a sink without alpha: straight RGBA (H,W,4) uint8 over ``colour``
    (RGB 0..255; e.g. a virtual camera's colour key), RGB (H,W,3) returned as is.

    Returns:
        (H,W,3) uint8.
    """
    if image.shape[-1] == 3:
        return image
    bg = np.empty(image.shape[:2] + (3,), np.uint8)
    bg[...] = tuple(int(v) for v in colour)
    return over_image(image, bg)


def parse_colour(spec: str) -> tuple[int, int, int]:
    """``#RRGGBB`` / ``RRGGBB`` -> (r, g, b) 0..255.

    Raises:
        BackgroundError: not a hex colour.
    """
    m = _HEX.match(str(spec).strip())
    if not m:
        raise BackgroundError(f"colour {spec!r}: give #RRGGBB, e.g. #00FF00")
    h = m.group(1)
    return tuple(int(h[i:i + 2], 16) for i in (0, 2, 4))
