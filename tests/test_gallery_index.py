"""The gallery search index: exact and approximate top-k search, saving, loading, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reid_core.artifacts import FeatureSet, SplitFeatures
from reid_core.cli import main
from reid_core.config import IndexConfig
from reid_core.serving.gallery import (
    GalleryIndex,
    GalleryIndexError,
    IndexFileError,
    load_gallery_features,
)

N, D, IDS = 2000, 64, 200
# IVF-PQ small enough to train on 2,000 items: 8 lists, 32 sub-quantisers of 32 codes each
# (re-ranked with 8-bit scalar-quantised vectors: the config's default refine)
SMALL_IVFPQ = {"kind": "ivfpq", "nlist": 8, "pq_m": 32, "pq_bits": 5, "nprobe": 4}
KINDS = {
    "flat": {"kind": "flat"},
    "ivfpq": SMALL_IVFPQ,
    "ivfpq-plain": {**SMALL_IVFPQ, "refine": "none"},
    "ivfpq-flat": {**SMALL_IVFPQ, "refine": "flat"},
    "hnsw": {"kind": "hnsw"},
}


def clustered(n: int, d: int = D, ids: int = IDS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(features, pids): each id a random direction (the same for every seed) plus noise, at a
    random scale (the index normalises): one id's items lie near each other, as a trained
    model's do."""
    centres = np.random.default_rng([ids, d]).standard_normal((ids, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    pids = rng.integers(0, ids, n)
    feats = centres[pids] + rng.standard_normal((n, d)) / np.sqrt(d)
    return (feats * rng.uniform(0.5, 3.0, (n, 1))).astype(np.float32), pids


def metadata(pids: np.ndarray) -> dict[str, np.ndarray]:
    n = len(pids)
    return {
        "paths": np.array([f"gallery/{i:05d}.jpg" for i in range(n)]),
        "pids": pids,
        "camids": np.arange(n) % 6,
    }


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """faiss on one OpenMP thread here: on a busy shared machine its spinning threads can make
    a sub-second build take tens of seconds. (The library leaves the setting alone.)"""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def gallery() -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    feats, pids = clustered(N)
    queries, _ = clustered(300, seed=1)  # the same ids, other samples
    return feats, metadata(pids), queries


@pytest.fixture(scope="module")
def exact_top10(gallery) -> np.ndarray:
    feats, _, queries = gallery
    g = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :10]


def test_flat_search_ranks_exactly_as_numpy_cosine_similarity(gallery, exact_top10):
    feats, meta, queries = gallery
    index = GalleryIndex.build(feats, meta, IndexConfig(kind="flat"))
    sims, rows = index.search(queries, 10)
    np.testing.assert_array_equal(rows, exact_top10)
    g = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    expected = np.take_along_axis(q @ g.T, exact_top10, axis=1)
    np.testing.assert_allclose(sims, expected, atol=1e-5)
    assert sims.dtype == np.float32 and rows.dtype == np.int64


@pytest.mark.parametrize(
    ("kind", "threshold"), [("hnsw", 0.95), ("ivfpq", 0.85), ("ivfpq-plain", 0.7)]
)
def test_approximate_indexes_find_most_of_the_exact_top10(gallery, exact_top10, kind, threshold):
    feats, meta, queries = gallery
    index = GalleryIndex.build(feats, meta, IndexConfig(**KINDS[kind]))
    sims, rows = index.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact_top10, strict=True)])
    assert recall >= threshold, f"{kind} recall@10 {recall:.3f}"
    assert (np.diff(sims, axis=1) <= 1e-6).all(), "similarities must come in descending order"
    assert (sims > -1.1).all() and (sims < 1.1).all(), "similarities must be cosine-like"


def test_fewer_gallery_items_than_k_pad_with_minus_one(gallery):
    feats, meta, _ = gallery
    few = {key: value[:5] for key, value in meta.items()}
    index = GalleryIndex.build(feats[:5], few, IndexConfig(kind="flat"))
    sims, rows = index.search(feats[0], 8)  # one query as a vector
    assert rows.shape == (1, 8) and rows[0, 0] == 0
    assert sorted(rows[0, :5]) == [0, 1, 2, 3, 4] and (rows[0, 5:] == -1).all()
    assert np.isneginf(sims[0, 5:]).all() and np.isfinite(sims[0, :5]).all()


