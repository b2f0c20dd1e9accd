"""Registered model versions side by side: metrics, lineage, aliases, promotion verdicts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class UnknownVersionError(LookupError):
    """The registered model, or a version asked for, does not exist."""


# (row label, version tag) in display order; a missing tag shows as "—"
ROWS: tuple[tuple[str, str], ...] = (
    ("mAP", "reid.mAP"),
    ("rank-1", "reid.rank1"),
    ("mINP", "reid.mINP"),
    ("latency ms (batch 1)", "reid.latency_ms"),
    ("parity passed", "reid.parity_passed"),
    ("parity max abs diff", "reid.parity_max_abs_diff"),
    ("evaluation set", "reid.eval_set_hash"),
    ("model stage", "reid.model_stage"),
    ("git commit", "reid.git_commit"),
    ("config hash", "reid.config_hash"),
    ("data fingerprint", "reid.data_fingerprint"),
    ("training data DVC md5", "reid.dvc_md5"),
    ("training run", "reid.train_run_id"),
    ("pipeline run", "reid.pipeline_run_id"),
    ("parent run", "reid.parent_run_id"),
    ("Triton version", "reid.triton_version"),
    ("replaced", "reid.previous_champion"),
    ("promotion", "reid.promotion"),
)
_SHORT = {
    "reid.eval_set_hash",
    "reid.git_commit",
    "reid.data_fingerprint",
    "reid.train_run_id",
    "reid.parent_run_id",
}
_PERCENT = {"reid.mAP", "reid.rank1", "reid.mINP"}
# one row per test set: reid.eval_dvc_md5.<test set>, and its figures reid.eval.<set>.<metric>
EVAL_DVC_PREFIX = "reid.eval_dvc_md5."
EVAL_METRIC_TAG = "reid.eval.{test_set}.{metric}"
TEST_SET_METRICS = (("rank-1", "rank1"), ("mAP", "mAP"), ("mINP", "mINP"))


@dataclass(frozen=True)
class VersionTable:
    """Registered versions side by side: one column per version, one row per fact."""

    model_name: str
    versions: list[int]  # the columns, newest first
    rows: list[tuple[str, list[str]]]  # (label, one cell per version; "—" where unknown)
    aliases: dict[int, list[str]]  # version -> its aliases
    tags: dict[int, dict[str, str]]  # version -> its tags (the promote run's id, ...)

    def markdown(self) -> str:
        header = ["", *(f"v{v}" for v in self.versions)]
        lines = [_row(header), _row(["---"] * len(header))]
        lines.extend(
            _row([label, *(c.replace("|", "\\|") for c in cells)]) for label, cells in self.rows
        )
        return "\n".join(lines)


def version_table(model_name: str, versions: Sequence[int] | None = None) -> VersionTable:
    """The table of `versions` of `model_name` (all, newest first, when None)."""
    import mlflow

    client = mlflow.MlflowClient()
    found = client.search_model_versions(f"name = '{model_name}'")
    if not found:
        raise UnknownVersionError(f"no registered versions of {model_name!r}")
    by_number = {int(v.version): v for v in found}
    wanted = sorted(by_number, reverse=True) if versions is None else list(versions)
    missing = [v for v in wanted if v not in by_number]
    if missing:
        raise UnknownVersionError(f"{model_name} has no version {', '.join(map(str, missing))}")
    registered = client.get_registered_model(model_name).aliases  # alias -> version
    aliases = {v: sorted(a for a, n in registered.items() if int(n) == v) for v in wanted}
    tags = {v: dict(by_number[v].tags) for v in wanted}
    test_sets = sorted(
        {
            t.removeprefix(EVAL_DVC_PREFIX)
            for v in wanted
            for t in tags[v]
            if t.startswith(EVAL_DVC_PREFIX)
        }
    )
    labelled = [
        *ROWS,
        *(
            (f"{label} on {s}", EVAL_METRIC_TAG.format(test_set=s, metric=metric))
            for s in test_sets
            for label, metric in TEST_SET_METRICS
        ),
        *((f"test set {s} DVC md5", EVAL_DVC_PREFIX + s) for s in test_sets),
    ]
    rows = [("aliases", [", ".join(aliases[v]) or "—" for v in wanted])]
    rows += [(label, [_cell(tags[v].get(tag), tag) for v in wanted]) for label, tag in labelled]
    return VersionTable(model_name, wanted, rows, aliases, tags)


def compare_versions(model_name: str, versions: Sequence[int] | None = None) -> str:
    """A Markdown table, one column per version (newest first; all when `versions` is None)."""
    return version_table(model_name, versions).markdown()


def promotion_report(promote_run_id: str) -> str | None:
    """The Markdown report that the promote run (a version's `reid.promote_run_id` tag) wrote
    when it judged the version; None when there is none."""
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException

    if not promote_run_id:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.MlflowClient().download_artifacts(promote_run_id, "promotion.md", tmp)
        except (MlflowException, OSError):
            return None
        return Path(path).read_text(encoding="utf-8")


def _cell(value: str | None, tag: str) -> str:
    if value in (None, ""):
        return "—"
    if tag in _SHORT:
        return value[:12]
    if tag in _PERCENT or (tag.startswith("reid.eval.") and not tag.startswith(EVAL_DVC_PREFIX)):
        return f"{100 * float(value):.1f}%"
    if tag == "reid.latency_ms":
        return f"{float(value):.2f}"
    return value


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
