"""The Great Expectations manifest suite: passes a good dataset, explains each kind of fault."""

from __future__ import annotations

import json
import shutil

import pytest

from reid_core.data.manifest import build_manifest
from reid_core.validation import ValidationReport, validate_manifest, write_report
from tests.fixtures_data import make_market_like

LIMITS = {"min_side": 16, "max_side": 4096}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """One good Market-like dataset and its manifest, shared (read-only) by the tests here."""
    root = make_market_like(tmp_path_factory.mktemp("market"), n_train=3, n_test=4, cameras=3)
    return root, build_manifest(root, "market1501")


@pytest.fixture(scope="module")
def good_report(dataset):
    root, df = dataset
    return validate_manifest(df, root, **LIMITS)


def query_row(df, pid):
    return df[(df["split"] == "query") & (df["pid"] == pid)].iloc[0]


def test_good_dataset_passes_every_check(good_report):
    assert good_report.success, good_report.failures()
    assert good_report.failures() == []
    checks = {r["check"] for r in good_report.results}
    assert {
        "schema",
        "path.unique",
        "split.allowed",
        "pid.range",
        "camid.range",
        "width.range",
        "height.range",
        "distractors.gallery_only",
        "images.decodable",
        "query.cross_camera_match",
    } <= checks
    assert all(r["success"] for r in good_report.results)
    assert good_report.summary["query_images"] == 4
    assert good_report.summary["undecodable"] == 0


def test_report_is_json(good_report):
    data = json.loads(json.dumps(good_report.to_dict()))
    assert data["success"] is True
    assert len(data["results"]) == len(good_report.results)
    cross = next(r for r in data["results"] if r["check"] == "query.cross_camera_match")
    assert cross["expectation"] == "expect_column_values_to_be_in_set"
    assert cross["details"]["element_count"] == 4  # the row condition keeps query rows only


def test_corrupt_image_fails_naming_the_file(dataset, tmp_path):
    root, df = dataset
    copy = shutil.copytree(root, tmp_path / "copy")
    bad = query_row(df, 5)["path"]
    (copy / bad).write_bytes(b"\x00\x01these bytes are not a JPEG")
    report = validate_manifest(df, copy, **LIMITS)
    assert not report.success
    [line] = report.failures()
    assert line.startswith(f"image {bad} does not decode")


def test_query_pid_absent_from_gallery_fails_readably(dataset):
    root, df = dataset
    df = df[~((df["split"] == "gallery") & (df["pid"] == 6))]
    report = validate_manifest(df, root, **LIMITS)
    assert not report.success
    assert report.failures() == [
        "query pid 6 has no gallery image from another camera "
        "(1 row; the gallery has no image of it at all)"
    ]


def test_query_pid_in_gallery_only_from_its_own_camera_fails_readably(dataset):
    root, df = dataset
    df = df.copy()
    query_camid = query_row(df, 7)["camid"]
    df.loc[(df["split"] == "gallery") & (df["pid"] == 7), "camid"] = query_camid
    report = validate_manifest(df, root, **LIMITS)
    assert not report.success
    [line] = report.failures()
    assert line.startswith("query pid 7 has no gallery image from another camera (1 row;")
    assert f"only from camid {query_camid}" in line


def test_column_faults_are_each_reported(dataset):
    root, df = dataset
    df = df.copy()
    df.loc[1, "path"] = df.loc[0, "path"]
    df.loc[2, "width"] = 8
    df.loc[3, "split"] = "val"
    df.loc[4, "camid"] = -2  # -1 is NO_CAMERA, an unknown camera
    report = validate_manifest(df, root, **LIMITS)
    text = "\n".join(report.failures())
    assert "column 'path' has 2 rows sharing a path with another row" in text
    assert "column 'width' has 1 row with a value outside [16, 4096]: ['8']" in text
    assert "column 'split' has 1 row with a value not in ['train', 'query', 'gallery']" in text
    assert "column 'camid' has 1 row with a value outside [-1 (unknown camera), 999]" in text
    failed = {r["check"] for r in report.results if not r["success"]}
    assert {"path.unique", "width.range", "split.allowed", "camid.range"} <= failed


def test_distractor_in_query_fails(dataset):
    root, df = dataset
    df = df.copy()
    index = df.index[(df["split"] == "query") & (df["pid"] == 4)][0]
    df.loc[index, "pid"] = 0
    report = validate_manifest(df, root, **LIMITS)
    failed = {r["check"] for r in report.results if not r["success"]}
    assert "distractors.gallery_only" in failed
    assert any(f"['query'], e.g. {df.loc[index, 'path']}" in f for f in report.failures())


def test_schema_faults_name_the_columns(dataset):
    root, df = dataset
    df = df.drop(columns=["domain"]).assign(pid=df["pid"].astype(float))
    report = validate_manifest(df, root, **LIMITS)
    text = "\n".join(report.failures())
    assert "column 'domain' is missing" in text
    assert "column 'pid' should hold int64 values" in text
    assert "expected ['path', 'pid', 'camid', 'split', 'domain', 'width', 'height']" in text


def test_write_report_writes_json_and_escaped_html(dataset, tmp_path):
    root, df = dataset
    df = df.copy()
    df.loc[0, "split"] = "<script>"
    report = validate_manifest(df, root, **LIMITS)
    write_report(report, tmp_path / "reports" / "validation.json")
    saved = json.loads((tmp_path / "reports" / "validation.json").read_text())
    assert saved["success"] is False
    assert any("<script>" in line for line in saved["failures"])
    page = (tmp_path / "reports" / "validation.html").read_text()
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert "Manifest validation: FAILED" in page
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [
        "validation.html",
        "validation.json",
    ]


def test_report_type_is_exported():
    assert ValidationReport(success=True, results=[]).failures() == []


def test_missing_split_is_named(dataset):
    root, df = dataset
    report = validate_manifest(df[df["split"] != "query"], root, **LIMITS)
    assert report.failures() == ["split 'query' has no rows"]
