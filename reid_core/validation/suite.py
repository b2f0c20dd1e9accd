"""The manifest validation suite (Great Expectations) and its report.

Plain column checks (schema, types, nulls, ranges, allowed values) are GX expectations on the
manifest. Two facts need the whole table or the image bytes, so they are computed here in pandas
first, as derived columns, and then asserted with GX expectations like the rest, so the report
shows every check in one place:

- `decodable`: the image at `root / path` decodes with Pillow;
- `has_cross_camera_match`: the gallery holds the row's pid from another camera (asserted on query
  rows: a query without one cannot be evaluated).

Great Expectations is imported lazily (it takes seconds) with its usage analytics switched off.
"""

from __future__ import annotations

import html
import itertools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reid_core.atomic import atomic_output, write_json
from reid_core.data.cameras import NO_CAMERA
from reid_core.data.errors import DatasetError
from reid_core.data.manifest import MANIFEST_COLUMNS
from reid_core.data.paths import confined

SPLITS = ("train", "query", "gallery")
DERIVED_COLUMNS = ("decodable", "has_cross_camera_match")
MAX_CAMID = 999  # more cameras than any re-id benchmark by far: a larger value is a parsing bug
SHOWN = 10  # at most this many offending items are spelled out per check
_COLUMN_TYPES = {
    "path": "str",
    "pid": "int64",
    "camid": "int64",
    "split": "str",
    "domain": "str",
    "width": "int64",
    "height": "int64",
}
_DECODE_THREADS = 4

_lock = threading.Lock()
_init_lock = threading.Lock()
_gx_state: dict[str, Any] = {}
_counter = itertools.count()


@dataclass
class ValidationReport:
    """The outcome of `validate_manifest`: one result per expectation, plus a short summary."""

    success: bool
    results: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)

    def failures(self) -> list[str]:
        """One readable line per problem found (empty when the manifest passed)."""
        return [m for r in self.results if not r["success"] for m in r["messages"]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "failures": self.failures(),
            "summary": self.summary,
            "results": self.results,
        }


@dataclass
class _Check:
    """One expectation and how to explain its failure in words."""

    name: str
    expectation: Any
    column: str | None
    explain: Callable[[dict[str, Any]], list[str]]
    condition: str | None = None


def _gx() -> tuple[Any, Any, Any]:
    """The great_expectations module, an ephemeral context and a whole-dataframe batch
    definition, made once per process."""
    with _init_lock:
        if not _gx_state:
            _init_gx()
    return _gx_state["gx"], _gx_state["context"], _gx_state["batch"]


def _init_gx() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("reidflow").add_dataframe_asset("manifest")
    _gx_state.update(
        gx=gx, context=context, batch=asset.add_batch_definition_whole_dataframe("whole")
    )


def _decode(path: Path) -> str | None:
    """None when the image decodes fully, else why not."""
    from reid_core.data.images import open_image

    try:
        with open_image(path) as image:
            image.convert("RGB")
    except Exception as err:  # noqa: BLE001 - any failure means "not usable"
        return str(err)
    return None


def decode_errors(root: Path, paths: list[Any]) -> list[str | None]:
    """Decode every image under `root` (in threads: Pillow decodes without the GIL).

    One entry per path: None when it decodes, else why not (a missing path counts as a fault).
    """

    def check(relative: Any) -> str | None:
        if not isinstance(relative, str) or not relative:
            return "no path"
        try:
            return _decode(confined(root, relative))
        except DatasetError as err:
            return str(err)

    with ThreadPoolExecutor(_DECODE_THREADS) as pool:
        return list(pool.map(check, paths))


def cross_camera_match(df: pd.DataFrame) -> np.ndarray:
    """Per row: does a gallery row share its pid from a different camera? (vectorised)

    An unknown camera (NO_CAMERA) is different from every camera, itself included."""
    gallery = df.loc[df["split"] == "gallery", ["pid", "camid"]].drop_duplicates()
    cameras_per_pid = gallery.groupby("pid").size().rename("n_cameras")
    same_camera = gallery[gallery["camid"] != NO_CAMERA].assign(same=1)
    keys = df[["pid", "camid"]].reset_index(drop=True)
    merged = keys.merge(cameras_per_pid, left_on="pid", right_index=True, how="left").merge(
        same_camera, on=["pid", "camid"], how="left"
    )
    other_cameras = merged["n_cameras"].fillna(0) - merged["same"].fillna(0)
    return (other_cameras > 0).to_numpy()


