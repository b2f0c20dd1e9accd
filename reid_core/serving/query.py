"""Gallery search through a served model: embed a gallery or new images (through Triton),
rank the gallery for each image, show the result."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from reid_core.data.cameras import NO_CAMERA, same_camera
from reid_core.data.errors import DatasetError
from reid_core.data.images import load_images, open_image
from reid_core.data.paths import confined
from reid_core.data.splits import split_rows
from reid_core.evaluation.reports import QUERY, Tile, tile_rows

if TYPE_CHECKING:
    import pandas as pd

    from reid_core.serving.client import TritonEmbedder
    from reid_core.serving.embedders import ImageEmbedder
    from reid_core.serving.gallery import GalleryIndex

MATCH = (110, 110, 110)  # no ground truth for a new image: one neutral frame colour


CORRECT, WRONG, JUNK = "correct", "wrong", "junk"


@dataclass(frozen=True)
class Match:
    """One ranked gallery item for a query; `verdict` is correct, wrong or junk (same identity
    in the query's own camera, or a junk id) when the query's identity is known, else ''."""

    rank: int
    similarity: float
    path: str
    pid: int
    camid: int
    verdict: str = ""


def embed_split(
    embedder: ImageEmbedder,
    root: Path,
    manifest: pd.DataFrame,
    split: str,
    chunk: int = 1024,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Features of a manifest split through the served model, with its paths/pids/camids.

    Images are decoded `chunk` at a time, so a large gallery never sits in memory decoded;
    `progress(done, total)` is called after each chunk.
    """
    paths, pids, camids = split_rows(manifest, split)
    paths = paths.astype(str)
    features = []
    for i in range(0, len(paths), chunk):
        images = load_images(root, list(paths[i : i + chunk]), embedder.height, embedder.width)
        features.append(embedder.embed(images.numpy()))
        if progress is not None:
            progress(min(i + chunk, len(paths)), len(paths))
    return np.concatenate(features), {"paths": paths, "pids": pids, "camids": camids}


def search_filtered(
    index: GalleryIndex,
    feature: np.ndarray,
    k: int,
    *,
    camera: int | None = None,
    exclude_camera: int | None = None,
    query_pid: int | None = None,
    query_camid: int | None = None,
) -> list[Match]:
    """The top-k gallery matches of one feature among the items of `camera` (None: all) and
    not of `exclude_camera` (an unknown camera excludes nothing), judged against the query's
    identity when it is known.

    The index is asked for more items until k pass the filters or it has none left, so the
    filtered top-k is the index's own ranking, not a truncated one.
    """
    cams = index.metadata["camids"]
    allowed = np.ones(index.count, dtype=bool)
    if camera is not None:
        allowed &= cams == camera
    if exclude_camera is not None and exclude_camera != NO_CAMERA:
        allowed &= ~same_camera(exclude_camera, cams)
    wanted = min(k, int(allowed.sum()))
    asked = k
    while True:
        sims, rows = index.search(feature, min(asked, index.count))
        kept = [(s, r) for s, r in zip(sims[0], rows[0], strict=True) if r >= 0 and allowed[r]]
        if len(kept) >= wanted or asked >= index.count:
            break
        asked *= 4
    meta = index.metadata
    return [
        Match(
            rank + 1,
            float(s),
            str(meta["paths"][r]),
            int(meta["pids"][r]),
            int(cams[r]),
            _verdict(int(meta["pids"][r]), int(cams[r]), query_pid, query_camid),
        )
        for rank, (s, r) in enumerate(kept[:k])
    ]


def _verdict(pid: int, camid: int, query_pid: int | None, query_camid: int | None) -> str:
    """As the Market-1501 protocol counts a gallery item for a query of known identity."""
    if query_pid is None:
        return ""
    if pid < 0 or (pid == query_pid and same_camera(query_camid, camid)):
        return JUNK
    return CORRECT if pid == query_pid else WRONG


def check_split_images(root: Path, manifest: pd.DataFrame, split: str) -> None:
    """Refuse a split whose images are not all in `root`, before a server embeds any."""
    paths, _, _ = split_rows(manifest, split)
    missing = [p for p in paths.astype(str) if not confined(root, p).is_file()]
    if missing:
        raise DatasetError(
            f"dataset {root}: {len(missing)} of the manifest's {len(paths)} {split} images are "
            f"not there, e.g. {missing[0]}"
        )


def check_query_images(images: Sequence[Path]) -> None:
    """Refuse missing or undecodable query images before any server is asked to embed them."""
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no such query image: {', '.join(missing)}")
    for path in images:
        with open_image(path) as image:
            image.load()


def search_images(
    embedder: ImageEmbedder, index: GalleryIndex, images: Sequence[Path], k: int
) -> list[list[Match]]:
    """The top-k gallery matches of each image, best first."""
    return [search_filtered(index, f[None], k) for f in embedder.embed_files(images)]


def index_mismatch(index: GalleryIndex, embedder: TritonEmbedder) -> str:
    """Why the index's features may not be comparable with what the server embeds now ('' if
    they are): it was built through another model or version (e.g. one promoted since)."""
    built = index.info.get("model")
    if not built:
        return ""
    now = {"name": embedder.model, "version": embedder.served_version}
    if built == now:
        return ""
    return (
        f"the index was embedded by {built['name']} v{built['version']}, the queries by "
        f"{now['name']} v{now['version']}: rebuild it (`reid index build --dataset ...`)"
    )


def format_matches(images: Sequence[Path], matches: Sequence[Sequence[Match]]) -> str:
    """A plain-text table per query: rank, cosine similarity, gallery path, id, camera."""
    lines = []
    for image, ranked in zip(images, matches, strict=True):
        lines.append(f"query {image}")
        lines.append(f"  {'rank':>4}  {'similarity':>10}  {'pid':>6}  {'cam':>4}  path")
        lines.extend(
            f"  {m.rank:>4}  {m.similarity:>10.4f}  {m.pid:>6}  {m.camid:>4}  {m.path}"
            for m in ranked
        )
    return "\n".join(lines)


def rank_list(
    dest: Path,
    images: Sequence[Path],
    matches: Sequence[Sequence[Match]],
    gallery_root: Path,
) -> Path:
    """One row per query: the query (blue), then its matches captioned with their similarity."""
    rows: list[list[Tile]] = []
    for image, ranked in zip(images, matches, strict=True):
        rows.append(
            [(Path(image), QUERY, "query")]
            + [(gallery_root / m.path, MATCH, f"{m.similarity:.3f}") for m in ranked]
        )
    return tile_rows(dest, rows)
