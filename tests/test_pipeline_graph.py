"""dvc.yaml and the compiled KFP pipeline both follow the declared graph (`GRAPH`).

`reid_core.stages.graph.GRAPH` declares the domains, the models (the stage that trains each,
on which domain, from which model), which model is evaluated on which test sets (the primary
first) and the served model. Two checkers below compare a front end with it and list every
disagreement:

- `dvc_disagreements` renders dvc.yaml's stages, foreach included, as dvc does (a test
  compares with dvc's own rendering), and reads the `reid` options of each command: each
  model's stage, each evaluation's test sets in order, export, promote, and that every input
  a command names is one of the stage's deps.
- `kfp_disagreements` traces the compiled pipelines/training.yaml (which
  tests/test_kfp_pipeline.py keeps equal to a fresh compile) from task to task: which model and
  which domains' datasets and manifests each task takes, and which evaluations run with a target
  dataset and without one.

The tests at the end damage one side at a time (dvc.yaml's text, the compiled spec, the
declaration) and require the checkers to name the difference, so they cannot pass by
checking nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from reid_core.stages import STAGES
from reid_core.stages.graph import (
    GRAPH,
    SOURCE,
    TARGET,
    Evaluation,
    PipelineGraph,
    TrainedModel,
)
from tests.support.kfp_spec import component_tasks, function_of

ROOT = Path(__file__).resolve().parents[1]
DVC_FILE = ROOT / "dvc.yaml"
KFP_FILE = ROOT / "pipelines" / "training.yaml"


# dvc.yaml's layout: where each domain's and each model's files live.
def _dataset(domain: str) -> str:
    return f"data/datasets/{domain}"


def _manifest(domain: str) -> str:
    return f"work/manifests/{domain}.parquet"


def _checkpoint(model: str) -> str:
    return f"work/models/{model}"


@dataclasses.dataclass(frozen=True)
class Invocation:
    """One rendered dvc stage: `reid <command>` with its options' values, and its deps."""

    stage: str
    command: str
    options: dict[str, list[str]]
    deps: tuple[str, ...]


_INTERPOLATION = re.compile(r"\$\{\s*([\w.]+)\s*\}")


def _render(text: str, context: dict[str, Any]) -> str:
    """dvc's `${...}` interpolation: a value as text, a dict as `--key value` arguments (a list
    as `--key v1 v2`, True as `--key`, as dvc's defaults unpack a dict into a command)."""

    def value(match: re.Match[str]) -> str:
        found: Any = context
        for part in match.group(1).split("."):
            found = found[part]
        if not isinstance(found, dict):
            return str(found)
        args = []
        for key, item in found.items():
            if item is True:
                args.append(f"--{key}")
            elif isinstance(item, list):
                args += [f"--{key}", *map(str, item)]
            elif item is not False:
                args += [f"--{key}", str(item)]
        return " ".join(args)

    return _INTERPOLATION.sub(value, text)


def _options(argv: list[str]) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    current: list[str] = []
    for arg in argv:
        if arg.startswith("--"):
            current = options.setdefault(arg[2:], [])
        else:
            current.append(arg)
    return options


def dvc_invocations(dvc: dict[str, Any]) -> list[Invocation]:
    """Every stage of a parsed dvc.yaml, a foreach's one per item, as `Invocation`s."""
    found = []
    for name, stage in dvc["stages"].items():
        if "foreach" in stage:
            items = stage["foreach"]
            pairs = items.items() if isinstance(items, dict) else ((i, i) for i in items)
            bodies = [(f"{name}@{key}", stage["do"], {"key": key, "item": i}) for key, i in pairs]
        else:
            bodies = [(name, stage, {})]
        for stage_name, body, context in bodies:
            argv = shlex.split(_render(body["cmd"], context))
            deps = tuple(_render(d, context) for d in body.get("deps", []))
            assert argv[0] == "reid", f"{stage_name}: {body['cmd']}"
            found.append(Invocation(stage_name, argv[1], _options(argv[2:]), deps))
    return found


