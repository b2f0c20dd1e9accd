"""The training pipeline: source and target datasets to a promoted, served student.

    fetch source ─ preprocess ─┬─ train (teacher) ─┬─ distill (student) ─ export ─ promote
                               │                   │
    fetch target ─ preprocess ─┴───────────────────┴─ adapt round 1 ─ … ─ adapt round N (target)

The datasets are run-form parameters, references as params.yaml's `datasets` spells them
(`synth:day?seed=0`, `dvc:REPO?path=PATH&rev=REV`, `s3://bucket/prefix`, a folder the pods see);
each fetch task records what it fetched in its artifact's metadata and the training lineage.
An empty `target_dataset` skips the target's preprocessing, the adaptation and the evaluations
on the target (a `dsl.If` branch); the teacher is then evaluated on the source only.

Which model is evaluated on which test sets (the first is the primary one), and which model is
exported and promoted, come from `reid_core.stages.graph.GRAPH`, which dvc.yaml follows too
(tests/test_pipeline_graph.py checks both). An evaluation on the target, or of a model trained
on it, runs in the `dsl.If` branch; the `dsl.Else` branch evaluates the other models on their
other test sets. Adaptation is a chain of `ADAPT_CHAIN` one-round tasks, each taking the
previous one's model; the pipeline parameter `adapt_rounds` says how many of them adapt (the
rest pass the model on), and `extra_teachers` adds registry teachers (`models:/name@alias`) to
the distillation. Each task's inputs are the outputs of the tasks before it; the config travels
whole as one YAML string so every stage sees the same `ReidConfig`.

`pipeline_run_id` is `dsl.PIPELINE_JOB_ID_PLACEHOLDER`: on a KFP backend it resolves to the run
UUID, under `kfp.local` to one random id per pipeline call, shared by all its tasks. Caching
therefore never reuses a stage across runs (the id is an input), which is intended: a cached
stage would be missing from the run's MLflow parent.

Deliberately no `from __future__ import annotations`: KFP reads the return annotation.
"""

from pathlib import Path
from typing import NamedTuple

import yaml
from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Markdown, Metrics, Model
from kfp.dsl.graph_component import GraphComponent

from components import stages as c
from pipelines.placement import launches_job, place, stage_overrides, training_image
from reid_core.config import ReidConfig, load_config
from reid_core.stages.graph import GRAPH, SOURCE, TARGET

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = PROJECT_ROOT / "params.yaml"
PIPELINE_NAME = "reid-training"
ADAPT_CHAIN = 6
"""Pseudo-label rounds the compiled pipeline chains: the most `adapt_rounds` can ask for."""


def _params() -> ReidConfig:
    return load_config([PARAMS_FILE]) if PARAMS_FILE.is_file() else ReidConfig()


def default_config_yaml(config: ReidConfig | None = None) -> str:
    """`config` (default: params.yaml, or without it the defaults), every key spelled out.

    One line of flow-style YAML: KFP copies string defaults unescaped into the compiled file's
    header comment, so a multi-line default makes that file invalid YAML (kubeflow/pipelines
    issue 10438); one line is also what the KFP UI's parameter field edits comfortably.
    """
    config = config or _params()
    refuse_secrets(config)
    tree = config.model_dump(mode="json")
    return yaml.safe_dump(tree, default_flow_style=True, sort_keys=False, width=2**31).strip()


def refuse_secrets(config: ReidConfig) -> None:
    """Raise ValueError naming a config value that holds a credential (a token in a URL): the
    pipeline's parameters are shown to everyone who can see the run. Credentials reach the
    pods from the Secret `kubeflow.credentials_secret` instead. (A user:password in the
    tracking URI never gets this far: the config takes it out as it is read.)"""
    shown = config.flat()
    for key, value in config.flat(redacted=False).items():
        if value != shown[key]:
            raise ValueError(
                f"{key} holds a credential ({shown[key]}); a pipeline's parameters are visible "
                "to everyone who can see the run: give it to the pods through the Secret "
                "kubeflow.credentials_secret names"
            )


class TrainingOutputs(NamedTuple):
    decision: Artifact
    student_onnx: Model
    student_metrics: Metrics
    student_table: Markdown
    student_report: HTML
    student_roc: ClassificationMetrics


