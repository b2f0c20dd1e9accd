"""Stage: a dataset reference (`datasets.<data.domain>`) → the dataset folder, with the record
of what was fetched inside it (`reid_core.sources`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from reid_core.config import ReidConfig
from reid_core.sources import fetch_dataset
from reid_core.tracking.runs import stage_run


def run(
    config: ReidConfig, inputs: Mapping[str, Path], outputs: Mapping[str, Path]
) -> dict[str, float]:
    import mlflow

    name = config.data.domain
    reference = config.datasets.reference(name)
    synth_sizes = config.synth.model_dump(exclude={"style", "seed"})
    with stage_run("fetch", config):
        record = fetch_dataset(reference, outputs["dataset"], synth_options=synth_sizes)
        mlflow.set_tags(record.lineage_tags(name))
        metrics = {"files": float(record.files), "bytes": float(record.bytes)}
        mlflow.log_metrics(metrics)
    return metrics