@pytest.mark.parametrize("kind", list(KINDS))
def test_save_then_load_gives_identical_results_and_metadata(gallery, tmp_path, kind):
    feats, meta, queries = gallery
    index = GalleryIndex.build(feats, meta, IndexConfig(**KINDS[kind]), source="feats.npz")
    index.save(tmp_path / "index")
    loaded = GalleryIndex.load(tmp_path / "index", device="cpu")
    for before, after in zip(index.search(queries, 10), loaded.search(queries, 10), strict=True):
        np.testing.assert_array_equal(before, after)
    assert loaded.metadata.keys() == index.metadata.keys()
    for key, value in index.metadata.items():
        np.testing.assert_array_equal(loaded.metadata[key], value)
    config = IndexConfig(**KINDS[kind])
    assert (loaded.kind, loaded.dim, loaded.count) == (config.kind, D, N)
    assert loaded.config.refine == config.refine
    info = json.loads((tmp_path / "index" / "index.json").read_text())
    assert info["kind"] == config.kind and info["count"] == N and info["dim"] == D
    assert info["source"] == "feats.npz" and info["created"]
    assert info["config"]["kind"] == config.kind
    if config.kind == "ivfpq":
        refine = {"refine": config.refine}
        if config.refine != "none":
            refine["refine_factor"] = config.refine_factor
        assert info["settings"] == {"nlist": 8, "pq_m": 32, **refine}
    with np.load(tmp_path / "index" / "metadata.npz", allow_pickle=False) as saved:
        assert saved["pids"].dtype == np.int64 and saved["paths"].dtype.kind == "U"


def test_a_failed_save_leaves_no_partial_folder_and_keeps_the_old_index(gallery, tmp_path):
    feats, meta, _ = gallery
    index = GalleryIndex.build(feats, meta, IndexConfig(kind="flat"))
    index.save(tmp_path / "index")
    index.metadata["pids"] = index.metadata["pids"][:10]  # broken after the build
    with pytest.raises(GalleryIndexError, match="one entry per gallery row"):
        index.save(tmp_path / "index")
    with pytest.raises(GalleryIndexError):
        index.save(tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no temp folders either
    assert GalleryIndex.load(tmp_path / "index").count == N
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OSError):
        index.save(tmp_path / "a-file" / "index")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f, m: (f, {**m, "pids": m["pids"][:-1]}), "'pids' has shape"),
        (lambda f, m: (f, {k: v for k, v in m.items() if k != "camids"}), "lacks camids"),
        (lambda f, m: (np.where(np.arange(N)[:, None] == 7, np.nan, f), m), "row 7 holds NaN"),
        (lambda f, m: (np.where(np.arange(N)[:, None] == 3, np.inf, f), m), "row 3 holds NaN"),
        (lambda f, m: (np.where(np.arange(N)[:, None] == 5, 0, f), m), "row 5 is all zeros"),
        (lambda f, m: (f[:0], {k: v[:0] for k, v in m.items()}), "gallery is empty"),
        (lambda f, m: (f[:, 0], m), "must be a 2-D array"),
    ],
    ids=["short-metadata", "missing-key", "nan", "inf", "zero-row", "empty", "1-d"],
)
def test_building_refuses_bad_gallery_inputs_saying_what_is_wrong(gallery, change, message):
    feats, meta, _ = gallery
    bad_feats, bad_meta = change(feats, meta)
    with pytest.raises(GalleryIndexError, match=message):
        GalleryIndex.build(bad_feats, bad_meta, IndexConfig(kind="flat"))


