"""Decode and resize images into one uint8 batch tensor; augmentation happens later, batched."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from reid_core.data.errors import DatasetError
from reid_core.data.paths import confined

MAX_IMAGE_PIXELS = 40_000_000
"""The largest image (width × height) reidflow decodes. Person and vehicle crops are far
smaller; a bigger file is refused from its header, before decoding (a decompression bomb)."""


@contextmanager
def open_image(
    source: str | Path | IO[bytes], formats: Sequence[str] | None = None, name: str = ""
) -> Iterator[Image.Image]:
    """The image at `source` (a path or a binary file), opened lazily (header only), refused
    with a DatasetError naming it (`name`, or the path) when it is unreadable, not one of
    Pillow's `formats` (None: any), or over MAX_IMAGE_PIXELS; decoding errors inside the block
    are turned into the same error."""
    what = name or f"image {source}"
    try:
        with Image.open(source, formats=formats) as image:
            w, h = image.size
            if w * h > MAX_IMAGE_PIXELS:
                raise DatasetError(
                    f"{what} is {w}×{h} pixels, more than the {MAX_IMAGE_PIXELS:,} allowed"
                )
            yield image
    except DatasetError:
        raise
    except Image.DecompressionBombError as err:
        raise DatasetError(f"{what} refused: {err}") from None
    except UnidentifiedImageError as err:
        if formats:
            raise DatasetError(f"{what} is not an image of type {', '.join(formats)}") from None
        raise DatasetError(f"cannot decode {what}: {err}") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise DatasetError(f"cannot decode {what}: {err}") from None


def resized_rgb(image: Image.Image, height: int, width: int) -> np.ndarray:
    """An opened image as an H×W×3 uint8 RGB array, resized bilinearly to (height, width)."""
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def decode_resized(path: Path, height: int, width: int) -> np.ndarray:
    """One image as an H×W×3 uint8 RGB array, resized bilinearly to (height, width)."""
    with open_image(path) as img:
        return resized_rgb(img, height, width)


def load_images(
    root: str | Path, paths: Sequence[str], height: int, width: int, threads: int = 4
) -> torch.Tensor:
    """All images as an N×3×H×W uint8 tensor (decoding in threads: Pillow releases the GIL)."""
    root = Path(root)
    out = np.empty((len(paths), height, width, 3), dtype=np.uint8)

    def fill(i: int) -> None:
        out[i] = decode_resized(confined(root, paths[i]), height, width)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fill, range(len(paths))))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
