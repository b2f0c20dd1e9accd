"""Uploaded query images: decoded only as the permitted types, within the size and pixel limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from reid_core.serving.uploads import UploadError, decode_upload
from tests.support.ui import decompression_bomb, png

MIB = 2**20


def encoded(kind: str, size=(40, 80)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, kind)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "WEBP", "BMP"])
def test_a_permitted_image_becomes_the_models_input_size_in_rgb(kind):
    pixels = decode_upload(encoded(kind), 128, 64, MIB)
    assert pixels.shape == (128, 64, 3) and pixels.dtype == np.uint8
    assert abs(int(pixels[64, 32, 0]) - 200) < 8 and pixels[64, 32, 1] < 40


def test_a_grey_or_transparent_image_is_converted_to_rgb():
    assert decode_upload(png(20, 40, "LA"), 16, 8, MIB).shape == (16, 8, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty"),
        (encoded("GIF"), "not an image of type JPEG, PNG, WEBP, BMP"),
        (encoded("TIFF"), "not an image of type"),
        (b"%PDF-1.7\n" + bytes(100), "not an image of type"),
        (encoded("JPEG")[:200], "cannot decode the uploaded file"),
        (decompression_bomb(), "10000×10000 pixels, more than the 40,000,000 allowed"),
        (encoded("PNG") + bytes(MIB), "larger than the 1.0 MiB allowed"),
    ],
    ids=["empty", "gif", "tiff", "pdf", "truncated-jpeg", "bomb", "too-large"],
)
def test_a_bad_upload_is_refused_saying_why(data, message):
    with pytest.raises(UploadError, match=message):
        decode_upload(data, 128, 64, MIB)
