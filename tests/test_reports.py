import base64
import json
import re

import numpy as np
from PIL import Image

from reid_core.evaluation import evaluate_rank, tar_at_far
from reid_core.evaluation.reports import (
    CORRECT,
    HTML_FILE,
    JUNK,
    KFP_ROC_POINTS,
    MARKDOWN_FILE,
    QUERY,
    ROC_FILE,
    WRONG,
    SetReport,
    curves,
    rank_list_image,
    roc_points,
    write_report,
)


def tiny_gallery(tmp_path):
    """Four one-colour images; query 0 is pid 1 in camera 0."""
    paths = []
    for name in ("q.jpg", "g_same_id.jpg", "g_other_id.jpg", "g_same_cam.jpg"):
        Image.new("RGB", (32, 64), (200, 200, 0)).save(tmp_path / name)
        paths.append(name)
    query = (np.array(paths[:1]), np.array([1]), np.array([0]))
    gallery = (np.array(paths[1:]), np.array([1, 2, 1]), np.array([1, 1, 0]))
    return query, gallery


def test_rank_list_colours_each_match_by_the_protocol(tmp_path):
    query, gallery = tiny_gallery(tmp_path)
    dist = np.array([[0.1, 0.2, 0.3]])  # ranked: same id (other camera), other id, same camera
    out = rank_list_image(tmp_path / "r.png", tmp_path, dist, query, gallery, thumb=(20, 40))
    img = Image.open(out).convert("RGB")
    pad, w = 4, 20
    borders = [img.getpixel((pad + col * (w + pad) + (pad if col else 0), pad)) for col in range(4)]
    assert borders == [QUERY, CORRECT, WRONG, JUNK]


def test_curves_are_written_as_pngs(tmp_path):
    rng = np.random.default_rng(0)
    q_pids, g_pids = rng.integers(1, 6, 10), rng.integers(1, 6, 40)
    q_cams, g_cams = np.zeros(10, int), np.ones(40, int)
    dist = rng.random((10, 40)) + (q_pids[:, None] != g_pids[None, :])
    result = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, 20)
    verification = tar_at_far(dist, q_pids, g_pids, q_cams, g_cams)
    paths = curves(tmp_path, result, verification, dist, q_pids, g_pids, q_cams, g_cams, "t")
    assert [p.name for p in paths] == ["cmc.png", "roc.png", "distances.png"]
    for path in paths:
        assert Image.open(path).size[0] > 300


def _verification_fixture(tmp_path):
    """Two test sets' worth of report inputs: metrics rows, PNGs on disk, a real ROC."""
    rng = np.random.default_rng(1)
    q_pids, g_pids = rng.integers(1, 8, 30), rng.integers(1, 8, 200)
    q_cams, g_cams = np.zeros(30, int), np.ones(200, int)
    dist = rng.random((30, 200)) + 0.5 * (q_pids[:, None] != g_pids[None, :])
    verification = tar_at_far(dist, q_pids, g_pids, q_cams, g_cams)
    sets = []
    for name, rank1 in (("source", 0.8125), ("target", 0.25)):
        (tmp_path / name).mkdir()
        images = []
        for png in ("rank_list.png", "cmc.png"):
            Image.new("RGB", (8, 8), (0, 0, 0)).save(tmp_path / name / png)
            images.append(tmp_path / name / png)
        metrics = {"rank1": rank1, "rank5": 0.9, "mAP": 0.5, "mINP": 0.25, "tar_at_far_0.01": 0.1}
        sets.append(SetReport(name, metrics, images))
    return sets, verification


def test_report_table_has_one_row_per_test_set_in_percent(tmp_path):
    sets, verification = _verification_fixture(tmp_path)
    write_report(tmp_path, "student (distill)", sets, [0.01], verification)
    text = (tmp_path / MARKDOWN_FILE).read_text()
    header, rule, *rows = [line for line in text.splitlines() if line.startswith("|")]
    assert header.split("|")[1:-1] == [
        " test set ",
        " rank-1 (%) ",
        " rank-5 (%) ",
        " rank-10 (%) ",
        " mAP (%) ",
        " mINP (%) ",
        " TAR@FAR=1e-02 (%) ",
    ]
    assert rule.count("---") == 7
    # rank-10 missing (max_rank < 10) shows as "-", not as zero.
    assert rows == [
        "| source | 81.2 | 90.0 | - | 50.0 | 25.0 | 10.0 |",
        "| target | 25.0 | 90.0 | - | 50.0 | 25.0 | 10.0 |",
    ]
    assert "Primary test set: source" in text


def test_report_page_is_self_contained_with_every_png_embedded(tmp_path):
    sets, verification = _verification_fixture(tmp_path)
    write_report(tmp_path, "student <distill>", sets, [0.01], verification)
    page = (tmp_path / HTML_FILE).read_text()
    assert "student &lt;distill&gt;" in page  # escaped, not markup
    assert "<td>source</td><td>81.2</td>" in page and "<td>target</td><td>25.0</td>" in page
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == 4
    for data in embedded:
        assert base64.b64decode(data).startswith(b"\x89PNG")
    assert 'src="http' not in page and "<link" not in page and "<script" not in page


def test_roc_points_are_few_monotone_and_in_range(tmp_path):
    sets, verification = _verification_fixture(tmp_path)
    assert len(verification.roc_far) > KFP_ROC_POINTS  # so subsampling is exercised
    write_report(tmp_path, "t", sets, [0.01], verification)
    roc = json.loads((tmp_path / ROC_FILE).read_text())
    fpr, tpr, threshold = (np.array(roc[k]) for k in ("fpr", "tpr", "threshold"))
    assert 2 <= len(fpr) <= KFP_ROC_POINTS and len(fpr) == len(tpr) == len(threshold)
    assert (fpr.min() >= 0) and (fpr.max() <= 1) and (tpr.min() >= 0) and (tpr.max() <= 1)
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    assert (np.diff(threshold) > 0).all() and np.isfinite(threshold).all()
    assert fpr[-1] == verification.roc_far[-1] and fpr[0] == verification.roc_far[0]
    assert len(roc_points(verification, 10)["fpr"]) == 10
