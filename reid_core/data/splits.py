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
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise DatasetError(f"the manifest has no '{split}' images")
    paths = rows["path"].to_numpy()
    return Split(
        images=load_images(root, list(paths), height, width),
        pids=rows["pid"].to_numpy(np.int64),
        camids=rows["camid"].to_numpy(np.int64),
        paths=paths,
    )


def contiguous_labels(pids: np.ndarray) -> np.ndarray:
    """Map arbitrary ids to 0..C-1 (sorted), as a classifier needs."""
    _, labels = np.unique(pids, return_inverse=True)
    return labels.astype(np.int64)