def _plain(value: Any) -> Any:
    """JSON-friendly copy of a GX result value (numpy scalars, tuples, sets...)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def _exception_message(info: dict[str, Any]) -> str | None:
    """The first error GX caught while computing an expectation's metrics, if any."""
    if not info:
        return None
    if "raised_exception" in info:
        infos = [info]
    else:  # keyed by metric id
        infos = [v for v in info.values() if isinstance(v, dict)]
    for item in infos:
        if item.get("raised_exception"):
            message = str(item.get("exception_message") or "unknown error")
            return message.strip().splitlines()[-1] if message.strip() else message
    return None


def validate_manifest(
    df: pd.DataFrame,
    root: str | Path,
    *,
    min_side: int,
    max_side: int,
    required_splits: Sequence[str] = SPLITS,
) -> ValidationReport:
    """Run the manifest suite on `df` (images under `root`) and return the report; each of
    `required_splits` must hold rows (a test-only layout needs no train split)."""
    root = Path(root)
    frame = df.reset_index(drop=True).copy()
    present = [c for c in MANIFEST_COLUMNS if c in frame.columns]
    undecodable: dict[str, str] = {}
    if "path" in frame.columns:
        errors = decode_errors(root, list(frame["path"]))
        undecodable = {
            p if isinstance(p, str) and p else f"row {i} (no path)": e
            for i, (p, e) in enumerate(zip(frame["path"], errors, strict=True))
            if e is not None
        }
        frame["decodable"] = [e is None for e in errors]
    if {"pid", "camid", "split"} <= set(frame.columns):
        frame["has_cross_camera_match"] = cross_camera_match(frame)
    checks = _build_checks(frame, df, present, undecodable, min_side, max_side, required_splits)
    results = _run(frame, checks)
    return ValidationReport(
        success=all(r["success"] for r in results),
        results=results,
        summary=_summary(frame, undecodable),
    )


def _summary(frame: pd.DataFrame, undecodable: dict[str, str]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "rows": len(frame),
        "undecodable": len(undecodable),
        "undecodable_images": dict(undecodable),  # every one, with why
    }
    if {"pid", "camid", "split"} <= set(frame.columns):
        for split in SPLITS:
            rows = frame[frame["split"] == split]
            summary[f"{split}_images"] = len(rows)
            summary[f"{split}_ids"] = int(rows["pid"].nunique())
            summary[f"{split}_cameras"] = int(rows["camid"].nunique())
    return summary


def _where(frame: pd.DataFrame, result: dict[str, Any]) -> str:
    """', e.g. <paths>' for the rows GX reported, when the frame has paths."""
    index = result.get("partial_unexpected_index_list") or []
    if "path" not in frame.columns or not index:
        return ""
    rows = [i for i in index[:3] if isinstance(i, int) and 0 <= i < len(frame)]
    names = [frame["path"].iloc[i] for i in rows]
    shown = [
        n if isinstance(n, str) and n else f"row {i}" for i, n in zip(rows, names, strict=True)
    ]
    return (", e.g. " + ", ".join(shown)) if shown else ""


def _count(result: dict[str, Any]) -> int:
    return int(result.get("unexpected_count") or 0)


