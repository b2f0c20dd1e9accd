"""One KFP component per pipeline stage.

Each component is thin: typed artifacts in, one `reid_core.stages.run_stage` call (through
`reid_core.stages.kfp_glue`), artifacts out. KFP serialises only each function's own source
into the container, so imports stay inside the bodies and the shared code lives in the image.

Artifact types: datasets, manifests, reports and features are `Dataset`; checkpoints and ONNX
exports are `Model`; metrics JSON are `Metrics`; the promotion decision is a plain `Artifact`.
Evaluate also shows its report in the KFP UI (`UI_OUTPUTS`): the metrics table as `Markdown`,
the HTML page as `HTML`, the primary test set's ROC as `ClassificationMetrics`.

A port that takes several artifacts (`multiple` in `reid_core.stages.STAGES`: evaluate's test
sets) is a fixed number of inputs: `dataset`, then optional `dataset_2` … `dataset_<MAX>`
(`= None`, wired or not by the pipeline). KFP has no input taking a list of artifacts from
different tasks (`Input[List[Dataset]]` only receives `dsl.Collected` from a `ParallelFor`), while
optional artifact inputs work on every backend, `kfp.local` included.
Every stage component takes `config_yaml` (the whole ReidConfig as YAML), `pipeline_run_id`
(one MLflow parent run per pipeline run), `mlflow_tracking_uri` ("" = the stage's default) and
`config_overrides` (`key.path=value` strings, as the CLI's `--set`, for one task's differences).

Deliberately no `from __future__ import annotations`: KFP reads the annotations as types.
"""

import os
from typing import Any

from kfp import dsl
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)

