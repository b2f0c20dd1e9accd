"""A gallery index from either source of gallery features: the evaluate stage's features
file, or a dataset split embedded by the served model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from reid_core.serving.gallery import GalleryIndex, load_gallery_features

if TYPE_CHECKING:
    from reid_core.config import IndexConfig
    from reid_core.serving.client import TritonEmbedder


def index_from_features(features: Path, split: str, config: IndexConfig) -> GalleryIndex:
    """The index of `split`'s features in an evaluate features file (no server needed)."""
    vectors, metadata = load_gallery_features(features, split)
    return GalleryIndex.build(vectors, metadata, config, source=f"{features} ({split})")


def index_from_dataset(
    dataset: Path,
    manifest: Path,
    split: str,
    config: IndexConfig,
    connect: Callable[[], TritonEmbedder],
) -> GalleryIndex:
    """The index of `split`'s images, embedded by the served model `connect()` reaches; the
    split's images are checked before the server is asked anything."""
    from reid_core.data.manifest import read_manifest
    from reid_core.serving.query import check_split_images, embed_split

    rows, _ = read_manifest(manifest)
    check_split_images(dataset, rows, split)
    with connect() as embedder:
        vectors, metadata = embed_split(embedder, dataset, rows, split)
        model = {"name": embedder.model, "version": embedder.served_version}
    source = f"{dataset} ({split}) through Triton"
    return GalleryIndex.build(vectors, metadata, config, source=source, model=model)
