"""Registered model versions side by side: metrics, lineage, aliases, promotion verdicts."""

from __future__ import annotations

from collections.abc import Sequence


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
# one row per test set: reid.eval_dvc_md5.<test set>
EVAL_DVC_PREFIX = "reid.eval_dvc_md5."


def compare_versions(model_name: str, versions: Sequence[int] | None = None) -> str:
    """A Markdown table, one column per version (newest first; all when `versions` is None)."""
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
    aliases = client.get_registered_model(model_name).aliases  # alias -> version
    columns = [by_number[v] for v in wanted]
    header = ["", *(f"v{v.version}" for v in columns)]
    lines = [_row(header), _row(["---"] * len(header))]
    lines.append(
        _row(
            [
                "aliases",
                *(
                    ", ".join(sorted(a for a, n in aliases.items() if int(n) == int(v.version)))
                    or "—"
                    for v in columns
                ),
            ]
        )
    )
    test_sets = sorted(
        {
            t.removeprefix(EVAL_DVC_PREFIX)
            for v in columns
            for t in v.tags
            if t.startswith(EVAL_DVC_PREFIX)
        }
    )
    rows = [*ROWS, *((f"test set {s} DVC md5", EVAL_DVC_PREFIX + s) for s in test_sets)]
    for label, tag in rows:
        lines.append(_row([label, *(_cell(v.tags.get(tag), tag) for v in columns)]))
    return "\n".join(lines)


def _cell(value: str | None, tag: str) -> str:
    if value in (None, ""):
        return "—"
    if tag in _SHORT:
        return value[:12]
    return value.replace("|", "\\|")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
