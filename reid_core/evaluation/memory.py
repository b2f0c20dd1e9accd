"""Large result arrays with their pages mapped in one call.

A fresh array's pages are otherwise mapped one fault at a time on first write; on virtual
machines a fault is slow enough that filling a q×g matrix costs more than computing it.
"""

from __future__ import annotations

import mmap
import sys

import numpy as np

PREFAULT_MIN_BYTES = 64 * 2**20


def prefaulted_zeros(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """np.zeros(shape, dtype); large ones come from a mapping populated in one call."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if size < PREFAULT_MIN_BYTES or not populate or sys.platform != "linux":
        return np.zeros(shape, dtype)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate
    return np.frombuffer(mmap.mmap(-1, size, flags=flags), dtype).reshape(shape)