def test_queries_of_another_dimension_or_with_nan_are_refused(gallery):
    feats, meta, queries = gallery
    index = GalleryIndex.build(feats, meta, IndexConfig(kind="flat"))
    with pytest.raises(GalleryIndexError, match="queries have 32 dimensions, the index 64"):
        index.search(queries[:, :32], 10)
    with pytest.raises(GalleryIndexError, match="row 0 holds NaN"):
        index.search(np.full((1, D), np.nan, dtype=np.float32), 10)
    with pytest.raises(GalleryIndexError, match="k must be a positive integer"):
        index.search(queries, 0)


def test_refining_ivfpq_recovers_the_top10_that_pq_codes_alone_miss(gallery, exact_top10):
    """Coarse codes (16 sub-quantisers of 32 entries), every list scanned: what plain IVF-PQ
    misses is quantisation error, which re-scoring a k·factor shortlist repairs."""
    feats, meta, queries = gallery
    coarse = {"kind": "ivfpq", "nlist": 8, "pq_m": 16, "pq_bits": 5, "nprobe": 8}
    found = {}
    for refine, factor in [("none", 1), ("sq8", 4), ("sq8", 8), ("flat", 4)]:
        config = IndexConfig(**coarse, refine=refine, refine_factor=factor)
        sims, rows = GalleryIndex.build(feats, meta, config).search(queries, 10)
        found[refine, factor] = np.mean(
            [len(set(a) & set(b)) / 10 for a, b in zip(rows, exact_top10, strict=True)]
        )
        assert (np.diff(sims, axis=1) <= 1e-6).all()
    plain = found["none", 1]
    assert plain < 0.8, f"the test problem should be hard for plain IVF-PQ: {found}"
    assert found["sq8", 4] >= max(0.9, plain + 0.15), found
    assert found["sq8", 8] >= found["sq8", 4], found
    assert found["flat", 4] >= max(0.9, plain + 0.15), found


def test_a_loaded_refined_index_searches_as_its_index_json_says(gallery, tmp_path):
    import faiss

    feats, meta, queries = gallery
    GalleryIndex.build(feats, meta, IndexConfig(**SMALL_IVFPQ)).save(tmp_path / "index")
    path = tmp_path / "index" / "index.json"
    info = json.loads(path.read_text())
    changed = {**info["config"], "refine_factor": 8, "nprobe": 2}
    path.write_text(json.dumps({**info, "config": changed}))
    loaded = GalleryIndex.load(tmp_path / "index", device="cpu")
    base = faiss.downcast_index(loaded.index.base_index)
    assert loaded.index.k_factor == 8 and base.nprobe == 2
    deeper = GalleryIndex.build(feats, meta, IndexConfig(**{**SMALL_IVFPQ, **changed}))
    for ours, theirs in zip(loaded.search(queries, 10), deeper.search(queries, 10), strict=True):
        np.testing.assert_array_equal(ours, theirs)

    # an index.json that disagrees with the file is refused, naming both
    path.write_text(json.dumps({**info, "config": {**info["config"], "refine": "none"}}))
    with pytest.raises(IndexFileError, match="IndexIVFPQ refined by IndexScalarQuantizer.*none"):
        GalleryIndex.load(tmp_path / "index")
    # one written before IVF-PQ could be refined has no refine key: plain IVF-PQ
    GalleryIndex.build(feats, meta, IndexConfig(**KINDS["ivfpq-plain"])).save(tmp_path / "old")
    path = tmp_path / "old" / "index.json"
    info = json.loads(path.read_text())
    del info["config"]["refine"], info["config"]["refine_factor"]
    path.write_text(json.dumps(info))
    assert GalleryIndex.load(tmp_path / "old").config.refine == "none"


def test_ivfpq_refuses_a_gallery_too_small_to_train_and_suggests_flat(gallery):
    feats, meta, _ = gallery
    few = {key: value[:500] for key, value in meta.items()}
    with pytest.raises(GalleryIndexError, match=r"cannot be trained on 500 .*index.kind=flat"):
        GalleryIndex.build(feats[:500], few, IndexConfig(kind="ivfpq"))


