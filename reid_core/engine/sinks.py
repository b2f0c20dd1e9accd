"""Where training metrics go: any object with `log_metrics(metrics, step)`.

The trainer's hooks hand their figures to sinks and know nothing of where they end up; the
pipeline passes an MLflow sink (`reid_core.tracking.metric_sink`), a script may pass
`LoggingSink` or its own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol


class MetricSink(Protocol):
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record `metrics` measured at iteration `step`."""


class LoggingSink:
    """Metrics as `logging` records of `logger` (INFO), one line per call."""

    def __init__(self, logger: str = "reid_core.training"):
        self.log = logging.getLogger(logger)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        figures = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
        self.log.info("step %d: %s", step, figures)
