"""Typed artifacts: what one stage writes, another reads back whole or refuses by name."""

from __future__ import annotations

import json

import pytest

from reid_core.artifacts import ExportRecord
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