def dvc_disagreements(dvc: dict[str, Any], graph: PipelineGraph = GRAPH) -> list[str]:
    """How the parsed dvc.yaml `dvc` differs from `graph`; empty when it follows it."""
    problems: list[str] = []
    runs = dvc_invocations(dvc)

    def check(run: Invocation, expected: dict[str, list[str]], what: str) -> None:
        for option, values in expected.items():
            given = run.options.get(option)
            if given != values:
                problems.append(f"{run.stage} ({what}): --{option} is {given}, not {values}")

    def one(runs_found: list[Invocation], what: str) -> Invocation | None:
        if len(runs_found) != 1:
            stages = [r.stage for r in runs_found]
            problems.append(f"{what}: {len(runs_found)} dvc stages {stages}, not 1")
            return None
        return runs_found[0]

    for stage in ("fetch", "preprocess"):
        domains = dvc["stages"].get(stage, {}).get("foreach")
        if domains != list(graph.domains):
            problems.append(f"{stage} runs for {domains}, not the domains {list(graph.domains)}")

    # Each model: the one stage writing its checkpoint, from its domain and its base.
    model_stages = {m.stage for m in graph.models}
    written = {
        c for r in runs if r.command in model_stages for c in r.options.get("checkpoint", [])
    }
    for extra in sorted(written - {_checkpoint(m.name) for m in graph.models}):
        problems.append(f"dvc.yaml trains {extra}, which the graph does not declare")
    for model in graph.models:
        what = f"trains {model.name}"
        writers = [r for r in runs if _checkpoint(model.name) in r.options.get("checkpoint", [])]
        run = one(writers, f"model {model.name}")
        if run is None:
            continue
        if run.command != model.stage:
            problems.append(f"{run.stage} ({what}) runs reid {run.command}, not {model.stage}")
        expected = {"dataset": [_dataset(model.domain)], "manifest": [_manifest(model.domain)]}
        if model.base is not None and model.base_port is not None:
            expected[model.base_port] = [_checkpoint(model.base)]
        check(run, expected, what)

    # Each evaluation: one evaluate stage of its model, over its test sets in order.
    evaluations = [r for r in runs if r.command == "evaluate"]
    declared = {_checkpoint(e.model) for e in graph.evaluations}
    for run in evaluations:
        if not set(run.options.get("model", [])) <= declared:
            problems.append(f"{run.stage} evaluates {run.options.get('model')}: not declared")
    metrics: dict[str, list[str] | None] = {}
    for evaluation in graph.evaluations:
        of_model = [
            r for r in evaluations if r.options.get("model") == [_checkpoint(evaluation.model)]
        ]
        run = one(of_model, f"evaluation of {evaluation.model}")
        if run is None:
            continue
        sets = evaluation.test_sets
        what = f"evaluates {evaluation.model} on {', '.join(sets)}"
        expected = {
            "dataset": [_dataset(d) for d in sets],
            "manifest": [_manifest(d) for d in sets],
        }
        check(run, expected, what)
        metrics[evaluation.model] = run.options.get("metrics")

    # The served model: exported with its training domain's data, promoted on its evaluation.
    served = graph.model(graph.served)
    export = one([r for r in runs if r.command == "export"], "export")
    if export is not None:
        expected = {
            "dataset": [_dataset(served.domain)],
            "manifest": [_manifest(served.domain)],
            "model": [_checkpoint(served.name)],
        }
        check(export, expected, f"exports {served.name}")
    promote = one([r for r in runs if r.command == "promote"], "promote")
    if promote is not None:
        expected = {
            "model": [_checkpoint(served.name)],
            "onnx": export.options.get("onnx") if export else None,
            "evaluation": metrics.get(served.name),
        }
        check(promote, expected, f"promotes {served.name}")

    # What a command reads must be a dep, or dvc would not re-run it when that changes.
    for run in runs:
        for port in STAGES[run.command].inputs:
            for path in run.options.get(port.name, []):
                if path not in run.deps:
                    problems.append(
                        f"{run.stage} reads {path} (--{port.name}) but lacks it in deps"
                    )
    return problems


def _stage_of(function: str) -> str:
    """The stage a component function runs (`train_job` trains through a PyTorchJob)."""
    return "train" if function == "train_job" else function


