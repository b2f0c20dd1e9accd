"""Which MLflow run trained a checkpoint, found from the digest of its weights."""

from __future__ import annotations

from pathlib import Path

from reid_core.engine.checkpoint import weights_digest

WEIGHTS_TAG = "reid.weights_sha256"  # on the run that wrote a checkpoint: its weights' digest


def training_run(checkpoint: str | Path):
    """The newest MLflow run (of the current tracking store) that wrote these weights, or
    None when no run there did (a checkpoint trained elsewhere)."""
    import mlflow

    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`{WEIGHTS_TAG}` = '{weights_digest(checkpoint)}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0] if runs else None


def training_run_id(checkpoint: str | Path) -> str:
    """The id of `training_run(checkpoint)`, or '' when there is none."""
    run = training_run(checkpoint)
    return run.info.run_id if run is not None else ""
