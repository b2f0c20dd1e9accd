"""What every KFP component does around its stage: artifacts to ports, run, metrics to the UI.

KFP lightweight components ship only their own function's source into the container, so the
few lines they share live here, inside the image, instead of being repeated in each component
in `components/`. Nothing here computes anything: the stage functions do.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from reid_core.atomic import atomic_output, write_json
from reid_core.config import STATE_MOUNT, ReidConfig, config_from_yaml, config_to_yaml
from reid_core.stages import STAGES, PortError, run_stage

PIPELINE_RUN_ENV = "REID_PIPELINE_RUN_ID"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
# What `dsl.PIPELINE_JOB_ID_PLACEHOLDER` looks like when a backend leaves it unresolved.
_UNRESOLVED_RUN_ID = "{{$.pipeline_job_uuid}}"


class Artifact(Protocol):
    """The part of `kfp.dsl.Artifact` used here (a local path and a metadata dict)."""

    @property
    def path(self) -> str: ...

    metadata: dict[str, Any]


JobRunner = Callable[[Mapping[str, Any], float, float, Callable[[str], None]], None]
"""Runs a job object to its end: (job, timeout_s, poll_s, report)."""


class RocArtifact(Protocol):
    """The part of `kfp.dsl.ClassificationMetrics` used here."""

    def log_roc_curve(self, fpr: list[float], tpr: list[float], threshold: list[float]) -> None: ...


def parse_config_yaml(text: str, overrides: Iterable[str] = ()) -> ReidConfig:
    """The pipeline's `config_yaml` parameter plus `key.path=value` overrides, validated.

    Empty text means the defaults. Overrides are those of the CLI's `--set`; the pipeline uses
    them where one task differs, e.g. `data.domain=target`.
    """
    return config_from_yaml(text, overrides, where="config_yaml")


def _resolved(pipeline_run_id: str) -> bool:
    """Whether KFP filled in the run id (kfp.local and a cluster do; a bare call may not)."""
    return bool(pipeline_run_id) and pipeline_run_id != _UNRESOLVED_RUN_ID


def set_run_environment(config: ReidConfig, pipeline_run_id: str, mlflow_tracking_uri: str) -> None:
    """Export the run id (one MLflow parent per pipeline run) and the tracking URI, if given.

    The tracking URI is a pipeline parameter, and KFP cannot put a runtime parameter into a
    task's environment (`set_env_variable` takes constants only), so the component sets it.
    """
    if _resolved(pipeline_run_id):
        os.environ[PIPELINE_RUN_ENV] = pipeline_run_id
    else:
        print(
            f"warning: pipeline_run_id is {pipeline_run_id!r}; stages fall back to a parent "
            "MLflow run keyed by code commit and config",
            file=sys.stderr,
        )
    if mlflow_tracking_uri:
        os.environ[TRACKING_URI_ENV] = mlflow_tracking_uri
    on_cluster = "KFP_POD_NAME" in os.environ
    if on_cluster and not os.environ.get(TRACKING_URI_ENV) and not config.tracking.tracking_uri:
        print(
            "warning: no MLflow tracking URI (pipeline parameter mlflow_tracking_uri or "
            "tracking.tracking_uri): this task logs to a SQLite file inside its own container, "
            "which is lost when the pod ends",
            file=sys.stderr,
        )


def port_paths(
    stage: str, artifacts: Mapping[str, Artifact | Sequence[Artifact | str | None]]
) -> dict[str, Path | list[Path]]:
    """Each port's local path; a `multiple` port's list of paths (a string in it is an
    MLflow model URI, for ports of kind "model").

    A KFP component cannot take a variable number of artifacts from different tasks, so a
    multiple port arrives as a fixed number of optional inputs (`dataset`, `dataset_2`, …; an
    input not wired is None). Unused ones must come last: the i-th items of a stage's multiple
    ports pair up, so a gap (or, checked by `run_stage`, unequal counts) would pair them wrongly.
    """
    multiple = {p.name for p in STAGES[stage].inputs + STAGES[stage].outputs if p.multiple}
    paths: dict[str, Path | list[Path]] = {}
    for port, value in artifacts.items():
        if port not in multiple:
            paths[port] = Path(value.path)
            continue
        slots = list(value) if isinstance(value, Sequence) else [value]
        while slots and slots[-1] is None:
            slots.pop()
        if None in slots:
            raise PortError(
                f"{stage}: '{port}' item {len(slots)} is wired but item "
                f"{slots.index(None) + 1} is not; fill the optional inputs in order"
            )
        paths[port] = [Path(slot if isinstance(slot, str) else slot.path) for slot in slots]
    return paths


def run_component(
    stage: str,
    config_yaml: str,
    pipeline_run_id: str,
    mlflow_tracking_uri: str,
    inputs: Mapping[str, Artifact | Sequence[Artifact | None]],
    outputs: Mapping[str, Artifact],
    config_overrides: Iterable[str] = (),
) -> dict[str, float]:
    """Run `stage` with each artifact's local path as its port; log metrics on Metrics outputs.

    A "dir" port uses the artifact path as a folder, a "file" port as a file: the stage knows
    which, and writes its outputs there (KFP uploads what it finds after the task). A multiple
    port takes a sequence of optional artifacts (see `port_paths`).
    """
    config = _task_config(config_yaml, pipeline_run_id, mlflow_tracking_uri, config_overrides)
    metrics = run_stage(stage, config, port_paths(stage, inputs), port_paths(stage, outputs))
    _log_metrics(outputs, metrics)
    return metrics


def _task_config(
    config_yaml: str, pipeline_run_id: str, mlflow_tracking_uri: str, overrides: Iterable[str]
) -> ReidConfig:
    """The task's config, with the run's environment set and its training state kept apart
    from other runs' (a retried task finds its own run's state, never another run's)."""
    config = parse_config_yaml(config_yaml, overrides)
    set_run_environment(config, pipeline_run_id, mlflow_tracking_uri)
    if _resolved(pipeline_run_id):
        config.runtime.state_dir = Path(config.runtime.state_dir) / _run_key(pipeline_run_id)
    return config


