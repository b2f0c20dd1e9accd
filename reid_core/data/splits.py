"""One split of a manifest, decoded into memory for training or evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from reid_core.data.errors import DatasetError
from reid_core.data.images import load_images


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 N×3×H×W
    pids: np.ndarray
    camids: np.ndarray
    paths: np.ndarray


def load_split(
    root: str | Path, manifest: pd.DataFrame, split: str, height: int, width: int
) -> Split:
    """Decode every image of `split` (train, query or gallery), resized to height × width."""
    paths, pids, camids = split_rows(manifest, split)
    return Split(
        images=load_images(root, list(paths), height, width),
        pids=pids,
        camids=camids,
        paths=paths,
    )


def split_rows(manifest: pd.DataFrame, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(paths, pids, camids) of a manifest's `split`; a split with no images is an error."""
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise DatasetError(f"the manifest has no '{split}' images")
    return (
        rows["path"].to_numpy(),
        rows["pid"].to_numpy(np.int64),
        rows["camid"].to_numpy(np.int64),
    )


def contiguous_labels(pids: np.ndarray) -> np.ndarray:
    """Map arbitrary ids to 0..C-1 (sorted), as a classifier needs."""
    _, labels = np.unique(pids, return_inverse=True)
    return labels.astype(np.int64)