def kfp_disagreements(spec: dict[str, Any], graph: PipelineGraph = GRAPH) -> list[str]:
    """How the compiled KFP pipeline `spec` differs from `graph`; empty when it follows it.

    Models are told apart by the stage that trains them (the graph trains each with another
    stage); a model trained by a chain of tasks (adapt's rounds) is its last task's output.
    """
    problems: list[str] = []
    tasks = component_tasks(spec)
    stage = {name: _stage_of(function_of(spec, task)) for name, task in tasks.items()}
    by_stage: dict[str, list[str]] = {}
    for name, task_stage in stage.items():
        by_stage.setdefault(task_stage, []).append(name)
    stages_training = {m.stage for m in graph.models}
    assert len(stages_training) == len(graph.models), "extend this check: two models, one stage"

    def display(name: str) -> str:
        return tasks[name]["taskInfo"]["name"]

    def producer(name: str, port: str) -> str | None:
        source = tasks[name]["sources"].get(port)
        return source[0] if source and source[0] in tasks else None

    def domain(name: str, port: str) -> str | None:
        """The domain of the dataset (or manifest) `port` of task `name` takes."""
        source = producer(name, port)
        if source is not None and stage[source] == "preprocess":
            source = producer(source, "dataset")
        if source is None or stage[source] != "fetch":
            return None
        return tasks[source]["inputs"]["parameters"]["name"]["runtimeValue"]["constant"]

    def branch(name: str) -> str:
        condition = tasks[name]["condition"]
        if not condition:
            return "always"
        if "pipelinechannel--target_dataset" not in condition:
            problems.append(f"{display(name)} runs on another condition: {condition}")
        return "without target" if condition.startswith("!(") else "with target"

    output: dict[str, str] = {}

    def model_in(name: str, port: str) -> str | None:
        """The model `port` of task `name` takes: a model's output task's checkpoint."""
        source = producer(name, port)
        found = [m for m, task in output.items() if task == source]
        return found[0] if found else None

    # Each model: its tasks, from its domain, chained from its base's output; its output is
    # the one task of its stage whose checkpoint feeds no other.
    for model in graph.models:
        names = by_stage.get(model.stage, [])
        fed = {producer(n, model.base_port) for n in names} if model.base_port else set()
        last = [n for n in names if n not in fed]
        if len(last) != 1:
            problems.append(f"model {model.name}: {len(last)} {model.stage} chains end, not 1")
            continue
        output[model.name] = last[0]
        where = "with target" if TARGET in graph.trained_on(model.name) else "always"
        for name in names:
            got = (domain(name, "dataset"), domain(name, "manifest"))
            if got != (model.domain, model.domain):
                problems.append(f"{display(name)} trains {model.name} on {got}, not {model.domain}")
            if branch(name) != where:
                problems.append(f"{display(name)} runs {branch(name)}, not {where}")
        if model.base is None or model.base_port is None:
            if len(names) != 1:
                problems.append(f"model {model.name}: {len(names)} {model.stage} tasks, not 1")
            continue
        port = model.base_port
        starts = [n for n in names if stage.get(producer(n, port)) != model.stage]
        if [model_in(n, port) for n in starts] != [model.base]:
            problems.append(
                f"model {model.name}: its {model.stage} chain starts not from {model.base}"
            )

    # Each evaluation: with a target dataset, on all its test sets; without one (the Else
    # branch), a model not trained on the target on its other test sets.
    ran: dict[str, list[tuple[str | None, tuple[str | None, ...]]]] = {}
    served_evaluation = None
    for name in by_stage.get("evaluate", []):
        sets = []
        for i in itertools.count(1):
            suffix = "" if i == 1 else f"_{i}"
            if f"dataset{suffix}" not in tasks[name]["sources"]:
                break
            pair = (domain(name, f"dataset{suffix}"), domain(name, f"manifest{suffix}"))
            if pair[0] != pair[1]:
                problems.append(
                    f"{display(name)}: test set {i} is {pair[0]} with {pair[1]}'s manifest"
                )
            sets.append(pair[0])
        model = model_in(name, "model")
        wanted = f"evaluate {model} @ {', '.join(map(str, sets))}"
        if display(name) != wanted:
            problems.append(
                f"task {display(name)!r} evaluates {model} on {sets}: name it {wanted!r}"
            )
        when = branch(name)
        for runs_when in ("with target", "without target"):
            if when in ("always", runs_when):
                ran.setdefault(runs_when, []).append((model, tuple(sets)))
        if model == graph.served and when == "always":
            served_evaluation = name
    expected = {
        "with target": [(e.model, e.test_sets) for e in graph.evaluations],
        "without target": [
            (e.model, rest)
            for e in graph.evaluations
            if TARGET not in graph.trained_on(e.model)
            and (rest := tuple(d for d in e.test_sets if d != TARGET))
        ],
    }
    for when, evaluations in expected.items():
        got = sorted(ran.get(when, []), key=str)
        if got != sorted(evaluations, key=str):
            problems.append(f"evaluations {when}: {got}, not {sorted(evaluations, key=str)}")

    # The served model: exported with its training domain's data, promoted on its evaluation.
    served = graph.model(graph.served)
    for function in ("export", "promote"):
        names = by_stage.get(function, [])
        if len(names) != 1:
            problems.append(f"{len(names)} {function} tasks, not 1")
            continue
        (name,) = names
        if branch(name) != "always":
            problems.append(f"{display(name)} does not run in every run")
        if model_in(name, "model") != served.name:
            problems.append(f"{display(name)} takes {model_in(name, 'model')}, not {served.name}")
        if function == "export":
            got = (domain(name, "dataset"), domain(name, "manifest"))
            if got != (served.domain, served.domain):
                problems.append(f"{display(name)} takes the data of {got}, not {served.domain}")
        else:
            if stage.get(producer(name, "onnx")) != "export":
                problems.append(f"{display(name)} takes no export's ONNX")
            if served_evaluation is None or producer(name, "evaluation") != served_evaluation:
                problems.append(f"{display(name)} is not judged by {served.name}'s evaluation")
    return problems