def build_pipeline(config: ReidConfig | None = None) -> GraphComponent:
    """The training pipeline with `config` (default: params.yaml) as its parameters' defaults
    and its `kubeflow` section's resources, accelerators and credentials on every task."""
    config = config or _params()

    def task(stage: str, **inputs) -> dsl.PipelineTask:
        overrides = stage_overrides(stage, config.kubeflow)
        inputs["config_overrides"] = [*inputs["config_overrides"], *overrides]
        component = c.STAGE_COMPONENTS[stage]
        if launches_job(stage, config.kubeflow):
            component = c.train_job
            inputs["image"] = training_image(config.kubeflow)
        return place(component(**inputs), stage, config.kubeflow)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description=(
            "Re-id training to serving: source/target datasets by reference, teacher training, "
            "distillation, domain adaptation, evaluation, ONNX export, promotion to Triton."
        ),
    )
    def reid_training_pipeline(
        config_yaml: str = default_config_yaml(config),
        mlflow_tracking_uri: str = "",
        source_dataset: str = config.datasets.source,
        target_dataset: str = config.datasets.target,
        adapt_rounds: int = config.adapt.rounds,
        extra_teachers: list = [],  # noqa: B006 (KFP reads the literal default)
    ) -> TrainingOutputs:
        run = {
            "config_yaml": config_yaml,
            "pipeline_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            "mlflow_tracking_uri": mlflow_tracking_uri,
            "config_overrides": [],
        }
        # Manifest rows name their domain (dvc.yaml's `--set data.domain=...`); all else is shared.
        source_run = {**run, "config_overrides": [f"data.domain={SOURCE}"]}
        target_run = {**run, "config_overrides": [f"data.domain={TARGET}"]}

        source = task("fetch", **run, name=SOURCE, reference=source_dataset)
        source.set_display_name("fetch source dataset")
        target = task("fetch", **run, name=TARGET, reference=target_dataset)
        target.set_display_name("fetch target dataset")
        src_data = source.outputs["dataset"]
        tgt_data = target.outputs["dataset"]

        prep_src = task("preprocess", **source_run, dataset=src_data).set_display_name(
            "preprocess source"
        )
        src_manifest = prep_src.outputs["manifest"]

        teacher = task("train", **run, dataset=src_data, manifest=src_manifest)
        # Both datasets are fetched before any training: a bad target reference fails the run early.
        teacher.set_display_name("train teacher (source)").after(target)
        teacher_ckpt = teacher.outputs["checkpoint"]
        student = task(
            "distill",
            **run,
            dataset=src_data,
            manifest=src_manifest,
            teacher=teacher_ckpt,
            teacher_uris=extra_teachers,
        )
        student.set_display_name("distill student (source)")
        # Each model's checkpoint and each domain's test set (dataset, manifest), as built.
        checkpoints = {"teacher": teacher_ckpt, "student": student.outputs["checkpoint"]}
        test_sets = {SOURCE: (src_data, src_manifest)}

        def evaluate(model: str, domains: tuple[str, ...]) -> dsl.PipelineTask:
            wired = c.evaluate_inputs(*(test_sets[domain] for domain in domains))
            evaluation = task("evaluate", **run, model=checkpoints[model], **wired)
            return evaluation.set_display_name(f"evaluate {model} @ {', '.join(domains)}")

        def needs_target(model: str) -> bool:
            return TARGET in GRAPH.trained_on(model)

        with dsl.If(target_dataset != "", "a target dataset is given"):
            prep_tgt = task("preprocess", **target_run, dataset=tgt_data)
            prep_tgt.set_display_name("preprocess target")
            test_sets[TARGET] = (tgt_data, prep_tgt.outputs["manifest"])
            adapted_ckpt = teacher_ckpt
            for number in range(1, ADAPT_CHAIN + 1):
                adapted = task(
                    "adapt",
                    **run,
                    round_number=number,
                    rounds=adapt_rounds,
                    chain_length=ADAPT_CHAIN,
                    dataset=tgt_data,
                    manifest=prep_tgt.outputs["manifest"],
                    model=adapted_ckpt,
                )
                adapted.set_display_name(f"adapt round {number} (target)")
                adapted_ckpt = adapted.outputs["checkpoint"]
            checkpoints["adapted"] = adapted_ckpt
            for ev in GRAPH.evaluations:
                if TARGET in ev.test_sets or needs_target(ev.model):
                    evaluate(ev.model, ev.test_sets)
        with dsl.Else("no target dataset: no adaptation"):
            for ev in GRAPH.evaluations:
                rest = tuple(d for d in ev.test_sets if d != TARGET)
                if rest != ev.test_sets and rest and not needs_target(ev.model):
                    evaluate(ev.model, rest)
        in_every_run = {
            ev.model: evaluate(ev.model, ev.test_sets)
            for ev in GRAPH.evaluations
            if TARGET not in ev.test_sets and not needs_target(ev.model)
        }
        if GRAPH.served not in in_every_run:
            raise ValueError(f"promote needs {GRAPH.served}'s evaluation in every run")
        ev_served = in_every_run[GRAPH.served]

        served_ckpt = checkpoints[GRAPH.served]
        served_data, served_manifest = test_sets[GRAPH.model(GRAPH.served).domain]
        exported = task(
            "export", **run, dataset=served_data, manifest=served_manifest, model=served_ckpt
        )
        exported.set_display_name(f"export {GRAPH.served} (ONNX)")
        promoted = task(
            "promote",
            **run,
            onnx=exported.outputs["onnx"],
            model=served_ckpt,
            evaluation=ev_served.outputs["metrics"],
        )
        # Registers a model version and rewrites the Triton repository: never reuse a cached one.
        promoted.set_display_name(f"promote {GRAPH.served}")
        promoted.set_caching_options(enable_caching=False)

        return TrainingOutputs(
            decision=promoted.outputs["decision"],
            student_onnx=exported.outputs["onnx"],
            student_metrics=ev_served.outputs["metrics"],
            student_table=ev_served.outputs["metrics_table"],
            student_report=ev_served.outputs["report_page"],
            student_roc=ev_served.outputs["roc"],
        )

    return reid_training_pipeline


reid_training_pipeline = build_pipeline()