def _run_key(pipeline_run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", pipeline_run_id)


def _log_metrics(outputs: Mapping[str, Artifact], metrics: Mapping[str, float]) -> None:
    for artifact in outputs.values():
        log_metric = getattr(artifact, "log_metric", None)  # only kfp.dsl.Metrics has it
        if log_metric is not None:
            for key, value in sorted(metrics.items()):
                log_metric(key, float(value))


def run_training_job(
    config_yaml: str,
    pipeline_run_id: str,
    mlflow_tracking_uri: str,
    config_overrides: Iterable[str],
    image: str,
    inputs: Mapping[str, Artifact],
    outputs: Mapping[str, Artifact],
    mount: str = STATE_MOUNT,
    run_job: JobRunner | None = None,
) -> dict[str, float]:
    """The train stage as a training-operator PyTorchJob (`kubeflow.training_job`): put the
    dataset, manifest and config on the shared claim (mounted at `mount`), run the job to its
    end (`run_job`, default: on the cluster), and take its checkpoint and metrics as this
    task's outputs."""
    from reid_core.cluster.pytorchjob import JobFolder, build_pytorchjob, run_pytorchjob
    from reid_core.tracking.runs import configured_tracking_uri

    config = _task_config(config_yaml, pipeline_run_id, mlflow_tracking_uri, config_overrides)
    settings = config.kubeflow
    run_key = _run_key(pipeline_run_id) if _resolved(pipeline_run_id) else "unkeyed"
    folder = JobFolder(PurePosixPath(mount) / run_key / "train-job")
    Path(folder.root).mkdir(parents=True, exist_ok=True)
    if not Path(folder.dataset).is_dir():  # a retried task finds it there already
        with atomic_output(Path(folder.dataset), directory=True) as tmp:
            shutil.copytree(inputs["dataset"].path, tmp, dirs_exist_ok=True)
    shutil.copyfile(inputs["manifest"].path, folder.manifest)
    config.runtime.state_dir = Path(folder.state)
    Path(folder.config).write_text(config_to_yaml(config))
    env = {PIPELINE_RUN_ENV: pipeline_run_id} if _resolved(pipeline_run_id) else {}
    if tracking_uri := configured_tracking_uri(config):
        env[TRACKING_URI_ENV] = tracking_uri
    namespace = settings.training_job.namespace or _own_namespace()
    job = build_pytorchjob(
        name=_job_name(run_key),
        namespace=namespace,
        image=image,
        folder=folder,
        settings=settings,
        env=env,
        labels={"reidflow.dev/pipeline-run": run_key[:63].strip("-_.")},
    )
    run = run_job or run_pytorchjob
    run(job, settings.training_job.timeout_s, settings.training_job.poll_s, print)
    with atomic_output(outputs["checkpoint"].path, directory=True) as tmp:
        shutil.copytree(folder.checkpoint, tmp, dirs_exist_ok=True)
    Path(outputs["metrics"].path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder.metrics, outputs["metrics"].path)
    metrics = json.loads(Path(folder.metrics).read_text())
    _log_metrics(outputs, metrics)
    return metrics


def _job_name(run_key: str) -> str:
    """A DNS-1035 name, unique per pipeline run and short enough for the pods' names."""
    digest = hashlib.sha256(run_key.encode()).hexdigest()[:12]
    return f"reid-train-{digest}"


def _own_namespace() -> str:
    """The namespace of the pod this runs in (Kubernetes mounts it with the service account)."""
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    if not path.is_file():
        raise RuntimeError(
            "kubeflow.training_job: not in a Kubernetes pod, so set training_job.namespace"
        )
    return path.read_text().strip()


def run_adapt_round(
    round_number: int,
    rounds: int,
    chain_length: int,
    config_yaml: str,
    pipeline_run_id: str,
    mlflow_tracking_uri: str,
    inputs: Mapping[str, Artifact],
    outputs: Mapping[str, Artifact],
    config_overrides: Iterable[str] = (),
) -> dict[str, float]:
    """One adapt round of a pipeline's chain: the stage with `adapt.rounds=1` from round
    `round_number`, or, past `rounds`, the input model passed on as the output."""
    if not 1 <= rounds <= chain_length:
        raise ValueError(
            f"adapt rounds must lie in 1..{chain_length}, the rounds this compiled pipeline "
            f"chains; got {rounds} (compile with a longer chain for more)"
        )
    if round_number > rounds:
        with atomic_output(outputs["checkpoint"].path, directory=True) as tmp:
            shutil.copytree(inputs["model"].path, tmp, dirs_exist_ok=True)
        skipped = {"round_skipped": 1.0}
        write_json(outputs["metrics"].path, skipped)
        outputs["metrics"].log_metric("round_skipped", 1.0)
        print(f"adapt round {round_number}: past the {rounds} requested, passing the model on")
        return skipped
    overrides = [*config_overrides, "adapt.rounds=1", f"adapt.start_round={round_number - 1}"]
    return run_component(
        "adapt",
        config_yaml,
        pipeline_run_id,
        mlflow_tracking_uri,
        inputs,
        outputs,
        overrides,
    )


def publish_report(report: Artifact, markdown: Artifact, html: Artifact, roc: RocArtifact) -> None:
    """Show an evaluation report folder in the KFP UI: its Markdown table, its HTML page, and
    the primary test set's ROC on a `ClassificationMetrics` output (`log_roc_curve`)."""
    from reid_core.evaluation.reports import HTML_FILE, MARKDOWN_FILE, ROC_FILE

    folder = Path(report.path)
    for name, artifact in ((MARKDOWN_FILE, markdown), (HTML_FILE, html)):
        Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / name, artifact.path)
    curve = json.loads((folder / ROC_FILE).read_text())
    roc.log_roc_curve(curve["fpr"], curve["tpr"], curve["threshold"])


def run_fetch(
    config_yaml: str,
    pipeline_run_id: str,
    mlflow_tracking_uri: str,
    config_overrides: Iterable[str],
    name: str,
    reference: str,
    out: Artifact,
) -> dict[str, float]:
    """The fetch stage for dataset `name` from `reference` (the pipeline's run-form parameter,
    which replaces the config's `datasets.<name>`); the fetch record becomes `out`'s metadata."""
    from reid_core.sources import read_record

    overrides = [*config_overrides, f"data.domain={name}", f"datasets.{name}={reference}"]
    metrics = run_component(
        "fetch", config_yaml, pipeline_run_id, mlflow_tracking_uri, {}, {"dataset": out}, overrides
    )
    record = read_record(out.path)
    out.metadata.update(record.lineage_tags(name) if record else {})
    return metrics
