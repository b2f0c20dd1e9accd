"""Helpers of the search page's tests: the page's config over a reproduced project, images
that an upload must refuse, and the exact ranking to compare the page's with."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from reid_core.config import ReidConfig, load_config


def ui_config(root: Path, *overrides: str) -> ReidConfig:
    """The project's params.yaml with the page's work folder under the project."""
    return load_config([root / "params.yaml"], list(overrides))


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def decompression_bomb() -> bytes:
    """A PNG of 10⁸ one-bit pixels: about 12 KB on disk, 100 MB decoded."""
    return png(10_000, 10_000, "1")


def exact_top_k(
    query: np.ndarray, gallery: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(gallery rows, cosine similarities) of the k most similar rows, by a full sort."""
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    q = query / np.linalg.norm(query)
    sims = g @ q
    order = np.argsort(-sims, kind="stable")
    if allowed is not None:
        order = order[allowed[order]]
    return order[:k], sims[order[:k]]