def _examples(result: dict[str, Any]) -> list[str]:
    """The distinct offending values GX sampled, as strings."""
    return sorted(set(map(str, result.get("partial_unexpected_list") or [])))[:SHOWN]


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _build_checks(
    frame: pd.DataFrame,
    df: pd.DataFrame,
    present: list[str],
    undecodable: dict[str, str],
    min_side: int,
    max_side: int,
    required_splits: Sequence[str],
) -> list[_Check]:
    gx, _, _ = _gx()
    from great_expectations.expectations.row_conditions import Column

    e = gx.expectations
    expected_columns = [*MANIFEST_COLUMNS, *DERIVED_COLUMNS]
    checks = [
        _Check(
            "schema",
            e.ExpectTableColumnsToMatchOrderedList(column_list=expected_columns),
            None,
            lambda r: [
                f"manifest columns are {list(map(str, df.columns))}, "
                f"expected {list(MANIFEST_COLUMNS)} in this order"
            ],
        ),
        _Check(
            "not_empty",
            e.ExpectTableRowCountToBeBetween(min_value=1),
            None,
            lambda r: ["manifest has no rows"],
        ),
    ]
    for column in MANIFEST_COLUMNS:
        if column not in present:
            checks.append(
                _Check(
                    f"{column}.exists",
                    e.ExpectColumnToExist(column=column),
                    column,
                    lambda r, c=column: [f"column '{c}' is missing"],
                )
            )
            continue
        checks.append(
            _Check(
                f"{column}.not_null",
                e.ExpectColumnValuesToNotBeNull(column=column),
                column,
                lambda r, c=column: [
                    f"column '{c}' is empty in {_rows(_count(r))}{_where(frame, r)}"
                ],
            )
        )
        checks.append(
            _Check(
                f"{column}.type",
                e.ExpectColumnValuesToBeOfType(column=column, type_=_COLUMN_TYPES[column]),
                column,
                lambda r, c=column: [
                    f"column '{c}' should hold {_COLUMN_TYPES[c]} values, "
                    + (
                        f"found {_rows(_count(r))} that do not, e.g. {_examples(r)[:3]}"
                        if "unexpected_count" in r
                        else f"its type is {r.get('observed_value')}"
                    )
                ],
            )
        )

    def values(name: str, column: str, expectation: Any, why: str, *, where: bool = True) -> None:
        if column in present:
            checks.append(
                _Check(
                    name,
                    expectation,
                    column,
                    lambda r: [
                        f"column '{column}' has {_rows(_count(r))} {why}: "
                        f"{_examples(r)}" + (_where(frame, r) if where else "")
                    ],
                )
            )

    values(
        "path.unique",
        "path",
        e.ExpectColumnValuesToBeUnique(column="path"),
        "sharing a path with another row",
        where=False,
    )
    values(
        "split.allowed",
        "split",
        e.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        f"with a value not in {list(SPLITS)}",
    )
    if "split" in present:
        checks.append(
            _Check(
                "split.all_present",
                e.ExpectColumnDistinctValuesToContainSet(
                    column="split", value_set=list(required_splits)
                ),
                "split",
                lambda r: [f"split '{s}' has no rows" for s in r.get("partial_missing_list", [])],
            )
        )
    values(
        "pid.range",
        "pid",
        e.ExpectColumnValuesToBeBetween(column="pid", min_value=0),
        "with a value below 0",
    )
    values(
        "camid.range",
        "camid",
        e.ExpectColumnValuesToBeBetween(column="camid", min_value=NO_CAMERA, max_value=MAX_CAMID),
        f"with a value outside [{NO_CAMERA} (unknown camera), {MAX_CAMID}]",
    )
    for side in ("width", "height"):
        values(
            f"{side}.range",
            side,
            e.ExpectColumnValuesToBeBetween(column=side, min_value=min_side, max_value=max_side),
            f"with a value outside [{min_side}, {max_side}]",
        )
    if {"pid", "split"} <= set(present):
        checks.append(
            _Check(
                "distractors.gallery_only",
                e.ExpectColumnValuesToBeInSet(
                    column="split", value_set=["gallery"], row_condition=Column("pid") == 0
                ),
                "split",
                lambda r: [
                    f"pid 0 marks distractors, allowed in the gallery only, but "
                    f"{_rows(_count(r))} are in {_examples(r)}"
                    f"{_where(frame, r)}"
                ],
                "pid == 0",
            )
        )
    if "decodable" in frame.columns:
        checks.append(
            _Check(
                "images.decodable",
                e.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True]),
                "decodable",
                lambda r: _explain_undecodable(undecodable),
            )
        )
    if "has_cross_camera_match" in frame.columns:
        checks.append(
            _Check(
                "query.cross_camera_match",
                e.ExpectColumnValuesToBeInSet(
                    column="has_cross_camera_match",
                    value_set=[True],
                    row_condition=Column("split") == "query",
                ),
                "has_cross_camera_match",
                lambda r: _explain_unmatched(frame),
                "split == 'query'",
            )
        )
    return checks


def _explain_undecodable(undecodable: dict[str, str]) -> list[str]:
    lines = [
        f"image {path} does not decode ({why})" if why != "no path" else f"{path} has no image"
        for path, why in undecodable.items()
    ]
    if len(lines) > SHOWN:
        lines = [*lines[:SHOWN], f"... and {len(lines) - SHOWN} more undecodable images"]
    return lines


