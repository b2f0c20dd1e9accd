"""Gallery search index: exact (faiss flat) vs IVF-PQ (plain and re-ranked) vs HNSW on
1,000,000 × 512-d embeddings.

All are reidflow `GalleryIndex`es (reid_core.serving.gallery), built in one process on the
same gallery. IVF-PQ comes plain (`refine: none`) and re-ranked (`ivfpq+sq8`: the top k·factor
by PQ code re-scored with 8-bit scalar-quantised vectors); the re-ranked index is built once
with the first `--refine-factors` and searched again with each other one (a search setting:
those rows repeat its build figures). The reference is the exact one: faiss IndexFlatIP,
brute-force inner product (= cosine on the normalised features). Each approximate index is
scored against its top-10: recall@10 (share of the exact top-10 found), top-1 agreement, and
the rank-1 identity accuracy all of them reach; then queries/second (batched, best of
`--repeat`), build time (IVF-PQ training included), the serialised index size and the peak
rise of resident memory while it is built.

The embeddings imitate a trained re-id model's rather than noise: `--ids` identities, grouped
into look-alike families (similar clothes: the hard negatives), each identity with a few
noisy views (`--size / --ids` on average), everything L2-normalised; queries are other views of
gallery identities. Defaults are the 1M problem; `--size 100000 --ids 10000` takes a minute.
`--kinds` runs only some of the indexes beside exact.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import faiss
import numpy as np
from common import measure

from reid_core.config import IndexConfig
from reid_core.serving.gallery import GalleryIndex

BLOCK = 65_536  # rows generated at a time
# the indexes compared with exact search: name -> the `index` config beside the shared settings
KINDS: dict[str, dict[str, str]] = {
    "ivfpq": {"kind": "ivfpq", "refine": "none"},
    "ivfpq+sq8": {"kind": "ivfpq", "refine": "sq8"},
    "hnsw": {"kind": "hnsw"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="gallery items")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--ids", type=int, default=100_000)
    parser.add_argument("--ids-per-family", type=int, default=20)
    parser.add_argument("--family-spread", type=float, default=0.3, help="ids around a family")
    parser.add_argument("--noise", type=float, default=0.8, help="views around their id")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1000, help="queries per search call")
    parser.add_argument("--repeat", type=int, default=2, help="searches timed; best is kept")
    parser.add_argument(
        "--nlist", type=int, default=1024, help="IVF lists (0: the config's about 4·sqrt(N))"
    )
    parser.add_argument("--pq-m", type=int, default=0, help="PQ sub-quantisers (0: D/8)")
    parser.add_argument("--pq-bits", type=int, default=8)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--refine-factors", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument(
        "--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="beside exact"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    start, load_before = time.perf_counter(), os.getloadavg()[0]
    gallery, g_pids, queries, q_pids = embeddings(args)
    print(
        f"{args.size:,} × {args.dim} gallery, {args.queries:,} queries, {args.ids:,} ids "
        f"(made in {time.perf_counter() - start:.0f} s); faiss {faiss.__version__}, "
        f"{faiss.omp_get_max_threads()} threads, load average {load_before:.1f}",
        flush=True,
    )
    meta = {"paths": np.char.add("g", np.arange(args.size).astype(str)), "pids": g_pids}
    meta["camids"] = np.zeros(args.size, dtype=np.int64)
    base = {
        "nlist": args.nlist,
        "pq_m": args.pq_m,
        "pq_bits": args.pq_bits,
        "nprobe": args.nprobe,
        "hnsw_m": args.hnsw_m,
        "ef_construction": args.ef_construction,
        "ef_search": args.ef_search,
        "top_k": args.k,
    }
    results: dict[str, dict] = {}
    exact_rows = None
    for kind in ["exact", *args.kinds]:
        factors = args.refine_factors if kind == "ivfpq+sq8" else [args.refine_factors[0]]
        spec = {"kind": "flat"} if kind == "exact" else KINDS[kind]
        config = IndexConfig(**spec, **base, refine_factor=factors[0])
        index, build_s, build_rss = measure(lambda c=config: GalleryIndex.build(gallery, meta, c))
        built = {
            "build_seconds": round(build_s, 1),
            "build_peak_rss_rise_mib": round(build_rss / 2**20, 1),
            "index_mib": round(serialised_bytes(index) / 2**20, 1),
        }
        for factor in factors:
            name = f"{kind}x{factor}" if kind == "ivfpq+sq8" else kind
            index = with_refine_factor(index, factor)
            rows, search_s = timed_search(index, queries, args)
            if exact_rows is None:
                exact_rows = rows
            results[name] = {
                "settings": settings(index),
                **built,
                "queries_per_second": round(args.queries / search_s, 1),
                f"recall@{args.k}": round(recall(rows, exact_rows), 4),
                "top1_agreement": round(float(np.mean(rows[:, 0] == exact_rows[:, 0])), 4),
                "rank1_identity": round(float(np.mean(g_pids[rows[:, 0]] == q_pids)), 4),
            }
            print(f"  {name}: built in {build_s:.1f} s, searched in {search_s:.2f} s", flush=True)
        del index
    exact = results["exact"]
    for result in results.values():
        for ratio, key, digits in [
            ("qps_vs_exact", "queries_per_second", 2),
            ("size_vs_exact", "index_mib", 3),
            ("build_vs_exact", "build_seconds", 1),
        ]:
            result[ratio] = round(result[key] / exact[key], digits)

    table(results, args.k)
    if args.json:
        payload = {
            "problem": f"{args.queries}x{args.size}, {args.dim}-d, {args.ids} ids in families "
            f"of {args.ids_per_family}, top-{args.k}, queries in batches of {args.batch}",
            "threads": faiss.omp_get_max_threads(),
            "faiss": faiss.__version__,
            "total_seconds": round(time.perf_counter() - start),
            "load_average_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            **results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


def embeddings(args: argparse.Namespace) -> tuple[np.ndarray, ...]:
    """(gallery, gallery pids, queries, query pids), L2-normalised float32.

    Families and ids are points on the sphere: an id is its family's direction plus
    `family_spread`, a view is its id's direction plus `noise` (relative to a unit vector).
    Built in blocks, so the gallery array is the only large allocation.
    """
    rng = np.random.default_rng(0)
    d, scale = args.dim, np.float32(1 / np.sqrt(args.dim))
    families = _unit(rng.standard_normal((-(-args.ids // args.ids_per_family), d), np.float32))
    family_of = rng.integers(0, len(families), args.ids)
    spread = np.float32(args.family_spread) * scale
    centres = _unit(families[family_of] + spread * rng.standard_normal((args.ids, d), np.float32))

    def views(pids: np.ndarray) -> np.ndarray:
        out = np.empty((len(pids), d), dtype=np.float32)
        for start in range(0, len(pids), BLOCK):
            block = pids[start : start + BLOCK]
            noise = rng.standard_normal((len(block), d), dtype=np.float32)
            noise *= np.float32(args.noise) * scale
            noise += centres[block]
            out[start : start + BLOCK] = _unit(noise)
        return out

    g_pids = rng.integers(0, args.ids, args.size)
    q_pids = rng.choice(np.unique(g_pids), args.queries, replace=False)
    return views(g_pids), g_pids, views(q_pids), q_pids


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def timed_search(
    index: GalleryIndex, queries: np.ndarray, args: argparse.Namespace
) -> tuple[np.ndarray, float]:
    """(top-k rows, best wall time of `repeat` passes over the queries in `batch`-sized calls)."""
    best, rows = float("inf"), None
    for _ in range(args.repeat):
        start = time.perf_counter()
        parts = [
            index.search(queries[i : i + args.batch], args.k)[1]
            for i in range(0, len(queries), args.batch)
        ]
        best = min(best, time.perf_counter() - start)
        rows = np.concatenate(parts)
    return rows, best


def recall(rows: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact top-k that `rows` found (-1 pads never match)."""
    found = (rows[:, :, None] == exact[:, None, :]) & (exact[:, None, :] >= 0)
    return float(found.any(axis=1).sum(axis=1).mean() / exact.shape[1])