DEFAULT_IMAGE = "reidflow:0.1.0"
MAX_TEST_SETS = 4
"""How many test sets one evaluate task takes (`dataset`, `dataset_2` … `dataset_4`)."""
MULTIPLE_SLOTS = {"evaluate": MAX_TEST_SETS, "distill": 2}
"""How many artifacts a stage's `multiple` ports take in its component (distill: teachers;
more teachers come from the registry through `teacher_uris`)."""
STAGE_EXTRA_PARAMETERS = {
    "fetch": {"name", "reference"},
    "distill": {"teacher_uris"},
    "adapt": {"round_number", "rounds", "chain_length"},
}
"""Component parameters beyond the common four, by stage."""
# The project image (it contains reid_core and kfp); fixed when this module is imported.
IMAGE = os.environ.get("REID_IMAGE") or DEFAULT_IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def fetch(
    config_yaml: str,
    pipeline_run_id: str,
    mlflow_tracking_uri: str,
    config_overrides: list[str],
    name: str,
    reference: str,
    dataset: Output[Dataset],
):
    """Fetch the dataset `reference` names (synth:…, dvc:…, s3://…, a folder) as dataset `name`
    (source or target); what was fetched goes into the artifact's metadata."""
    from reid_core.stages.kfp_glue import run_fetch

    run_fetch(
        config_yaml,
        pipeline_run_id,
        mlflow_tracking_uri,
        config_overrides,
        name,
        reference,
        dataset,
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def preprocess(
    config_yaml: str,
    pipeline_run_id: str,
    mlflow_tracking_uri: str,
    config_overrides: list[str],
    dataset: Input[Dataset],
    manifest: Output[Dataset],
    report: Output[Dataset],
):
    """Read a dataset, write its manifest and validate it."""
    from reid_core.stages.kfp_glue import run_component

    run_component(
        "preprocess",
        config_yaml,
        pipeline_run_id,
        mlflow_tracking_uri,
        inputs={"dataset": dataset},
        outputs={"manifest": manifest, "report": report},
        config_overrides=config_overrides,
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(
    config_yaml: str,
    pipeline_run_id: str,
    mlflow_tracking_uri: str,
    config_overrides: list[str],
    dataset: Input[Dataset],
    manifest: Input[Dataset],
    checkpoint: Output[Model],
    metrics: Output[Metrics],
):
    """Train the teacher on the manifest's train split."""
    from reid_core.stages.kfp_glue import run_component

    run_component(
        "train",
        config_yaml,
        pipeline_run_id,
        mlflow_tracking_uri,
        inputs={"dataset": dataset, "manifest": manifest},
        outputs={"checkpoint": checkpoint, "metrics": metrics},
        config_overrides=config_overrides,
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_job(
    config_yaml: str,
    pipeline_run_id: str,
    mlflow_tracking_uri: str,
    config_overrides: list[str],
    image: str,
    dataset: Input[Dataset],
    manifest: Input[Dataset],
    checkpoint: Output[Model],
    metrics: Output[Metrics],
):
    """Train the teacher as a PyTorchJob of Kubeflow's training operator on `image`
    (`kubeflow.training_job`), waiting for it and reporting its progress."""
    from reid_core.stages.kfp_glue import run_training_job

    run_training_job(
        config_yaml,
        pipeline_run_id,
        mlflow_tracking_uri,
        config_overrides,
        image,
        inputs={"dataset": dataset, "manifest": manifest},
        outputs={"checkpoint": checkpoint, "metrics": metrics},
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def distill(
    config_yaml: str,
    pipeline_run_id: str,
    mlflow_tracking_uri: str,
    config_overrides: list[str],
    dataset: Input[Dataset],
    manifest: Input[Dataset],
    teacher: Input[Model],
    checkpoint: Output[Model],
    metrics: Output[Metrics],
    teacher_2: Input[Model] = None,
    teacher_uris: list[str] = [],  # noqa: B006 (KFP reads the literal default)
):
    """Train a smaller student from frozen teachers: the `teacher` artifact, an optional
    `teacher_2`, and registry teachers by URI (`models:/name@alias`)."""
    from reid_core.stages.kfp_glue import run_component

    artifacts = [t for t in (teacher, teacher_2) if t is not None]
    run_component(
        "distill",
        config_yaml,
        pipeline_run_id,
        mlflow_tracking_uri,
        inputs={"dataset": dataset, "manifest": manifest, "teacher": artifacts + teacher_uris},
        outputs={"checkpoint": checkpoint, "metrics": metrics},
        config_overrides=config_overrides,
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def adapt(
    config_yaml: str,
    pipeline_run_id: str,
    mlflow_tracking_uri: str,
    config_overrides: list[str],
    round_number: int,
    rounds: int,
    chain_length: int,
    dataset: Input[Dataset],
    manifest: Input[Dataset],
    model: Input[Model],
    checkpoint: Output[Model],
    metrics: Output[Metrics],
):
    """Pseudo-label round `round_number` (from 1) of `rounds` on an unlabelled target domain.

    The pipeline chains `chain_length` of these; a round past `rounds` passes its model on
    unchanged, so the round count stays a run-time pipeline parameter.
    """
    from reid_core.stages.kfp_glue import run_adapt_round

    run_adapt_round(
        round_number,
        rounds,
        chain_length,
        config_yaml,
        pipeline_run_id,
        mlflow_tracking_uri,
        inputs={"dataset": dataset, "manifest": manifest, "model": model},
        outputs={"checkpoint": checkpoint, "metrics": metrics},
        config_overrides=config_overrides,
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    config_yaml: str,
    pipeline_run_id: str,
    mlflow_tracking_uri: str,
    config_overrides: list[str],
    dataset: Input[Dataset],
    manifest: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    features: Output[Dataset],
    report: Output[Dataset],
    metrics_table: Output[Markdown],
    report_page: Output[HTML],
    roc: Output[ClassificationMetrics],
    dataset_2: Input[Dataset] = None,
    manifest_2: Input[Dataset] = None,
    dataset_3: Input[Dataset] = None,
    manifest_3: Input[Dataset] = None,
    dataset_4: Input[Dataset] = None,
    manifest_4: Input[Dataset] = None,
):
    """Evaluate a model on up to 4 test sets (dataset/manifest, then the optional _2.._4
    pairs; the first is the primary one): metrics, report table, HTML page and ROC."""
    from reid_core.stages.kfp_glue import publish_report, run_component

    run_component(
        "evaluate",
        config_yaml,
        pipeline_run_id,
        mlflow_tracking_uri,
        inputs={
            "dataset": [dataset, dataset_2, dataset_3, dataset_4],
            "manifest": [manifest, manifest_2, manifest_3, manifest_4],
            "model": model,
        },
        outputs={"metrics": metrics, "features": features, "report": report},
        config_overrides=config_overrides,
    )
    publish_report(report, metrics_table, report_page, roc)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export(
    config_yaml: str,
    pipeline_run_id: str,
    mlflow_tracking_uri: str,
    config_overrides: list[str],
    dataset: Input[Dataset],
    manifest: Input[Dataset],
    model: Input[Model],
    onnx: Output[Model],
):
    """ONNX export with an ONNX Runtime parity gate."""
    from reid_core.stages.kfp_glue import run_component

    run_component(
        "export",
        config_yaml,
        pipeline_run_id,
        mlflow_tracking_uri,
        inputs={"dataset": dataset, "manifest": manifest, "model": model},
        outputs={"onnx": onnx},
        config_overrides=config_overrides,
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote(
    config_yaml: str,
    pipeline_run_id: str,
    mlflow_tracking_uri: str,
    config_overrides: list[str],
    onnx: Input[Model],
    model: Input[Model],
    evaluation: Input[Metrics],
    decision: Output[Artifact],
    markdown: Output[Markdown],
):
    """Register the model, move the champion alias, publish to Triton."""
    from reid_core.stages.kfp_glue import run_component

    run_component(
        "promote",
        config_yaml,
        pipeline_run_id,
        mlflow_tracking_uri,
        inputs={"onnx": onnx, "model": model, "evaluation": evaluation},
        outputs={"decision": decision, "markdown": markdown},
        config_overrides=config_overrides,
    )


def evaluate_inputs(*test_sets: tuple[Any, Any]) -> dict[str, Any]:
    """`evaluate`'s test-set arguments for (dataset, manifest) pairs, the primary one first:
    `dataset`/`manifest`, then `dataset_2`/`manifest_2`, … (pipeline channels, unchanged)."""
    if not 1 <= len(test_sets) <= MAX_TEST_SETS:
        raise ValueError(f"evaluate takes 1 to {MAX_TEST_SETS} test sets, got {len(test_sets)}")
    wired = {}
    for i, (data, manifest) in enumerate(test_sets, start=1):
        suffix = "" if i == 1 else f"_{i}"
        wired.update({f"dataset{suffix}": data, f"manifest{suffix}": manifest})
    return wired


UI_OUTPUTS = {"evaluate": ("metrics_table", "report_page", "roc")}
"""Stage -> its component's outputs that are not stage ports: views for the KFP UI."""

STAGE_COMPONENTS = {
    "fetch": fetch,
    "preprocess": preprocess,
    "train": train,
    "distill": distill,
    "adapt": adapt,
    "evaluate": evaluate,
    "export": export,
    "promote": promote,
}
"""Stage name (as in `reid_core.stages.STAGES`) -> its component."""
