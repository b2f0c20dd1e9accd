"""The page's gallery indexes: one per gallery and model version, built on demand through
that version's embedder and kept on disk, so switching models selects the matching index (or
builds it) and never searches one model's gallery with another's queries."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from reid_core.config import IndexConfig
from reid_core.serving.embedders import ImageEmbedder
from reid_core.serving.gallery import GalleryIndex, IndexFileError
from reid_core.serving.query import embed_split
from reid_core.ui.galleries import Gallery


class IndexShelf:
    """Index folders under `folder/<gallery>/<model>-v<version>/`, loaded once each."""

    def __init__(self, folder: Path, config: IndexConfig) -> None:
        self.folder = Path(folder)
        self.config = config
        self._loaded: dict[Path, GalleryIndex] = {}
        self._lock = threading.Lock()

    def place(self, gallery: str, identity: dict[str, str]) -> Path:
        return self.folder / gallery / f"{identity['name']}-v{identity['version']}"

    def built(self, gallery: str, name: str, version: int) -> bool:
        """Whether an index of `gallery` by that version was saved (by this model or not)."""
        identity = {"name": name, "version": str(version)}
        return (self.place(gallery, identity) / "index.json").is_file()

    def find(self, gallery: str, identity: dict[str, str]) -> GalleryIndex | None:
        """The index of `gallery` embedded by exactly the model `identity` names, or None
        (none built yet, or one built by another model of that name and version)."""
        place = self.place(gallery, identity)
        with self._lock:
            index = self._loaded.get(place)
            if index is None and (place / "index.json").is_file():
                try:
                    index = GalleryIndex.load(place, device="cpu")
                except IndexFileError:
                    return None  # damaged: built again
                self._loaded[place] = index
        if index is None or index.info.get("model") != identity:
            return None
        return index

    def build(
        self,
        gallery: Gallery,
        identity: dict[str, str],
        embedder: ImageEmbedder,
        progress: Callable[[int, int], None] | None = None,
    ) -> GalleryIndex:
        """Embed the gallery split through `embedder`, index it, save it (atomically)."""
        if not len(gallery.split("gallery")):
            raise ValueError(f"gallery {gallery.name} has no gallery images")
        vectors, metadata = embed_split(
            embedder, gallery.root, gallery.rows(), "gallery", chunk=256, progress=progress
        )
        index = GalleryIndex.build(
            vectors,
            metadata,
            self.config.model_copy(update={"device": "cpu"}),
            source=f"{gallery.root} (gallery)",
            model=identity,
        )
        place = self.place(gallery.name, identity)
        index.save(place)
        with self._lock:
            self._loaded[place] = index
        return index