def test_pq_sub_quantisers_must_divide_the_dimension(gallery):
    feats, meta, _ = gallery
    with pytest.raises(GalleryIndexError, match="pq_m=12 does not divide .* 64; try 8 or 16"):
        GalleryIndex.build(feats, meta, IndexConfig(**{**SMALL_IVFPQ, "pq_m": 12}))
    # automatic: the divisor of 100 nearest 100/8 = 12.5 is 10
    wide, pids = clustered(1000, d=100, ids=50)
    small = IndexConfig(kind="ivfpq", nlist=4, pq_bits=4)
    index = GalleryIndex.build(wide, metadata(pids), small)
    assert index.info["settings"] == {
        "nlist": 4,
        "pq_m": 10,
        "refine": "sq8",
        "refine_factor": 16,
    }


def test_loading_a_missing_or_damaged_index_names_the_problem(gallery, tmp_path):
    feats, meta, _ = gallery
    folder = tmp_path / "index"
    with pytest.raises(IndexFileError, match="no such index folder"):
        GalleryIndex.load(folder)

    def fresh() -> None:
        GalleryIndex.build(feats[:100], {k: v[:100] for k, v in meta.items()}, IndexConfig()).save(
            folder
        )

    fresh()
    (folder / "metadata.npz").unlink()
    with pytest.raises(IndexFileError, match="missing metadata.npz"):
        GalleryIndex.load(folder)

    fresh()
    (folder / "index.faiss").write_bytes(b"not an index at all")
    with pytest.raises(IndexFileError, match="index.faiss: not a faiss index"):
        GalleryIndex.load(folder)

    fresh()
    np.savez(folder / "metadata.npz", **{k: v[:50] for k, v in meta.items()})
    with pytest.raises(IndexFileError, match="do not match the index's 100 items"):
        GalleryIndex.load(folder)

    fresh()
    (folder / "metadata.npz").write_bytes(b"PK broken zip")
    with pytest.raises(IndexFileError, match="unreadable metadata"):
        GalleryIndex.load(folder)

    fresh()
    info = json.loads((folder / "index.json").read_text())
    (folder / "index.json").write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(IndexFileError, match="format version 99.*run reid index build again"):
        GalleryIndex.load(folder)
    (folder / "index.json").write_text(json.dumps({**info, "count": True}))
    with pytest.raises(IndexFileError, match="index.json: 'count' has the wrong type"):
        GalleryIndex.load(folder)
    (folder / "index.json").write_text("{")
    with pytest.raises(IndexFileError, match="index.json: not a JSON file"):
        GalleryIndex.load(folder)


def test_cuda_is_refused_clearly_when_faiss_has_no_gpu(gallery):
    import faiss

    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus():
        pytest.skip("a GPU is present")
    feats, meta, _ = gallery
    with pytest.raises(GalleryIndexError, match="faiss sees no GPU"):
        GalleryIndex.build(feats, meta, IndexConfig(device="cuda"))
    assert GalleryIndex.build(feats, meta, IndexConfig(device="auto")).device == "cpu"


def write_evaluate_features(path, feats, meta, queries) -> None:
    """A features file as the evaluate stage writes it."""
    n = len(queries)
    query_paths = np.array([f"query/{i}.jpg" for i in range(n)])
    FeatureSet(
        query=SplitFeatures(queries, np.zeros(n, np.int64), np.zeros(n, np.int64), query_paths),
        gallery=SplitFeatures(feats, meta["pids"], meta["camids"], meta["paths"]),
        normalized=False,
    ).save(path)


