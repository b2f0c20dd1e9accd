"""The training hooks' metrics into the active MLflow run."""

from __future__ import annotations

from collections.abc import Mapping

from reid_core.tracking.resume import log_step_metrics


class MlflowSink:
    """A `reid_core.engine.sinks.MetricSink` writing to the active run; a resumed run keeps the
    values it already has at a step (see `log_step_metrics`)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        log_step_metrics(dict(metrics), step)