@cache
def _dvc() -> dict[str, Any]:
    return yaml.safe_load(DVC_FILE.read_text())


@cache
def _spec() -> dict[str, Any]:
    return next(yaml.safe_load_all(KFP_FILE.read_text()))  # the platform spec follows


def test_dvc_yaml_follows_the_graph() -> None:
    assert dvc_disagreements(_dvc()) == []


def test_the_dvc_yaml_rendering_is_dvcs_own() -> None:
    """`dvc_invocations` renders each stage's command and deps as dvc itself does."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    mine = {run.stage: run for run in dvc_invocations(_dvc())}
    with Repo(str(ROOT)) as repo:
        theirs = {
            stage.addressing: Invocation(
                stage.addressing,
                shlex.split(stage.cmd)[1],
                _options(shlex.split(stage.cmd)[2:]),
                tuple(str(d.def_path) for d in stage.deps if not isinstance(d, ParamsDependency)),
            )
            for stage in repo.index.stages
        }
    assert mine == theirs


def test_compiled_kfp_pipeline_follows_the_graph() -> None:
    assert kfp_disagreements(_spec()) == []


def test_the_graph_is_the_one_the_docs_describe() -> None:
    """The declaration itself, as ARCHITECTURE.md and the pipeline docstring describe it."""
    assert GRAPH.domains == (SOURCE, TARGET)
    assert [(e.model, e.test_sets) for e in GRAPH.evaluations] == [
        ("teacher", ("source", "target")),
        ("student", ("source",)),
        ("adapted", ("target", "source")),
    ]
    assert GRAPH.trained_on("adapted") == (SOURCE, TARGET)
    assert GRAPH.trained_on("student") == (SOURCE,)
    assert GRAPH.served == "student"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"served": "nobody"}, "served model nobody has no evaluation"),
        ({"evaluations": (Evaluation("ghost", (SOURCE,)),)}, "evaluation of unknown model ghost"),
        ({"evaluations": (Evaluation("student", ()),)}, "student: no test sets"),
        ({"evaluations": (Evaluation("student", ("dusk",)),)}, "unknown domain dusk"),
        (
            {"models": (TrainedModel("student", "distill", SOURCE, "teacher", "teacher"),)},
            "base teacher is not declared before",
        ),
        ({"models": (TrainedModel("student", "fit", SOURCE),)}, "no stage fit"),
        (
            {"models": (TrainedModel("teacher", "train", SOURCE, "teacher"),)},
            "give both base and base_port",
        ),
    ],
)
def test_an_inconsistent_graph_is_refused(change: dict[str, Any], message: str) -> None:
    fields = {f.name: getattr(GRAPH, f.name) for f in dataclasses.fields(GRAPH)}
    with pytest.raises(ValueError, match=re.escape(message)):
        PipelineGraph(**{**fields, "served": "student", **change})


def _edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the edit no longer applies: {old!r}"
    return text.replace(old, new)


@pytest.mark.parametrize(
    ("old", "new", "reported"),
    [
        (  # the adapted model's primary test set becomes the source
            "dataset: [data/datasets/target, data/datasets/source]",
            "dataset: [data/datasets/source, data/datasets/target]",
            "evaluate@adapted (evaluates adapted on target, source): --dataset",
        ),
        (  # the student no longer evaluated
            "      student:\n        model: student\n",
            "      student:\n        model: teacher\n",
            "evaluation of student: 0 dvc stages",
        ),
        (  # an evaluation the graph does not declare
            "      adapted:  #",
            "      extra:\n        model: distilled\n        test: {dataset: [], manifest: []}\n"
            "      adapted:  #",
            "evaluate@extra evaluates ['work/models/distilled']: not declared",
        ),
        (  # the student distilled from the adapted teacher
            "--teacher work/models/teacher",
            "--teacher work/models/adapted",
            "distill (trains student): --teacher is ['work/models/adapted']",
        ),
        (  # adaptation on the source
            "reid adapt --dataset data/datasets/target",
            "reid adapt --dataset data/datasets/source",
            "adapt (trains adapted): --dataset is ['data/datasets/source']",
        ),
        (  # promote judging another evaluation
            "--evaluation reports/eval/student.json",
            "--evaluation reports/eval/teacher.json",
            "promote (promotes student): --evaluation",
        ),
        (  # export of another model
            "--model work/models/student --onnx",
            "--model work/models/teacher --onnx",
            "export (exports student): --model",
        ),
        (  # a test set the evaluation reads but does not depend on
            "        - data/datasets/target\n        - work/manifests/source.parquet\n",
            "        - work/manifests/source.parquet\n",
            "evaluate@teacher reads data/datasets/target (--dataset) but lacks it in deps",
        ),
    ],
)
def test_a_dvc_yaml_edited_alone_is_reported(old: str, new: str, reported: str) -> None:
    edited = yaml.safe_load(_edit(DVC_FILE.read_text(), old, new))
    problems = dvc_disagreements(edited)
    assert any(reported in p for p in problems), problems


def _task_named(spec: dict[str, Any], display: str) -> dict[str, Any]:
    """The raw task (in the root or a branch) with this display name, to edit in place."""
    for component in [spec["root"], *spec["components"].values()]:
        for task in component.get("dag", {}).get("tasks", {}).values():
            if task["taskInfo"]["name"] == display:
                return task
    raise AssertionError(f"no task {display!r}")


def _swap_test_sets(spec: dict[str, Any]) -> None:
    inputs = _task_named(spec, "evaluate adapted @ target, source")["inputs"]["artifacts"]
    for port in ("dataset", "manifest"):
        inputs[port], inputs[f"{port}_2"] = inputs[f"{port}_2"], inputs[port]


def _export_the_teacher(spec: dict[str, Any]) -> None:
    model = _task_named(spec, "export student (ONNX)")["inputs"]["artifacts"]["model"]
    model["taskOutputArtifact"]["producerTask"] = "train"


def _else_branch_taken_with_a_target(spec: dict[str, Any]) -> None:
    """The Else branch's condition loses its `!(…)`: it runs with a target, not without."""
    (branch,) = [
        task
        for component in [spec["root"], *spec["components"].values()]
        for task in component.get("dag", {}).get("tasks", {}).values()
        if task.get("triggerPolicy", {}).get("condition", "").startswith("!(")
    ]
    branch["triggerPolicy"]["condition"] = branch["triggerPolicy"]["condition"][2:-1]


