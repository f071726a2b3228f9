"""Person masks of a capture, stored in chunks so that no step holds all of them in memory.

A capture's person masks are its largest data: T x H x W bytes, 5.1 GB for the 2,472 frames of a
103-second 1080p video, 19 GB for five minutes. They used to be one ``masks`` array in
``masks.npz``, written from memory at the end of tracking and read back whole by every step
that needed a few frames of it. Now ``masks.npz`` (still a NumPy ``.npz``, still read by
``np.load``) holds:

* ``shape``: int64 ``[T, H, W]``;
* ``chunk``: int64, frames per chunk (the last chunk may hold fewer);
* ``masks_000000``, ``masks_000001``, ...: ``(n, H, W)`` uint8 chunks, 0 = background ..
  255 = person, deflate-compressed like ``np.savez_compressed``.

:class:`PersonMaskWriter` appends masks one frame at a time and writes a chunk whenever one is
full (the zip entries are written the way ``np.savez`` writes them, with
``np.lib.format.write_array``). :class:`PersonMasks` reads frames on demand, decompressing one
chunk at a time and keeping the last one, so reading the frames in order decompresses each
chunk once; a file in the old single-array layout is read whole on first use, as before.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["PersonMasks", "PersonMaskWriter", "write_person_masks", "CHUNK_FRAMES"]

#: frames per chunk: 66 MB of 1080p masks in memory while a chunk is written or read
CHUNK_FRAMES = 32


def _chunk_name(k: int) -> str:
    return f"masks_{k:06d}"


class PersonMaskWriter:
    """Appends (H, W) uint8 masks to a chunked ``masks.npz`` (module docstring).

    Args:
        path: the ``.npz`` file to write; None: a new temporary file in the system's temporary
            folder, deleted when the :class:`PersonMasks` returned by :meth:`close` is closed.
        chunk: frames per chunk (>= 1).

    Use: ``w.add(mask)`` per frame, then ``masks = w.close()`` (or as a context manager, which
    closes on success and removes a temporary file on an error).

    Raises:
        ValueError: a mask that is not 2-D uint8, or not of the first mask's size; ``chunk < 1``.
    """

    def __init__(self, path: str | Path | None = None, chunk: int = CHUNK_FRAMES):
        if int(chunk) < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.temporary = path is None
        if path is None:
            fd, name = tempfile.mkstemp(prefix="ram-avatar-masks-", suffix=".npz")
            os.close(fd)
            path = name
        self.path = Path(path)
        self.chunk = int(chunk)
        self._zip = zipfile.ZipFile(self.path, "w", compression=zipfile.ZIP_DEFLATED,
                                    allowZip64=True)
        self._buf: list[np.ndarray] = []
        self._chunks = 0
        self.num_frames = 0
        self.frame_shape: tuple[int, int] | None = None

    def _write(self, name: str, arr: np.ndarray) -> None:
        with self._zip.open(name + ".npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)

    def _flush(self) -> None:
        if self._buf:
            self._write(_chunk_name(self._chunks), np.stack(self._buf))
            self._chunks += 1
            self._buf = []

    def add(self, mask: np.ndarray) -> None:
        """Append one (H, W) uint8 mask (the next frame)."""
        mask = np.asarray(mask)
        if mask.ndim != 2 or mask.dtype != np.uint8:
            raise ValueError(f"a person mask must be (H, W) uint8, got {mask.shape} {mask.dtype}")
        if self.frame_shape is None:
            self.frame_shape = mask.shape
        elif mask.shape != self.frame_shape:
            raise ValueError(f"mask {self.num_frames} is {mask.shape}, the first was {self.frame_shape}")
        self._buf.append(mask)
        self.num_frames += 1
        if len(self._buf) >= self.chunk:
            self._flush()

    def close(self) -> "PersonMasks":
        """Write the last chunk and the header entries; returns the reader of the file."""
        self._flush()
        H, W = self.frame_shape or (0, 0)
        self._write("shape", np.array([self.num_frames, H, W], np.int64))
        self._write("chunk", np.array(self.chunk, np.int64))
        self._zip.close()
        return PersonMasks(self.path, delete=self.temporary)

    def abort(self) -> None:
        """Close without finishing; a temporary file is removed."""
        self._zip.close()
        if self.temporary:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "PersonMaskWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self.abort()


class PersonMasks:
    """Read access to a ``masks.npz`` (chunked, module docstring; or the old single array),
    array-like: ``len``, ``shape`` (T, H, W), ``dtype`` uint8, ``size``, ``masks[t]`` -> (H, W),
    ``masks[[t0, t1]]`` / ``masks[a:b]`` -> (n, H, W), ``masks[t_index, rows, cols]``, iteration
    in frame order, and ``np.asarray(masks)`` (loads every frame: for tests and small clips).

    Args:
        path: the ``.npz`` file.
        delete: remove the file on :meth:`close` (a capture's temporary masks).

    Raises:
        ValueError: the file holds neither ``masks`` nor the chunked entries (on opening);
        IndexError: a frame index outside [-T, T).
    """

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, path: str | Path, delete: bool = False):
        self.path = Path(path)
        self.delete = bool(delete)
        self._npz = np.load(self.path)
        files = set(self._npz.files)
        self._whole: np.ndarray | None = None
        self._cache: tuple[int, np.ndarray] | None = None
        if "masks" in files:           # the old layout: one array, read whole on first use
            self.chunk = 0
            self._shape: tuple[int, int, int] | None = None
        elif {"shape", "chunk"} <= files:
            self._shape = tuple(int(v) for v in self._npz["shape"])
            self.chunk = int(self._npz["chunk"])
        else:
            self._npz.close()
            raise ValueError(f"{self.path} holds neither 'masks' nor chunked person masks "
                             f"(entries: {sorted(files)[:5]})")

    # -- array-like -----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        if self._shape is None:
            self._shape = tuple(self._load_whole().shape)
        return self._shape

    @property
    def size(self) -> int:
        T, H, W = self.shape
        return T * H * W

    def __len__(self) -> int:
        return self.shape[0]

    def _load_whole(self) -> np.ndarray:
        if self._whole is None:
            self._whole = np.asarray(self._npz["masks"])
        return self._whole

    def frame(self, t: int) -> np.ndarray:
        """(H, W) uint8 mask of frame ``t`` (negative counts from the end)."""
        T = len(self)
        t = int(t)
        if not -T <= t < T:
            raise IndexError(f"frame {t} is outside the {T} frames of {self.path}")
        t %= T
        if self.chunk == 0:
            return self._load_whole()[t]
        k = t // self.chunk
        if self._cache is None or self._cache[0] != k:
            self._cache = (k, self._npz[_chunk_name(k)])
        return self._cache[1][t - k * self.chunk]

    def frames(self, indices) -> np.ndarray:
        """(n, H, W) uint8 masks of the frames ``indices`` (any order; chunk by chunk)."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        T, H, W = self.shape
        out = np.empty((len(idx), H, W), np.uint8)
        for j in np.argsort(idx % max(T, 1), kind="stable"):
            out[j] = self.frame(int(idx[j]))
        return out

    def __getitem__(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            out = self.frame(int(key))
        elif isinstance(key, slice):
            out = self.frames(np.arange(len(self))[key])
        else:
            key = np.asarray(key)
            if key.dtype == bool:
                key = np.nonzero(key)[0]
            out = self.frames(key)
        return out[(slice(None),) * (out.ndim - 2) + rest] if rest else out

    def __iter__(self):
        for t in range(len(self)):
            yield self.frame(t)

    def __array__(self, dtype=None, copy=None):
        arr = self.frames(np.arange(len(self)))
        return arr if dtype is None else arr.astype(dtype)

    def copy(self) -> np.ndarray:
        """All frames as a (T, H, W) array."""
        return np.asarray(self)

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the file (and remove it when ``delete``)."""
        if self._npz is not None:
            self._npz.close()
            self._npz = None
        self._cache = self._whole = None
        if self.delete:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "PersonMasks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # a temporary file is not left behind by a reader nobody closed
        try:
            if self.delete:
                self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def write_person_masks(path: str | Path, masks, chunk: int = CHUNK_FRAMES) -> None:
    """Write ``masks`` (a (T, H, W) uint8 array, a :class:`PersonMasks` or any sequence of
    (H, W) uint8 masks) to ``path`` in the chunked layout; a chunked :class:`PersonMasks` file
    is copied as it is.

    Raises:
        ValueError: masks of another dtype or rank.
    """
    if isinstance(masks, PersonMasks) and masks.chunk:
        import shutil

        shutil.copyfile(masks.path, path)
        return
    arr = masks if isinstance(masks, PersonMasks) else np.asarray(masks)
    if not isinstance(masks, PersonMasks) and (arr.ndim != 3 or arr.dtype != np.uint8):
        raise ValueError(f"person masks must be (T, H, W) uint8, got {arr.shape} {arr.dtype}")
    w = PersonMaskWriter(path, chunk)
    try:
        for m in arr:
            w.add(m)
        w.close().close()
    except BaseException:
        w.abort()
        raise