def test_the_cli_builds_an_index_from_evaluate_features_that_loads_back(
    gallery, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the config defaults
    feats, meta, queries = gallery
    write_evaluate_features(tmp_path / "features.npz", feats, meta, queries)
    args = ["index", "build", "--features", "features.npz", "--out", "idx"]
    assert main([*args, "--set", "index.kind=hnsw", "--set", "index.hnsw_m=16"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"index hnsw: {N} items × {D} dims -> idx"
    index = GalleryIndex.load(tmp_path / "idx")
    assert (index.kind, index.count, index.config.hnsw_m) == ("hnsw", N, 16)
    np.testing.assert_array_equal(index.metadata["paths"], meta["paths"])
    _, rows = index.search(feats[:20], 1)
    np.testing.assert_array_equal(rows[:, 0], np.arange(20))
    assert "features.npz (gallery)" in (tmp_path / "idx" / "index.json").read_text()

    assert main([*args[:-1], "query-idx", "--split", "query"]) == 0
    q_feats, q_meta = load_gallery_features(tmp_path / "features.npz", split="query")
    assert GalleryIndex.load(tmp_path / "query-idx").count == len(q_feats) == len(q_meta["pids"])


def test_the_cli_reports_a_bad_features_file_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "other.npz", feats=np.ones((3, 4), dtype=np.float32))
    for features, message in [("other.npz", "missing gallery_feats"), ("absent.npz", "no such")]:
        args = ["--features", str(tmp_path / features), "--out", str(tmp_path / "idx")]
        assert main(["index", "build", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err
    small = tmp_path / "small.npz"
    feats, pids = clustered(100)
    write_evaluate_features(small, feats, metadata(pids), feats[:3])
    code = main(
        ["index", "build", "--features", str(small), "--out", str(tmp_path / "idx")]
        + ["--set", "index.kind=ivfpq"]
    )
    assert code == 2 and "index.kind=flat" in capsys.readouterr().err
    assert not (tmp_path / "idx").exists()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_camera_filters_return_the_indexs_own_ranking_of_the_items_they_keep(gallery, kind):
    """A camera's items are a sixth of the gallery: the search must ask for far more than k."""
    from reid_core.serving.query import search_filtered

    feats, meta, queries = gallery
    index = GalleryIndex.build(feats, meta, IndexConfig(**KINDS[kind]))
    g = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    camera = np.flatnonzero(meta["camids"] == 4)
    for q in queries[:20]:
        sims = g @ (q / np.linalg.norm(q))
        only = search_filtered(index, q[None], 10, camera=4)
        assert len(only) == 10 and {m.camid for m in only} == {4}
        exact = camera[np.argsort(-sims[camera])[:10]]
        if kind == "flat":
            np.testing.assert_allclose([m.similarity for m in only], sims[exact], atol=1e-5)
        else:  # approximate: most of the exact filtered top-10
            assert len({m.path for m in only} & set(meta["paths"][exact])) >= 8
        others = search_filtered(index, q[None], 10, exclude_camera=4)
        assert len(others) == 10 and 4 not in {m.camid for m in others}
        assert [m.rank for m in others] == list(range(1, 11))


def test_matches_of_a_known_query_are_judged_as_the_market_protocol_counts_them(gallery):
    from reid_core.serving.query import search_filtered

    feats, meta, _ = gallery
    index = GalleryIndex.build(feats, meta, IndexConfig(kind="flat"))
    row = 7
    pid, camid = int(meta["pids"][row]), int(meta["camids"][row])
    found = search_filtered(index, feats[row][None], 50, query_pid=pid, query_camid=camid)
    for m in found:
        expected = (
            "junk" if (m.pid, m.camid) == (pid, camid) else ("correct" if m.pid == pid else "wrong")
        )
        assert m.verdict == expected
    assert found[0].verdict == "junk"  # itself: same id, same camera
    assert {m.verdict for m in search_filtered(index, feats[row][None], 5)} == {""}
    assert search_filtered(index, feats[row][None], 5, camera=99) == []


def test_a_query_of_unknown_camera_excludes_nothing_and_keeps_its_matches(gallery):
    from reid_core.data.cameras import NO_CAMERA
    from reid_core.serving.query import search_filtered

    feats, meta, _ = gallery
    meta = {**meta, "camids": np.full(len(feats), NO_CAMERA)}  # a VehicleID-like gallery
    index = GalleryIndex.build(feats, meta, IndexConfig(kind="flat"))
    row = 7
    pid = int(meta["pids"][row])
    found = search_filtered(
        index, feats[row][None], 20, exclude_camera=NO_CAMERA, query_pid=pid, query_camid=NO_CAMERA
    )
    assert len(found) == 20 and found[0].verdict == "correct"  # itself: no camera to remove
    assert {m.verdict for m in found if m.pid == pid} == {"correct"}
