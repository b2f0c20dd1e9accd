"""Typed artifacts: what one stage writes, another reads back whole or refuses by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reid_core.artifacts import (
    EvaluatedSet,
    EvaluationRecord,
    ExportRecord,
    FeatureSet,
    FeaturesFileError,
    ModelLineage,
    PromotionRecord,
    SplitFeatures,
)
from reid_core.json_files import JsonFileError

RECORD = ExportRecord(
    height=256, width=128, embedding_dim=512, l2_normalized=False, fp16=False, opset=18,
    parity_passed=True, max_abs_diff=2e-6, min_cosine=1.0, tolerance_max_abs_diff=1e-3,
    tolerance_min_cosine=0.9999, parity_batch_sizes=[1, 7], onnx_bytes=1234,
    tensorrt="disabled", figures={"max_abs_diff_batch1": 1e-6},
)  # fmt: skip


def test_an_artifact_reads_back_equal_to_what_was_saved(tmp_path):
    path = RECORD.save(tmp_path)
    assert path == tmp_path / "parity.json"
    assert ExportRecord.load(tmp_path) == RECORD
    assert json.loads(path.read_text())["format_version"] == ExportRecord.VERSION


def _written(tmp_path, **changes):
    data = {**json.loads(RECORD.to_json()), **changes}
    data = {k: v for k, v in data.items() if v is not None}
    (tmp_path / ExportRecord.FILE).write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format_version": None}, "has no format_version: written by an older reidflow"),
        ({"format_version": 3}, "format version 3, this reidflow reads version 2: run reid export"),
        ({"format_version": True}, "format version True"),
        ({"height": None}, "lacks 'height'; is it the file reid export writes?"),
        ({"height": "256"}, "'height' has the wrong type"),
        ({"parity_passed": 1}, "'parity_passed' has the wrong type"),
        ({"max_abs_diff": True}, "'max_abs_diff' has the wrong type"),
        ({"figures": [1]}, "'figures' has the wrong type"),
        ({"extra": 1}, "unknown field\\(s\\) extra"),
    ],
    ids=["unversioned", "newer", "bool-version", "missing", "text-for-int", "int-for-bool",
         "bool-for-float", "list-for-dict", "unknown"],
)  # fmt: skip
def test_a_file_that_is_not_the_artifact_is_refused_naming_it(tmp_path, changes, message):
    _written(tmp_path, **changes)
    with pytest.raises(JsonFileError, match=message) as caught:
        ExportRecord.load(tmp_path)
    assert str(tmp_path / "parity.json") in str(caught.value)


def test_a_float_field_takes_a_json_integer(tmp_path):
    _written(tmp_path, max_abs_diff=0)
    assert ExportRecord.load(tmp_path).max_abs_diff == 0


def test_a_folder_artifact_may_also_be_saved_to_and_read_from_a_path(tmp_path):
    path = RECORD.save_file(tmp_path / "elsewhere.json")
    assert ExportRecord.load_file(path) == RECORD


def test_a_list_or_mapping_field_holds_items_of_its_type(tmp_path):
    _written(tmp_path, parity_batch_sizes=[1, "7"])
    with pytest.raises(JsonFileError, match="parity_batch_sizes: item '7' has the wrong type"):
        ExportRecord.load(tmp_path)
    _written(tmp_path, figures={"max_abs_diff_batch1": "small"})
    with pytest.raises(JsonFileError, match="figures: 'max_abs_diff_batch1' has the wrong type"):
        ExportRecord.load(tmp_path)


# ------------------------------------------------------------- the evaluation metrics JSON

SOURCE = EvaluatedSet(
    metrics={"rank1": 0.75, "rank5": 0.9, "mAP": 0.5, "mINP": 0.25, "tar_at_far_0.01": 0.1},
    domain="source", eval_set_hash="a" * 16, dvc_md5="",
)  # fmt: skip
EVALUATION = EvaluationRecord(
    metrics=SOURCE.metrics, model_stage="distill", domain="source", test_set="source",
    eval_set_hash=SOURCE.eval_set_hash, metric="cosine", flip=False, query_expansion="none",
    rerank=False,
    test_sets={"source": SOURCE, "dusk": EvaluatedSet({"rank1": 0.5, "mAP": 0.25, "mINP": 0.125},
                                                       "dusk", "b" * 16, "0123.dir")},
)  # fmt: skip


def test_the_evaluation_json_keeps_the_primary_metrics_flat_and_reads_back_equal(tmp_path):
    path = EVALUATION.save_file(tmp_path / "eval.json")
    data = json.loads(path.read_text())
    assert data["mAP"] == 0.5 and data["tar_at_far_0.01"] == 0.1  # as dvc metrics reads them
    assert data["test_sets"]["dusk"] == {
        "rank1": 0.5, "mAP": 0.25, "mINP": 0.125, "domain": "dusk", "eval_set_hash": "b" * 16,
        "dvc_md5": "0123.dir",
    }  # fmt: skip
    assert data["format_version"] == EvaluationRecord.VERSION and "metrics" not in data
    assert EvaluationRecord.load_file(path) == EVALUATION
    assert [name for name, _ in EVALUATION.sets()] == ["source", "dusk"]
    with pytest.raises(TypeError, match="use save_file/load_file"):
        EvaluationRecord.load(tmp_path)


def _evaluation(tmp_path, change) -> str:
    data = json.loads(EVALUATION.to_json())
    change(data)
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("mAP"), "lacks 'mAP'; is it the file reid evaluate writes"),
        (lambda d: d.update(mAP="0.5"), "'mAP' has the wrong type"),
        (lambda d: d.update(note="text"), "'note' has the wrong type"),
        (lambda d: d.update(flip="no"), "'flip' has the wrong type"),
        (lambda d: d["test_sets"]["dusk"].pop("mINP"), "test_sets 'dusk': lacks 'mINP'"),
        (lambda d: d["test_sets"]["dusk"].update(rank1=None), "test_sets 'dusk': 'rank1' has"),
        (lambda d: d["test_sets"].update(dusk=[1]), "test_sets 'dusk': not an object"),
        (lambda d: d["test_sets"].pop("source"), "primary test set 'source' has no row"),
        (lambda d: d.pop("format_version"), "has no format_version"),
    ],
    ids=["no-mAP", "text-mAP", "text-extra", "text-flip", "row-without-mINP", "row-null-rank1",
         "row-a-list", "no-primary-row", "unversioned"],
)  # fmt: skip
def test_an_evaluation_json_that_is_not_one_is_refused_naming_it(tmp_path, change, message):
    path = _evaluation(tmp_path, change)
    with pytest.raises(JsonFileError, match=message) as caught:
        EvaluationRecord.load_file(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_an_evaluation_json_may_hold_any_metric_that_is_a_number(tmp_path):
    path = _evaluation(tmp_path, lambda d: d.update({"tar_at_far_0.5": 1}))
    assert EvaluationRecord.load_file(path).metrics["tar_at_far_0.5"] == 1


# ------------------------------------------------------------------- the features .npz


def _features(rows: int = 5) -> FeatureSet:
    rng = np.random.default_rng(0)

    def split(n: int, name: str) -> SplitFeatures:
        paths = np.array([f"{name}/{i}.jpg" for i in range(n)], dtype=object)  # as splits hold
        return SplitFeatures(rng.random((n, 4), np.float32), np.arange(n, dtype=np.int32),
                             np.zeros(n, np.int64), paths)  # fmt: skip

    return FeatureSet(split(3, "query"), split(rows, "gallery"), normalized=False)


def test_features_read_back_as_saved_with_plain_arrays(tmp_path):
    path = _features().save(tmp_path / "source.npz")
    loaded = FeatureSet.load(path)
    for name in ("query", "gallery"):
        saved, read = getattr(_features(), name), getattr(loaded, name)
        for column in ("feats", "pids", "camids", "paths"):
            np.testing.assert_array_equal(getattr(read, column), getattr(saved, column))
        assert read.pids.dtype == np.int64 and read.paths.dtype.kind == "U"
    assert loaded.normalized is False
    gallery = FeatureSet.load_split(path, "gallery")
    assert len(gallery) == 5 and list(gallery.metadata()) == ["paths", "pids", "camids"]
    with np.load(path, allow_pickle=False) as data:
        assert int(data["format_version"]) == FeatureSet.VERSION


def _resaved(path, change) -> None:
    with np.load(path) as data:
        arrays = dict(data)
    change(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("format_version"), "has no format_version: written by an older"),
        (lambda a: a.update(format_version=np.array(2)), "format version 2, this reidflow reads"),
        (lambda a: a.pop("gallery_camids"), "not a features file of reid evaluate: missing "
                                             "gallery_camids"),
        (lambda a: a.update(gallery_pids=a["gallery_pids"][:-1]), r"gallery_pids has shape \(4,"),
        (lambda a: a.update(gallery_pids=a["gallery_pids"] * 1.5), "gallery_pids must be integers"),
        (lambda a: a.update(gallery_feats=a["gallery_feats"][0]), "gallery_feats must be rows"),
        (lambda a: a.update(gallery_paths=np.arange(5)), "gallery_paths must be strings"),
        (lambda a: a.update(gallery_paths=np.array([object()] * 5)), "unreadable features file"),
        (lambda a: a.update(normalized=np.array([1, 2])), "normalized must be one bool"),
    ],
    ids=["unversioned", "newer", "no-camids", "row-short", "float-pids", "1-d-feats",
         "number-paths", "pickled", "normalized-array"],
)  # fmt: skip
def test_a_features_file_that_is_not_one_is_refused_naming_it(tmp_path, change, message):
    path = _features().save(tmp_path / "source.npz")
    _resaved(path, change)
    with pytest.raises(FeaturesFileError, match=message) as caught:
        FeatureSet.load(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_features_that_are_no_archive_are_refused_naming_them(tmp_path):
    with open(tmp_path / "array.npz", "wb") as f:
        np.save(f, np.ones(3))  # an .npy: np.load gives an array, not an archive
    (tmp_path / "broken.npz").write_bytes(b"PK broken")
    for name, message in [("array.npz", "not a NumPy archive"), ("broken.npz", "unreadable"),
                          ("absent.npz", "no such features file")]:  # fmt: skip
        path = tmp_path / name
        with pytest.raises(FeaturesFileError, match=message) as caught:
            FeatureSet.load_split(path, "gallery")
        assert str(caught.value).startswith(f"{path}: ")


def test_split_features_of_unequal_lengths_cannot_be_made():
    with pytest.raises(ValueError, match="camids has shape \\(2,\\): it needs one entry per row"):
        SplitFeatures(np.ones((3, 2), np.float32), np.arange(3), np.arange(2), np.array(["a"] * 3))


# ------------------------------------------------------------------ the promotion decision

DECISION = PromotionRecord(
    model_name="reid", version=2, promoted=False, reasons=["FAIL mAP gain: +0.0000"],
    previous_champion=None, evaluation_set="a" * 16, triton_version=None,
    triton_version_path="", triton_repository="serving/model_repository", mAP=0.5, rank1=1,
)  # fmt: skip


def test_a_decision_reads_back_with_its_empty_values(tmp_path):
    path = DECISION.save_file(tmp_path / "promotion.json")
    assert json.loads(path.read_text())["triton_version"] is None
    assert PromotionRecord.load_file(path) == DECISION


@pytest.mark.parametrize(
    ("change", "message"),
    [({"triton_version": "1"}, "'triton_version' has the wrong type"),
     ({"previous_champion": 1.5}, "'previous_champion' has the wrong type"),
     ({"reasons": ["ok", 3]}, "reasons: item 3 has the wrong type"),
     ({"promoted": None}, "'promoted' has the wrong type")],
)  # fmt: skip
def test_a_decision_of_the_wrong_types_is_refused_naming_it(tmp_path, change, message):
    path = tmp_path / "promotion.json"
    path.write_text(json.dumps({**json.loads(DECISION.to_json()), **change}))
    with pytest.raises(JsonFileError, match=message) as caught:
        PromotionRecord.load_file(path)
    assert str(caught.value).startswith(f"{path}: ")


# --------------------------------------------------------- a checkpoint's lineage (meta.json)

LINEAGE = ModelLineage(
    stage="adapt", role="adapted", domain="target", data_fingerprint="f" * 16, dvc_md5="",
    data_lineage='{"reid.dataset.target.kind": "synth"}', config_hash="c" * 16,
    source_weights_sha256="0" * 64, rounds_completed=2,
)  # fmt: skip


def test_a_lineage_adds_its_own_keys_to_the_checkpoint_metadata_and_reads_back():
    meta = {"height": 64, "width": 32, "embedding_dim": 128, **LINEAGE.as_meta()}
    assert "teachers" not in meta and meta["rounds_completed"] == 2  # distill's facts left out
    assert ModelLineage.from_meta(meta, "ckpt/meta.json") == LINEAGE
    assert LINEAGE.data_lineage_tags() == {"reid.dataset.target.kind": "synth"}


@pytest.mark.parametrize(
    ("change", "message"),
    [({"stage": None}, "'stage' has the wrong type"),
     ({"rounds_completed": "2"}, "'rounds_completed' has the wrong type"),
     ({"teachers": ["a", 1]}, "teachers: item 1 has the wrong type"),
     ({"data_lineage": "{"}, "data_lineage is not JSON"),
     ({"data_lineage": "[]"}, "data_lineage must be a JSON object of strings")],
)  # fmt: skip
def test_a_checkpoint_with_a_bad_lineage_is_refused_naming_its_meta_json(change, message):
    meta = {"height": 64, "width": 32, **LINEAGE.as_meta(), **change}
    with pytest.raises(JsonFileError, match=message) as caught:
        ModelLineage.from_meta(meta, "ckpt/meta.json")
    assert str(caught.value).startswith("ckpt/meta.json: ")


def test_a_checkpoint_without_lineage_says_which_stages_write_one():
    message = "ckpt/meta.json: lacks 'stage', 'role'.*; is it a checkpoint of reid train, distill"
    with pytest.raises(JsonFileError, match=message):
        ModelLineage.from_meta({"height": 64, "width": 32}, "ckpt/meta.json")