def serialised_bytes(index: GalleryIndex) -> int:
    """Size of faiss.write_index's output, counted as it streams (no 2 GB copy)."""
    total = 0

    def count(chunk: bytes) -> int:
        nonlocal total
        total += len(chunk)
        return len(chunk)

    writer = faiss.PyCallbackIOWriter(count)
    faiss.write_index(index.index, writer)
    del writer
    return total


def with_refine_factor(index: GalleryIndex, factor: int) -> GalleryIndex:
    """The same index searching a shortlist of k·`factor` (a search setting; no rebuild)."""
    if index.config.kind != "ivfpq" or index.config.refine == "none":
        return index
    index.index.k_factor = float(factor)
    index.config = index.config.model_copy(update={"refine_factor": factor})
    return index


def settings(index: GalleryIndex) -> str:
    c = index.config
    if c.kind == "ivfpq":
        s = index.info["settings"]
        ivfpq = f"IVF{s['nlist']},PQ{s['pq_m']}x{c.pq_bits}, nprobe {c.nprobe}"
        if c.refine == "none":
            return ivfpq
        return f"{ivfpq}, {c.refine.upper()} re-rank of top k×{int(index.index.k_factor)}"
    if c.kind == "hnsw":
        return f"HNSW M={c.hnsw_m}, efConstruction {c.ef_construction}, efSearch {c.ef_search}"
    return "Flat IP (exact)"


def table(results: dict[str, dict], k: int) -> None:
    columns = [
        ("index", None),
        ("settings", "settings"),
        ("build s", "build_seconds"),
        ("build RSS MiB", "build_peak_rss_rise_mib"),
        ("size MiB", "index_mib"),
        ("queries/s", "queries_per_second"),
        (f"recall@{k}", f"recall@{k}"),
        ("top-1 agree", "top1_agreement"),
        ("rank-1 id", "rank1_identity"),
        ("QPS ×exact", "qps_vs_exact"),
        ("size ×exact", "size_vs_exact"),
        ("build ×exact", "build_vs_exact"),
    ]
    rows = [[name, *(str(r[key]) for _, key in columns[1:])] for name, r in results.items()]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, (h, _) in enumerate(columns)]
    print("  ".join(h.rjust(w) for (h, _), w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
