"""One MLflow parent run per pipeline run, one child run per stage.

Stages run as separate processes (dvc, KFP), so the parent is found by a tag: the pipeline run
id from REID_PIPELINE_RUN_ID, or, when unset, one derived from the code commit and the config,
so that a `dvc repro` of the same code and parameters lands under one parent.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from reid_core.config import ReidConfig
from reid_core.tracking.lineage import git_commit

if TYPE_CHECKING:
    import mlflow

PIPELINE_TAG = "reid.pipeline_run_id"


def tracking_uri(config: ReidConfig) -> str:
    """MLFLOW_TRACKING_URI, else the configured URI, else the embedded SQLite store."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if config.tracking.tracking_uri:
        return config.tracking.tracking_uri
    db = Path(config.tracking.workspace).resolve() / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def ui_command(config: ReidConfig) -> str:
    """The command that opens the MLflow UI on the store this config writes to."""
    uri = tracking_uri(config)
    if not uri.startswith("sqlite:"):
        return f"open {uri} in a browser"
    artifacts = Path(config.tracking.workspace).resolve() / "artifacts"
    return f"mlflow ui --backend-store-uri {uri} --default-artifact-root {artifacts}"


def pipeline_run_id(config: ReidConfig) -> str:
    return os.environ.get("REID_PIPELINE_RUN_ID") or f"{git_commit()[:12]}-{config.digest()}"


def wait_for_server(uri: str, attempts: int, backoff_s: float) -> None:
    """Return once an HTTP tracking server answers its health check; after `attempts` tries
    (waits of backoff_s, 2·backoff_s, …) raise ConnectionError naming the server."""
    import time
    import urllib.error
    import urllib.request

    wait, error = backoff_s, ""
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as reply:
                if reply.status == 200:
                    return
                error = f"HTTP {reply.status}"
        except (urllib.error.URLError, OSError) as err:
            error = str(getattr(err, "reason", err))
        if attempt < attempts:
            time.sleep(wait)
            wait *= 2
    raise ConnectionError(
        f"MLflow tracking server {uri} unreachable after {attempts} attempts ({error}); "
        "outputs already written stay on disk, and re-running the stage resumes"
    )


def setup_mlflow(config: ReidConfig) -> str:
    """Point mlflow at the store and make sure the experiment exists; return its id."""
    import mlflow

    uri = tracking_uri(config)
    if uri.startswith(("http://", "https://")):
        wait_for_server(uri, config.tracking.connect_attempts, config.tracking.connect_backoff_s)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = config.tracking.experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        location = (Path(config.tracking.workspace).resolve() / "artifacts").as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        # Another stage created it between our lookup and create.
        return mlflow.get_experiment_by_name(name).experiment_id


def _parent_run(experiment_id: str, run_key: str) -> str:
    import mlflow

    found = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PIPELINE_TAG}` = '{run_key}' and tags.`reid.kind` = 'pipeline'",
        max_results=1,
        output_format="list",
    )
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(
        experiment_id,
        run_name=f"pipeline {run_key}",
        tags={PIPELINE_TAG: run_key, "reid.kind": "pipeline", "reid.git_commit": git_commit()},
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@contextlib.contextmanager
def stage_run(stage: str, config: ReidConfig) -> Iterator[mlflow.ActiveRun]:
    """Open the stage's child run under its pipeline's parent; params are the flat config."""
    import mlflow

    experiment_id = setup_mlflow(config)
    run_key = pipeline_run_id(config)
    parent = _parent_run(experiment_id, run_key)
    tags = {
        "mlflow.parentRunId": parent,
        PIPELINE_TAG: run_key,
        "reid.kind": "stage",
        "reid.stage": stage,
        "reid.git_commit": git_commit(),
        "reid.config_hash": config.digest(),
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=tags) as run:
        mlflow.log_params(config.flat())
        yield run
