"""Gallery search index: nearest gallery items of a query embedding, exact or approximate (faiss).

A dense query × gallery matrix stops fitting somewhere past 10⁵–10⁶ gallery items; a faiss index
answers top-k queries without one. Three kinds, chosen by the `index` config section:

- `flat`: exact inner product search (the reference; brute force, BLAS).
- `ivfpq`: an inverted file of `nlist` lists with product-quantised codes (`pq_m` bytes-ish per
  item): small and fast, approximate; `nprobe` lists are scanned per query. PQ codes alone miss
  much of the true top-k, so by default (`refine`) the best k·`refine_factor` by code are
  re-scored with 8-bit scalar-quantised vectors (D bytes an item) or the float ones (faiss
  IndexRefine); on a GPU only the IVF-PQ part goes there, the re-scoring stays on the CPU.
- `hnsw`: a navigable small-world graph over the full vectors: fast and accurate, larger than
  flat, slow to build; CPU only in faiss.

Features are L2-normalised before they are added and queries before they are searched, so the
inner product is the cosine similarity and similarities come back in descending order. Rows of
the index are rows of `metadata` (paths, pids, camids), so a search result names gallery images.

On disk an index is a folder, written atomically: `index.faiss` (faiss.write_index of the CPU
index), `metadata.npz` (plain arrays, readable with `allow_pickle=False`) and `index.json`
(`reid_core.artifacts.IndexInfo`: kind, dimension, count, the config used, the feature source,
when it was built).

faiss is imported where it is used, so importing this module (the CLI does, for its errors)
stays light and loads no second OpenMP runtime into processes that never build an index.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from reid_core.artifacts import FeatureSet, FeaturesFileError, IndexInfo
from reid_core.artifacts.features_file import SPLITS
from reid_core.atomic import atomic_output
from reid_core.config import IndexConfig
from reid_core.json_files import JsonFileError

if TYPE_CHECKING:
    import faiss

INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.npz"
INFO_FILE = IndexInfo.FILE
BUILD_FACTS = ("source", "model", "created", "settings")  # what `info` holds, for index.json
REQUIRED_METADATA = ("paths", "pids", "camids")
# k-means (IVF lists, PQ codebooks) wants at least this many training points per centroid:
# faiss warns below it. We refuse below it rather than train a poor index.
MIN_POINTS_PER_CENTROID = 39
# ... and gains little past this many, so training uses a seeded sample of at most this many.
MAX_POINTS_PER_CENTROID = 256
# Rows normalised and added at a time: memory stays at the index plus one block.
ADD_BLOCK = 65_536
GPU_MAX_K = 2048  # faiss GPU indexes return at most this many neighbours per query
DEVICES = ("auto", "cpu", "cuda")


class GalleryIndexError(ValueError):
    """Gallery features, metadata, queries or settings that an index cannot be built or searched
    with. The message says what is wrong and, where there is one, what to do instead."""


class IndexFileError(GalleryIndexError):
    """A saved index folder or a features file that is missing, unreadable or inconsistent.
    The message names the file."""


class GalleryIndex:
    """A faiss index over L2-normalised gallery features (inner product = cosine) + metadata.

    Make one with `build` or `load`. `metadata` maps names to arrays row-aligned with the index:
    at least "paths" (str), "pids" (int64) and "camids" (int64).
    """

    kind: str
    dim: int
    metadata: dict[str, np.ndarray]

    def __init__(
        self,
        index: faiss.Index,
        metadata: dict[str, np.ndarray],
        config: IndexConfig,
        info: dict[str, Any],
        device: str = "cpu",
        resources: Any = None,
    ) -> None:
        self.index = index
        self.kind = config.kind
        self.dim = int(index.d)
        self.metadata = metadata
        self.config = config
        self.info = info
        self.device = device
        self._resources = resources  # the GPU resources must live as long as a GPU index

    @property
    def count(self) -> int:
        """Number of gallery items in the index."""
        return int(self.index.ntotal)

    def __repr__(self) -> str:
        return (
            f"GalleryIndex(kind={self.kind!r}, count={self.count}, dim={self.dim}, "
            f"device={self.device!r})"
        )

    @classmethod
    def build(
        cls,
        features: np.ndarray,
        metadata: Mapping[str, np.ndarray],
        config: IndexConfig,
        *,
        source: str | None = None,
        model: Mapping[str, str] | None = None,
    ) -> GalleryIndex:
        """Index `features` (N×D, any float dtype; normalised here) with their `metadata`.

        `source` (e.g. the features file) and `model` (the served model that embedded them:
        name, version) are recorded in the saved index's JSON. IVF-PQ trains
        on a seeded sample of the gallery and refuses galleries too small to train on.
        """
        import faiss

        features = _as_matrix(features, "gallery features")
        n, d = features.shape
        if n == 0:
            raise GalleryIndexError("the gallery is empty: there is nothing to index")
        meta = _check_metadata(metadata, n)
        device = _resolve_device(config.kind, config.device)
        settings: dict[str, int | str] = {}
        if config.kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif config.kind == "ivfpq":
            nlist, pq_m = _ivfpq_shape(n, d, config)
            settings = {"nlist": nlist, "pq_m": pq_m, "refine": config.refine}
            if config.refine != "none":
                settings["refine_factor"] = config.refine_factor
            index = faiss.index_factory(
                d, f"IVF{nlist},PQ{pq_m}x{config.pq_bits}", faiss.METRIC_INNER_PRODUCT
            )
            index.do_polysemous_training = False  # seconds to minutes, for a search we never use
        else:
            index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = config.ef_construction
        index, resources = _place(index, config.kind, device)
        _set_search_params(index, config)
        if config.kind == "ivfpq":
            # training and adding through the refine wrapper train and fill both parts
            index = _refined(index, config)
            sample_size = min(n, MAX_POINTS_PER_CENTROID * nlist)
            rows = np.sort(np.random.default_rng(0).choice(n, sample_size, replace=False))
            index.train(_normalised(features[rows], "gallery features"))
        for start in range(0, n, ADD_BLOCK):
            block = features[start : start + ADD_BLOCK]
            index.add(_normalised(block, "gallery features", offset=start))
        info = {
            "source": source,
            "model": dict(model) if model else None,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "settings": settings,
        }
        return cls(index, meta, config, info, device, resources)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k gallery items of each query (N×D, or one D-vector; normalised here).

        Returns (similarities N×k float32, descending; gallery row indices N×k int64), with
        similarity -inf and index -1 where the index has fewer than k results.
        """
        queries = _as_matrix(np.atleast_2d(queries), "queries")
        if queries.shape[1] != self.dim:
            raise GalleryIndexError(
                f"queries have {queries.shape[1]} dimensions, the index {self.dim}: "
                "they must come from the model that produced the gallery features"
            )
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise GalleryIndexError(f"k must be a positive integer, not {k!r}")
        nq = queries.shape[0]
        sims = np.full((nq, k), -np.inf, dtype=np.float32)
        rows = np.full((nq, k), -1, dtype=np.int64)
        found = min(int(k), self.count)
        factor = self.config.refine_factor if _is_refined(self.index) else 1
        if self.device == "cuda" and found * factor > GPU_MAX_K:
            raise GalleryIndexError(
                f"k={k}"
                + (f" × refine_factor {factor}" if factor > 1 else "")
                + f": faiss on a GPU returns at most {GPU_MAX_K}"
            )
        if nq and found:
            d, i = self.index.search(_normalised(queries, "queries"), found)
            missing = i < 0
            d[missing] = -np.inf
            sims[:, :found], rows[:, :found] = d, i
        return sims, rows

    def save(self, folder: Path) -> None:
        """Write the index folder atomically: readers see the old folder or the whole new one."""
        import faiss

        folder = Path(folder)
        # a refined index on a GPU: faiss copies its base back and the (CPU) refine part with it
        cpu_index = faiss.index_gpu_to_cpu(self.index) if self.device == "cuda" else self.index
        info = IndexInfo(
            kind=self.kind,
            dim=self.dim,
            count=self.count,
            metric="inner_product",
            normalized=True,
            metadata=sorted(self.metadata),
            config=self.config.model_dump(mode="json"),
            faiss_version=faiss.__version__,
            **self.info,
        )
        with atomic_output(folder, directory=True) as tmp:
            faiss.write_index(cpu_index, str(tmp / INDEX_FILE))
            meta = _check_metadata(self.metadata, self.count)
            with open(tmp / METADATA_FILE, "wb") as f:
                np.savez(f, allow_pickle=False, **meta)
            info.save(tmp)

    @classmethod
    def load(cls, folder: Path, device: str = "auto") -> GalleryIndex:
        """Read an index folder written by `save`; `device` auto|cpu|cuda as in the config."""
        import faiss

        if device not in DEVICES:
            raise GalleryIndexError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
        folder = Path(folder)
        if not folder.is_dir():
            raise IndexFileError(f"{folder}: no such index folder (make one: reid index build)")
        absent = [n for n in (INFO_FILE, INDEX_FILE, METADATA_FILE) if not (folder / n).is_file()]
        if absent:
            raise IndexFileError(f"{folder}: incomplete index folder, missing {', '.join(absent)}")
        try:
            info = IndexInfo.load(folder)
        except JsonFileError as err:
            raise IndexFileError(str(err)) from None
        saved = dict(info.config)
        if saved.get("kind") == "ivfpq":
            saved.setdefault("refine", "none")  # written before IVF-PQ had a refine step
        try:
            config = IndexConfig.model_validate({**saved, "device": device})
        except ValidationError as err:
            raise IndexFileError(f"{folder / INFO_FILE}: bad index config: {err}") from None
        try:
            index = faiss.read_index(str(folder / INDEX_FILE))
        except RuntimeError as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else "unreadable"
            raise IndexFileError(f"{folder / INDEX_FILE}: not a faiss index ({reason})") from None
        if _structure(index) != _expected_structure(config):
            said = f"kind {config.kind}" + (
                f", refine {config.refine}" if config.kind == "ivfpq" else ""
            )
            raise IndexFileError(
                f"{folder / INDEX_FILE}: holds {_structure(index)}, but {INFO_FILE} says {said}"
            )
        if (index.d, index.ntotal) != (info.dim, info.count):
            raise IndexFileError(
                f"{folder / INDEX_FILE}: {index.ntotal} × {index.d}, but {INFO_FILE} says "
                f"{info.count} × {info.dim}"
            )
        metadata = _read_metadata(folder / METADATA_FILE, index.ntotal)
        resolved = _resolve_device(config.kind, config.device)
        refine = None
        if _is_refined(index):  # taken apart, so that the base alone can go to a GPU (its
            # CPU copy then stays in memory with the refine part: PQ codes, small beside it)
            index, refine = _parts(index)
        index, resources = _place(index, config.kind, resolved)
        _set_search_params(index, config)
        if refine is not None:
            index = _refined(index, config, refine)
        extra = {k: getattr(info, k) for k in BUILD_FACTS}
        return cls(index, metadata, config, extra, resolved, resources)


