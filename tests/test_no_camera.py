"""An unknown camera (NO_CAMERA) is never the query's camera: evaluation, validation, verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reid_core.data.cameras import NO_CAMERA
from reid_core.data.errors import DatasetError
from reid_core.data.readers import read_dataset
from reid_core.evaluation.large_gallery import evaluate_topk
from reid_core.evaluation.rank import evaluate_rank
from reid_core.evaluation.verification import tar_at_far
from reid_core.serving.query import CORRECT, JUNK, _verdict
from reid_core.validation.suite import cross_camera_match
from tests.fixtures_data import make_csv_like


def labelled(seed: int = 0, nq: int = 30, ng: int = 80, ids: int = 10):
    rng = np.random.default_rng(seed)
    dist = rng.random((nq, ng))
    q_pids, g_pids = rng.integers(1, ids + 1, nq), rng.integers(1, ids + 1, ng)
    g_pids[:ids] = np.arange(1, ids + 1)  # every identity in the gallery
    return dist, q_pids, g_pids


def test_without_cameras_every_same_identity_gallery_item_is_a_positive():
    dist, q_pids, g_pids = labelled()
    unknown = evaluate_rank(
        dist, q_pids, g_pids, np.full(len(q_pids), NO_CAMERA), np.full(len(g_pids), NO_CAMERA)
    )
    # the same as cameras that never coincide
    apart = evaluate_rank(dist, q_pids, g_pids, np.zeros(len(q_pids)), np.ones(len(g_pids)))
    np.testing.assert_array_equal(unknown.cmc, apart.cmc)
    assert unknown.mAP == apart.mAP and unknown.num_valid == len(q_pids)


def test_an_unknown_camera_on_either_side_keeps_the_pair_and_known_cameras_still_remove():
    dist, q_pids, g_pids = labelled(seed=1)
    rng = np.random.default_rng(2)
    q_cams = rng.integers(NO_CAMERA, 3, len(q_pids))
    g_cams = rng.integers(NO_CAMERA, 3, len(g_pids))
    result = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)
    # plain reference: drop a gallery item only when pid and a known camera are both shared
    aps = []
    for i in range(len(q_pids)):
        junk = (g_pids == q_pids[i]) & (g_cams == q_cams[i]) & (q_cams[i] != NO_CAMERA)
        order = np.argsort(dist[i][~junk], kind="stable")
        hits = (g_pids[~junk] == q_pids[i])[order]
        if hits.any():
            ranks = np.flatnonzero(hits) + 1
            aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    assert result.num_valid == len(aps)
    assert result.mAP == pytest.approx(np.mean(aps), abs=1e-12)
    top = evaluate_topk(np.argsort(dist, 1, kind="stable"), q_pids, g_pids, q_cams, g_cams)
    assert top.mAP_at_k == pytest.approx(result.mAP, abs=1e-9)  # the whole gallery listed
    # verification counts the same genuine pairs: all unknown equals never coinciding
    n_q, n_g = len(q_pids), len(g_pids)
    unknown = tar_at_far(dist, q_pids, g_pids, np.full(n_q, -1), np.full(n_g, -1))
    apart = tar_at_far(dist, q_pids, g_pids, np.zeros(n_q), np.ones(n_g))
    assert unknown.as_metrics() == apart.as_metrics()


def test_a_camid_below_no_camera_is_refused():
    dist, q_pids, g_pids = labelled()
    with pytest.raises(ValueError, match="gallery camids must be >= -1"):
        evaluate_rank(dist, q_pids, g_pids, np.zeros(len(q_pids)), np.full(len(g_pids), -2))


def test_validation_counts_an_unknown_camera_as_another_camera():
    df = pd.DataFrame(
        {
            "pid": [1, 1, 2, 2, 3, 3],
            "camid": [NO_CAMERA, NO_CAMERA, 2, NO_CAMERA, 2, 2],
            "split": ["query", "gallery", "query", "gallery", "query", "gallery"],
        }
    )
    assert cross_camera_match(df).tolist() == [True, True, True, True, False, False]


def test_the_csv_layout_takes_minus_one_as_no_camera_and_refuses_lower(tmp_path):
    root = make_csv_like(tmp_path / "ok")
    csv = root / "manifest.csv"
    lines = csv.read_text().splitlines()
    header, first, *rest = lines
    path, pid, _, split = first.split(",")
    csv.write_text("\n".join([header, f"{path},{pid},-1,{split}", *rest]) + "\n")
    assert read_dataset(root, "csv").set_index("path").loc[path, "camid"] == NO_CAMERA
    csv.write_text("\n".join([header, f"{path},{pid},-2,{split}", *rest]) + "\n")
    with pytest.raises(DatasetError, match="line 2, column camid: '-2' must be >= 0"):
        read_dataset(root, "csv")


def test_the_search_page_marks_a_same_identity_item_of_unknown_camera_correct():
    assert _verdict(7, NO_CAMERA, 7, NO_CAMERA) == CORRECT
    assert _verdict(7, 3, 7, NO_CAMERA) == CORRECT
    assert _verdict(7, 3, 7, 3) == JUNK
