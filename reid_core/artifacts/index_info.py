"""What a gallery index folder holds: its `index.json`, beside `index.faiss` (the faiss index)
and `metadata.npz` (what each row is). `reid index build` writes the folder; `reid query` and
whoever serves searches load it (`reid_core.serving.gallery.GalleryIndex`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from reid_core.artifacts.json_artifact import JsonArtifact


@dataclass(frozen=True)
class IndexInfo(JsonArtifact):
    """The index's kind, size and the config it was built with; where its rows came from."""

    FILE: ClassVar[str] = "index.json"
    WRITTEN_BY: ClassVar[str] = "reid index build"
    VERSION: ClassVar[int] = 1

    kind: str  # flat, ivfpq or hnsw
    dim: int
    count: int  # rows (gallery items)
    metric: str  # "inner_product" (of L2-normalised features: the cosine)
    normalized: bool
    metadata: list[str]  # the names of the arrays in metadata.npz
    config: dict[str, Any]  # the `index` config section it was built with
    faiss_version: str
    source: str | None  # what was indexed: a features file's split, a dataset through Triton
    model: dict[str, str] | None  # the served model that embedded the gallery: name, version
    created: str  # when it was built (ISO 8601, UTC)
    settings: dict[str, Any]  # what the build derived from the gallery (IVF-PQ: nlist, pq_m…)