def _explain_unmatched(frame: pd.DataFrame) -> list[str]:
    queries = frame[(frame["split"] == "query") & ~frame["has_cross_camera_match"]]
    gallery = frame[frame["split"] == "gallery"]
    gallery_cameras = gallery.groupby("pid")["camid"].unique()
    lines = []
    for pid, rows in queries.groupby("pid", sort=True):
        if pid in gallery_cameras.index:
            cameras = ", ".join(str(c) for c in sorted(gallery_cameras[pid]))
            reason = f"the gallery has it only from camid {cameras}, the query's own camera"
        else:
            reason = "the gallery has no image of it at all"
        lines.append(
            f"query pid {pid} has no gallery image from another camera "
            f"({_rows(len(rows))}; {reason})"
        )
    if len(lines) > SHOWN:
        lines = [*lines[:SHOWN], f"... and {len(lines) - SHOWN} more query pids like these"]
    return lines


def _run(frame: pd.DataFrame, checks: list[_Check]) -> list[dict[str, Any]]:
    """Validate `frame` against the checks (as one GX suite) and explain each outcome."""
    gx, context, batch = _gx()
    with _lock:
        name = f"manifest-{os.getpid()}-{next(_counter)}"
        suite = context.suites.add(
            gx.ExpectationSuite(name=name, expectations=[c.expectation for c in checks])
        )
        try:
            definition = context.validation_definitions.add(
                gx.ValidationDefinition(data=batch, suite=suite, name=name)
            )
            try:
                outcome = definition.run(
                    batch_parameters={"dataframe": frame}, result_format="SUMMARY"
                )
            finally:
                context.validation_definitions.delete(name)
        finally:
            context.suites.delete(name)
    by_id = {r.expectation_config.id: r for r in outcome.results}
    results = []
    for check, expectation in zip(checks, suite.expectations, strict=True):
        found = by_id[expectation.id]
        result = _plain(found.result or {})
        error = _exception_message(_plain(found.exception_info or {}))
        success = bool(found.success) and error is None
        if success:
            messages: list[str] = []
        elif error is not None:
            messages = [f"check {check.name} could not run: {error}"]
        else:
            messages = check.explain(result) or [
                f"check {check.name} failed ({found.expectation_config.type})"
            ]
        details = {
            k: result[k]
            for k in ("observed_value", "element_count", "unexpected_count", "unexpected_percent")
            if k in result
        }
        if "partial_missing_list" in result:
            details["missing_values"] = result["partial_missing_list"]
        if "partial_unexpected_list" in result:
            details["unexpected_examples"] = result["partial_unexpected_list"][:5]
        if error is not None:
            details["error"] = error
        results.append(
            {
                "check": check.name,
                "expectation": found.expectation_config.type,
                "column": check.column,
                "condition": check.condition,
                "success": success,
                "details": details,
                "messages": messages,
            }
        )
    return results


def html_report_path(json_path: str | Path) -> Path:
    """Where `write_report` puts the HTML page of the report at `json_path`."""
    json_path = Path(json_path)
    return json_path.with_name(json_path.stem + ".html")


def write_report(report: ValidationReport, json_path: str | Path) -> None:
    """Write the report as JSON and as an HTML table next to it (`<stem>.html`), atomically."""
    json_path = Path(json_path)
    write_json(json_path, report.to_dict())
    with atomic_output(html_report_path(json_path)) as tmp:
        tmp.write_text(render_html(report), encoding="utf-8")


def render_html(report: ValidationReport) -> str:
    """A self-contained HTML page: verdict, problems, summary and one row per check."""
    esc = html.escape
    verdict = "passed" if report.success else "FAILED"
    problems = "".join(f"<li>{esc(line)}</li>" for line in report.failures())
    summary = "".join(
        f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in report.summary.items()
    )
    rows = []
    for r in report.results:
        status = "ok" if r["success"] else "fail"
        details = "; ".join(f"{k}: {v}" for k, v in r["details"].items())
        rows.append(
            f'<tr class="{status}"><td>{esc(r["check"])}</td><td>{esc(r["expectation"])}</td>'
            f"<td>{esc(str(r['column'] or ''))}</td><td>{esc(str(r['condition'] or ''))}</td>"
            f"<td>{status}</td><td>{esc(details)}</td></tr>"
        )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Manifest validation</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:2px 6px;text-align:left}"
        ".fail{background:#fdd}.ok{background:#efe}</style></head><body>\n"
        f"<h1>Manifest validation: {verdict}</h1>\n"
        + (f"<h2>Problems</h2><ul>{problems}</ul>\n" if problems else "")
        + f"<h2>Summary</h2><table>{summary}</table>\n"
        "<h2>Checks</h2><table><tr><th>check</th><th>expectation</th><th>column</th>"
        "<th>rows</th><th>status</th><th>details</th></tr>\n"
        + "\n".join(rows)
        + "\n</table></body></html>\n"
    )
