"""The short end-of-pipeline summary: dataset, each evaluation, the registered model, serving."""

from __future__ import annotations

import json
from pathlib import Path

from reid_core.config import ReidConfig
from reid_core.tracking.runs import ui_command


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _eval_rows(path: Path) -> list[tuple[str, dict]]:
    """One ("<model> @ <test set>", metrics) row per test set of an evaluate metrics JSON, the
    primary set first; a JSON without a `test_sets` table is one row named after the file."""
    m = _load(path)
    sets = m.get("test_sets")
    if not isinstance(sets, dict) or not sets:
        return [(path.stem, m)]
    primary = m.get("test_set")
    names = sorted(sets, key=lambda name: (name != primary, name))
    return [(f"{path.stem} @ {name}", sets[name]) for name in names]


def pipeline_summary(reports: Path, config: ReidConfig) -> str:
    """Render what the pipeline produced under `reports/` (as dvc.yaml lays it out)."""
    lines = ["", "reidflow pipeline summary", "=" * 25]
    for report in sorted((reports / "validation").glob("*.json")):
        s = _load(report).get("summary", {})
        lines.append(
            f"dataset {report.stem}: "
            + ", ".join(
                f"{split} {s.get(f'{split}_images', '?')} images / {s.get(f'{split}_ids', '?')} ids"
                for split in ("train", "query", "gallery")
            )
        )
    rows = [row for path in sorted((reports / "eval").glob("*.json")) for row in _eval_rows(path)]
    if rows:
        width = max(22, *(len(label) + 2 for label, _ in rows))
        lines.append("")
        lines.append(f"{'evaluation':<{width}}{'rank-1':>8}{'rank-5':>8}{'mAP':>8}{'mINP':>8}")
        for label, m in rows:
            lines.append(
                f"{label:<{width}}{m['rank1']:>8.1%}{m.get('rank5', float('nan')):>8.1%}"
                f"{m['mAP']:>8.1%}{m['mINP']:>8.1%}"
            )
    pages = sorted((reports / "eval").glob("*/report.html"))
    if pages:
        shown = ", ".join(str(page) for page in pages)
        lines.append(f"evaluation reports (table, rank lists, CMC, ROC, distances): {shown}")
    decision = _load(reports / "promotion.json")
    if decision:
        lines.append("")
        verdict = "champion" if decision["promoted"] else "not promoted"
        lines.append(
            f"registered model: {decision['model_name']} version {decision['version']} ({verdict}: "
            f"{'; '.join(decision['reasons'])})"
        )
        where = decision["triton_version_path"] or "unchanged"
        lines.append(
            f"Triton model repository: {decision['triton_repository']} (new version: {where}); "
            "serve it with `make triton && .venv/bin/reid serve run`"
        )
    lines.append(f"MLflow UI: {ui_command(config)}")
    return "\n".join(lines)