def _distill_on_the_target(spec: dict[str, Any]) -> None:
    dataset = _task_named(spec, "distill student (source)")["inputs"]["artifacts"]["dataset"]
    dataset["taskOutputArtifact"]["producerTask"] = "fetch-2"  # the target's fetch


def _rename_an_evaluation(spec: dict[str, Any]) -> None:
    _task_named(spec, "evaluate student @ source")["taskInfo"]["name"] = "evaluate student"


@pytest.mark.parametrize(
    ("damage", "reported"),
    [
        (_swap_test_sets, "evaluations with target: "),
        (_export_the_teacher, "export student (ONNX) takes teacher, not student"),
        (_else_branch_taken_with_a_target, "evaluations without target: "),
        (_distill_on_the_target, "distill student (source) trains student on"),
        (_rename_an_evaluation, "name it 'evaluate student @ source'"),
    ],
)
def test_a_compiled_pipeline_edited_alone_is_reported(damage, reported: str) -> None:
    spec = copy.deepcopy(_spec())
    damage(spec)
    problems = kfp_disagreements(spec)
    assert any(reported in p for p in problems), problems


def test_a_graph_edited_alone_is_reported_by_both_checkers() -> None:
    evaluations = tuple(
        Evaluation(e.model, tuple(reversed(e.test_sets))) if e.model == "adapted" else e
        for e in GRAPH.evaluations
    )
    graph = dataclasses.replace(GRAPH, evaluations=evaluations)
    assert any("evaluate@adapted" in p for p in dvc_disagreements(_dvc(), graph))
    assert any("evaluations with target" in p for p in kfp_disagreements(_spec(), graph))
    served = dataclasses.replace(GRAPH, served="teacher")
    assert any("export (exports teacher)" in p for p in dvc_disagreements(_dvc(), served))
    assert any("takes student, not teacher" in p for p in kfp_disagreements(_spec(), served))
