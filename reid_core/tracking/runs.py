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
from reid_core.redact import split_credentials
from reid_core.tracking.lineage import git_commit
from reid_core.tracking.resume import RUN_FILE, forget_run, open_run
from reid_core.tracking.retries import RETRY_ENV, apply_retry_env

if TYPE_CHECKING:
    import mlflow

PIPELINE_TAG = "reid.pipeline_run_id"


USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"


def configured_tracking_uri(config: ReidConfig) -> str:
    """MLFLOW_TRACKING_URI, else the configured URI; "" when neither names one.

    The URI returned holds no secret: a user and password written into it are given to MLflow
    as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD instead (unless those are set), and
    MLFLOW_TRACKING_URI is cleaned, so child processes inherit the same.
    """
    from_env = os.environ.get("MLFLOW_TRACKING_URI", "")
    if from_env:
        uri, user, password = split_credentials(from_env)
        os.environ["MLFLOW_TRACKING_URI"] = uri
    else:  # the config took them out of its URI as it was read
        uri = config.tracking.tracking_uri
        user, password = config.tracking.credentials()
    if user or password:
        os.environ.setdefault(USERNAME_ENV, user)
        os.environ.setdefault(PASSWORD_ENV, password)
    return uri


def tracking_uri(config: ReidConfig) -> str:
    """MLFLOW_TRACKING_URI, else the configured URI, else the embedded SQLite store."""
    configured = configured_tracking_uri(config)
    if configured:
        return configured
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
    import base64
    import time
    import urllib.error
    import urllib.request

    wait, error = backoff_s, ""
    request = urllib.request.Request(f"{uri.rstrip('/')}/health")
    if os.environ.get(USERNAME_ENV):
        pair = f"{os.environ[USERNAME_ENV]}:{os.environ.get(PASSWORD_ENV, '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(request, timeout=5) as reply:
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
    """Point mlflow at the store and make sure the experiment exists; return its id.

    A tracking server must answer first (see `wait_for_server`), and the client's own retries
    of later requests follow the same policy (see `apply_retry_env`).
    """
    import mlflow

    uri = tracking_uri(config)
    if _is_http(uri):
        wait_for_server(uri, config.tracking.connect_attempts, config.tracking.connect_backoff_s)
        apply_retry_env(config)
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


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


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
def stage_run(
    stage: str, config: ReidConfig, resume_dir: Path | None = None
) -> Iterator[mlflow.ActiveRun]:
    """Open the stage's child run under its pipeline's parent; params are the flat config.

    With `resume_dir` (a training stage's state folder) the run's id is recorded there, and a
    re-run of an interrupted stage reopens that run (see `resume.RUN_FILE`). A tracking server that
    stops answering mid-stage ends the stage with one ConnectionError that says what is kept.
    """
    import mlflow

    experiment_id = setup_mlflow(config)
    uri = tracking_uri(config)
    run_key = pipeline_run_id(config)
    run_id = ""
    try:
        parent = _parent_run(experiment_id, run_key)
        tags = {
            "mlflow.parentRunId": parent,
            PIPELINE_TAG: run_key,
            "reid.kind": "stage",
            "reid.stage": stage,
            "reid.git_commit": git_commit(),
            "reid.config_hash": config.digest(),
        }
        run = open_run(stage, config, experiment_id, tags, resume_dir, (PIPELINE_TAG, "reid.stage"))
        run_id = run.info.run_id
        yield run
        mlflow.end_run()
    except BaseException as err:
        unreachable = isinstance(err, Exception) and _is_http(uri) and not _answers(uri)
        _end_quietly("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", unreachable)
        if unreachable:
            raise ConnectionError(_outage_message(uri, stage, run_id, resume_dir)) from err
        raise
    finally:
        forget_run(run_id)


def _answers(uri: str) -> bool:
    """Whether the tracking server answers its health check now (one try)."""
    try:
        wait_for_server(uri, attempts=1, backoff_s=0)
    except ConnectionError:
        return False
    return True


def _end_quietly(status: str, unreachable: bool) -> None:
    """End the active run as `status` on the way out of a failed stage, without masking the
    failure; to an unreachable server, one quick try and no retries."""
    import mlflow

    saved = {name: os.environ.get(name) for name in RETRY_ENV}
    if unreachable:
        os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    try:
        with contextlib.suppress(Exception):  # the stage's own error is the one to report
            mlflow.end_run(status)  # forgets the run first, then tells the store
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _outage_message(uri: str, stage: str, run_id: str, resume_dir: Path | None) -> str:
    """What failed, what is kept on disk, and that a re-run picks up from there."""
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "")
    tries = f", each request tried {int(retries) + 1} times" if retries.isdigit() else ""
    run = f" (MLflow run {run_id}{tries})" if run_id else ""
    kept = "the outputs already written stay on disk"
    if resume_dir is not None and resume_dir.is_dir():
        saved = any(p.name != RUN_FILE for p in resume_dir.iterdir())
        what = "training state" if saved else "run record (no training state saved yet)"
        kept = f"the {what} in {resume_dir} and the outputs already written stay on disk"
    again = "re-run the stage once the server is back"
    if run_id and resume_dir is not None:
        again = "re-running the stage once the server is back resumes training and its run"
    return (
        f"MLflow tracking server {uri} became unreachable during the {stage} stage{run}; "
        f"{kept}: {again}"
    )
