"""The short end-of-pipeline summary: dataset, each evaluation, the registered model, serving."""

from __future__ import annotations

from pathlib import Path

from reid_core.artifacts import EvaluationRecord, PromotionRecord
from reid_core.config import ReidConfig
from reid_core.json_files import read_json_object
from reid_core.tracking.runs import ui_command


def _eval_rows(path: Path) -> list[tuple[str, dict[str, float]]]:
    """One ("<model> @ <test set>", metrics) row per test set of an evaluate metrics JSON, the
    primary set first."""
    record = EvaluationRecord.load_file(path)
    return [(f"{path.stem} @ {name}", row.metrics) for name, row in record.sets()]


def pipeline_summary(reports: Path, config: ReidConfig) -> str:
    """Render what the pipeline produced under `reports/` (as dvc.yaml lays it out)."""
    decision_file = reports / "promotion.json"
    validation = sorted((reports / "validation").glob("*.json"))
    evaluations = sorted((reports / "eval").glob("*.json"))
    if not (validation or evaluations or decision_file.is_file()):
        raise FileNotFoundError(
            f"{reports}: no pipeline reports here (validation/*.json, eval/*.json, "
            "promotion.json); run `make demo` or `dvc repro` first, or give --reports"
        )
    lines = ["", "reidflow pipeline summary", "=" * 25]
    for report in validation:
        s = read_json_object(report, {"summary": dict}, "reid preprocess")["summary"]
        lines.append(
            f"dataset {report.stem}: "
            + ", ".join(
                f"{split} {s.get(f'{split}_images', '?')} images / {s.get(f'{split}_ids', '?')} ids"
                for split in ("train", "query", "gallery")
            )
        )
    rows = [row for path in evaluations for row in _eval_rows(path)]
    if rows:
        width = max(22, *(len(label) + 2 for label, _ in rows))
        lines.append("")
        lines.append(f"{'evaluation':<{width}}{'rank-1':>8}{'rank-5':>8}{'mAP':>8}{'mINP':>8}")
        for label, m in rows:
            rank5 = m.get("rank5", float("nan"))  # none when the gallery is shorter than 5
            lines.append(
                f"{label:<{width}}{m['rank1']:>8.1%}{rank5:>8.1%}{m['mAP']:>8.1%}{m['mINP']:>8.1%}"
            )
    pages = sorted((reports / "eval").glob("*/report.html"))
    if pages:
        shown = ", ".join(str(page) for page in pages)
        lines.append(f"evaluation reports (table, rank lists, CMC, ROC, distances): {shown}")
    if decision_file.is_file():
        decision = PromotionRecord.load_file(decision_file)
        lines.append("")
        verdict = "champion" if decision.promoted else "not promoted"
        lines.append(
            f"registered model: {decision.model_name} version {decision.version} ({verdict}: "
            f"{'; '.join(decision.reasons)})"
        )
        where = decision.triton_version_path or "unchanged"
        lines.append(
            f"Triton model repository: {decision.triton_repository} (new version: {where}); "
            "serve it with `make triton && .venv/bin/reid serve run`"
        )
    lines.append(f"MLflow UI: {ui_command(config)}")
    return "\n".join(lines)