def load_gallery_features(
    npz: Path, split: str = "gallery"
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(float32 features, metadata) of one split of the evaluate stage's features file
    (`reid_core.artifacts.FeatureSet`); its `normalized` flag does not matter here: the index
    normalises."""
    if split not in SPLITS:
        raise GalleryIndexError(f"split must be gallery or query, not {split!r}")
    try:
        features = FeatureSet.load_split(npz, split)
    except FeaturesFileError as err:
        raise IndexFileError(str(err)) from None
    return features.feats.astype(np.float32, copy=False), features.metadata()


def _as_matrix(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise GalleryIndexError(f"{what} must be a 2-D array (rows × dimensions), got {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise GalleryIndexError(f"{what} must be numbers, got dtype {x.dtype}")
    if x.shape[1] == 0:
        raise GalleryIndexError(f"{what} have no dimensions")
    return x


def _normalised(block: np.ndarray, what: str, offset: int = 0) -> np.ndarray:
    """A float32, C-contiguous, L2-normalised copy; NaN, inf and zero rows are refused."""
    out = np.ascontiguousarray(block, dtype=np.float32)
    if np.may_share_memory(out, block):
        out = out.copy()
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        row = offset + int(np.argmin(finite))
        raise GalleryIndexError(f"{what}: row {row} holds NaN or inf (broken features)")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    if not (norms > 0).all():
        row = offset + int(np.argmin(norms[:, 0] > 0))
        raise GalleryIndexError(f"{what}: row {row} is all zeros; it has no direction to compare")
    out /= norms
    return out


def _check_metadata(metadata: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """Plain (pickle-free) 1-D arrays of length n; paths as str, pids and camids as int64."""
    absent = [key for key in REQUIRED_METADATA if key not in metadata]
    if absent:
        raise GalleryIndexError(f"metadata lacks {', '.join(absent)} (needed: paths, pids, camids)")
    out: dict[str, np.ndarray] = {}
    for key, value in metadata.items():
        arr = np.asarray(value)
        if arr.ndim != 1 or len(arr) != n:
            raise GalleryIndexError(
                f"metadata {key!r} has shape {arr.shape}; it must have one entry per gallery "
                f"row ({n})"
            )
        if key == "paths" or (arr.dtype == object and all(isinstance(v, str) for v in arr)):
            arr = arr.astype(str)
        elif key in ("pids", "camids"):
            if not np.issubdtype(arr.dtype, np.integer):
                raise GalleryIndexError(f"metadata {key!r} must be integers, got {arr.dtype}")
            arr = arr.astype(np.int64)
        elif arr.dtype == object:
            raise GalleryIndexError(
                f"metadata {key!r} holds Python objects; give numbers or strings "
                "(the index saves without pickles)"
            )
        out[key] = arr
    return out


def _ivfpq_shape(n: int, d: int, config: IndexConfig) -> tuple[int, int]:
    """(nlist, pq_m) for n items of d dimensions; refuses galleries too small to train on."""
    auto_nlist = max(1, min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_CENTROID))
    nlist = config.nlist or auto_nlist
    divisors = [m for m in range(1, d + 1) if d % m == 0]
    if config.pq_m:
        pq_m = config.pq_m
        if d % pq_m:
            near = sorted(divisors, key=lambda m: (abs(m - pq_m), -m))[:2]
            raise GalleryIndexError(
                f"index.pq_m={pq_m} does not divide the feature dimension {d}; "
                f"try {' or '.join(map(str, sorted(near)))} (or 0 for about D/8)"
            )
    else:  # the divisor nearest D/8 (the larger one on a tie: finer codes)
        pq_m = min(divisors, key=lambda m: (abs(m - d / 8), -m))
    centroids = max(nlist, 2**config.pq_bits)
    needed = MIN_POINTS_PER_CENTROID * centroids
    if n < needed:
        raise GalleryIndexError(
            f"IVF-PQ cannot be trained on {n} gallery items: {nlist} lists and "
            f"{2**config.pq_bits}-entry PQ codebooks (pq_bits={config.pq_bits}) need at least "
            f"{needed} ({MIN_POINTS_PER_CENTROID} per centroid). Use index.kind=flat (exact, "
            "and fast at this size), or lower index.nlist / index.pq_bits"
        )
    return nlist, pq_m


def _resolve_device(kind: str, device: str) -> str:
    import faiss

    gpus = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
    if device == "cuda":
        if not gpus:
            raise GalleryIndexError(
                "index.device=cuda, but faiss sees no GPU (faiss-cpu, or no CUDA device)"
            )
        if kind == "hnsw":
            raise GalleryIndexError("HNSW runs on the CPU only in faiss: use index.device=cpu")
        return "cuda"
    if device == "auto" and gpus and kind != "hnsw":
        return "cuda"
    return "cpu"


def _place(index: faiss.Index, kind: str, device: str) -> tuple[faiss.Index, Any]:
    """The index on `device` (GPU 0 for cuda) and the GPU resources it needs (or None)."""
    if device != "cuda":
        return index, None
    import faiss

    resources = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    # float16 PQ lookup tables: 64 sub-quantisers × 256 floats do not fit shared memory
    options.useFloat16 = kind == "ivfpq"
    return faiss.index_cpu_to_gpu(resources, 0, index, options), resources


def _set_search_params(index: faiss.Index, config: IndexConfig) -> None:
    """Search-time settings of an unwrapped index (the base of a refined one): they are read
    from the config on build and load, so a loaded index searches as its config says."""
    if config.kind == "ivfpq":
        index.nprobe = min(config.nprobe, index.nlist)
    elif config.kind == "hnsw":
        index.hnsw.efSearch = config.ef_search  # faiss searches with max(efSearch, k)


def _refined(
    base: faiss.Index, config: IndexConfig, refine: faiss.Index | None = None
) -> faiss.Index:
    """`base` (IVF-PQ, on the CPU or a GPU) with its shortlist of k·refine_factor re-scored by
    `refine` (a new, empty one of the config's kind when None) on the CPU; `base` itself when
    the config says refine none. The faiss wrapper keeps both Python objects alive."""
    import faiss

    if config.refine == "none":
        return base
    if refine is None:
        d = base.d
        if config.refine == "flat":
            refine = faiss.IndexFlatIP(d)
        else:
            qtype = faiss.ScalarQuantizer.QT_8bit
            refine = faiss.IndexScalarQuantizer(d, qtype, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexRefine(base, refine)
    index.k_factor = float(config.refine_factor)
    return index


def _is_refined(index: faiss.Index) -> bool:
    import faiss

    return isinstance(index, faiss.IndexRefine)


def _parts(index: faiss.Index) -> tuple[faiss.Index, faiss.Index]:
    """(base, refine) of a refined index that owns both, as faiss.read_index makes it. The
    wrapper stays their owner (handing ownership to the Python objects instead crashed with
    faiss 1.15): each part keeps a reference to it."""
    import faiss

    base = faiss.downcast_index(index.base_index)
    refine = faiss.downcast_index(index.refine_index)
    base.referenced_objects = [index]  # faiss's own keep-alive attribute
    refine.referenced_objects = [index]
    return base, refine


def _structure(index: faiss.Index) -> str:
    """What a (CPU) faiss index is, in the terms the config uses: 'IndexIVFPQ', or
    'IndexIVFPQ refined by IndexScalarQuantizer', ..."""
    import faiss

    if not _is_refined(index):
        return type(index).__name__
    base = faiss.downcast_index(index.base_index)
    refine = faiss.downcast_index(index.refine_index)
    return f"{type(base).__name__} refined by {type(refine).__name__}"


def _expected_structure(config: IndexConfig) -> str:
    """The `_structure` that an index of `config` has once saved."""
    plain = {"flat": "IndexFlatIP", "ivfpq": "IndexIVFPQ", "hnsw": "IndexHNSWFlat"}[config.kind]
    if config.kind != "ivfpq" or config.refine == "none":
        return plain
    refine = {"sq8": "IndexScalarQuantizer", "flat": "IndexFlatIP"}[config.refine]
    return f"{plain} refined by {refine}"


def _read_metadata(path: Path, count: int) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            metadata = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise IndexFileError(f"{path}: unreadable metadata ({err})") from None
    lengths = {key: len(value) for key, value in metadata.items() if value.ndim == 1}
    if any(n != count for n in lengths.values()) or len(lengths) != len(metadata):
        raise IndexFileError(
            f"{path}: metadata rows {lengths} do not match the index's {count} items"
        )
    try:
        return _check_metadata(metadata, count)
    except GalleryIndexError as err:
        raise IndexFileError(f"{path}: {err}") from None
