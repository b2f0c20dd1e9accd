"""Query images that arrive as bytes (the search page's uploads): refused before they cost
anything when too large, not a permitted image type, or too many pixels (a decompression bomb,
refused from the header, before decoding)."""

from __future__ import annotations

import io

import numpy as np

from reid_core.data.errors import DatasetError
from reid_core.data.images import open_image, resized_rgb

UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
"""The Pillow decoders an upload may reach; any other file is refused unread."""


class UploadError(ValueError):
    """An uploaded file that is not searched; the message says why, for the person who sent it."""


def check_upload_size(size: int, max_bytes: int) -> None:
    """Refuse a body of `size` bytes (as announced or as read so far) over `max_bytes`."""
    if size > max_bytes:
        raise UploadError(
            f"the file is larger than the {_mb(max_bytes)} allowed"
            + (f" ({_mb(size)})" if size < 100 * max_bytes else "")
        )


def decode_upload(data: bytes, height: int, width: int, max_bytes: int) -> np.ndarray:
    """An uploaded image as an H×W×3 uint8 RGB array resized to the model's input."""
    check_upload_size(len(data), max_bytes)
    if not data:
        raise UploadError("the file is empty")
    try:
        with open_image(io.BytesIO(data), UPLOAD_FORMATS, name="the uploaded file") as image:
            return resized_rgb(image, height, width)
    except DatasetError as err:
        raise UploadError(str(err)) from None


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
