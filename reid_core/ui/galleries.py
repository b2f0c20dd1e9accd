"""The datasets the page searches (`ui.galleries`): their query and gallery splits from the
manifest, and the one way a request reaches one of their image files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from reid_core.data.cameras import NO_CAMERA
from reid_core.data.paths import confined


class UnknownImageError(LookupError):
    """A request named an image that the gallery's manifest does not list."""


@dataclass(frozen=True)
class Split:
    """One split's rows: image paths (relative to the dataset folder), ids, cameras."""

    paths: np.ndarray
    pids: np.ndarray
    camids: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Gallery:
    """A dataset folder and its manifest; splits are read once, on first use."""

    name: str
    root: Path
    manifest: Path
    _rows: pd.DataFrame | None = field(default=None, repr=False)
    _splits: dict[str, Split] = field(default_factory=dict, repr=False)
    _listed: frozenset[str] = field(default=frozenset(), repr=False)

    def rows(self) -> pd.DataFrame:
        """The manifest's table (what `reid_core.serving.query.embed_split` reads)."""
        if self._rows is None:
            self._read()
        return self._rows

    def split(self, name: str) -> Split:
        if name not in self._splits:
            self._read()
        return self._splits[name]

    def cameras(self) -> list[int]:
        """The gallery's known cameras (a dataset without cameras has none to filter by)."""
        camids = np.unique(self.split("gallery").camids)
        return sorted(int(c) for c in camids if c != NO_CAMERA)

    def image(self, relative: str) -> Path:
        """The file of an image the manifest lists (query or gallery), inside the dataset
        folder; anything else is refused before the file system is touched."""
        if not self._listed:
            self._read()
        if relative not in self._listed:
            raise UnknownImageError(f"{self.name} lists no image {relative!r}")
        return confined(self.root, relative)

    def _read(self) -> None:
        from reid_core.data.manifest import read_manifest
        from reid_core.data.splits import split_rows

        if not self.manifest.is_file():
            raise FileNotFoundError(
                f"gallery {self.name}: no manifest {self.manifest} (run the pipeline first: "
                "make demo, or reid preprocess)"
            )
        self._rows, _ = read_manifest(self.manifest)
        for split in ("query", "gallery"):
            paths, pids, camids = split_rows(self._rows, split)
            self._splits[split] = Split(paths.astype(str), pids, camids)
        self._listed = frozenset(p for s in self._splits.values() for p in s.paths.tolist())
