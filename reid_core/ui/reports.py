"""The evaluation reports the pipeline wrote (`reports/eval/<model>.json` and the report folder
beside it), listed per model and test set; their files are served from that folder only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reid_core.artifacts import EvaluationRecord
from reid_core.data.paths import confined
from reid_core.evaluation.reports import CAPTIONS, HTML_FILE, SetReport, metrics_table
from reid_core.json_files import JsonFileError

FIGURES = tuple(CAPTIONS)  # per test set, in the order the page shows them
SERVED_SUFFIXES = {".png": "image/png", ".html": "text/html; charset=utf-8"}
TAR_PREFIX = "tar_at_far_"


class UnknownReportError(LookupError):
    """A request named a report or a file that the reports folder does not hold."""


@dataclass(frozen=True)
class Figure:
    test_set: str
    file: str  # relative to the model's report folder
    caption: str


@dataclass(frozen=True)
class ModelReport:
    """One evaluated model: its metrics table (header + one row per test set) and figures."""

    model: str
    record: EvaluationRecord
    table: list[list[str]]
    figures: list[Figure]
    has_page: bool  # report.html, the self-contained page


class EvaluationReports:
    """The `eval` folder of the pipeline's reports folder."""

    def __init__(self, reports: Path) -> None:
        self.root = Path(reports) / "eval"

    def models(self) -> list[str]:
        """Models with a metrics file, by name (teacher, student, adapted, ...)."""
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json") if p.is_file())

    def report(self, model: str) -> ModelReport:
        if model not in self.models():
            raise UnknownReportError(f"no evaluation report of {model!r} in {self.root}")
        try:
            record = EvaluationRecord.load_file(self.root / f"{model}.json")
        except JsonFileError as err:
            raise UnknownReportError(str(err)) from None
        sets = [SetReport(name, s.metrics, []) for name, s in record.test_sets.items()]
        fars = sorted(
            {
                float(k.removeprefix(TAR_PREFIX))
                for s in sets
                for k in s.metrics
                if k.startswith(TAR_PREFIX)
            }
        )
        folder = self.root / model
        figures = [
            Figure(name, f"{name}/{figure}", CAPTIONS[figure])
            for name in record.test_sets
            for figure in FIGURES
            if (folder / name / figure).is_file()
        ]
        return ModelReport(
            model, record, metrics_table(sets, fars), figures, (folder / HTML_FILE).is_file()
        )

    def file(self, model: str, relative: str) -> tuple[Path, str]:
        """(path, media type) of a PNG or the HTML page in `model`'s report folder."""
        if model not in self.models():
            raise UnknownReportError(f"no evaluation report of {model!r}")
        media = SERVED_SUFFIXES.get(Path(relative).suffix)
        if media is None:
            raise UnknownReportError(f"{relative!r} is not a report file")
        try:
            path = confined(self.root / model, relative)
        except ValueError as err:
            raise UnknownReportError(str(err)) from None
        if not path.is_file():
            raise UnknownReportError(f"{model} has no report file {relative!r}")
        return path, media
