"""Decode and resize images into one uint8 batch tensor; augmentation happens later, batched."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from reid_core.data.errors import DatasetError


def decode_resized(path: Path, height: int, width: int) -> np.ndarray:
    """One image as an H×W×3 uint8 RGB array, resized bilinearly to (height, width)."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (width, height):
                img = img.resize((width, height), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as err:
        raise DatasetError(f"cannot decode image {path}: {err}") from None


def load_images(
    root: str | Path, paths: Sequence[str], height: int, width: int, threads: int = 4
) -> torch.Tensor:
    """All images as an N×3×H×W uint8 tensor (decoding in threads: Pillow releases the GIL)."""
    root = Path(root)
    out = np.empty((len(paths), height, width, 3), dtype=np.uint8)

    def fill(i: int) -> None:
        out[i] = decode_resized(root / paths[i], height, width)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fill, range(len(paths))))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
