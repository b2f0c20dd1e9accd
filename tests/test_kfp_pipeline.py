"""The Kubeflow Pipelines front end: components, the compiled training pipeline, the tools."""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from components import (
    IMAGE,
    MAX_TEST_SETS,
    MULTIPLE_SLOTS,
    STAGE_COMPONENTS,
    STAGE_EXTRA_PARAMETERS,
    UI_OUTPUTS,
)
from pipelines import tools
from pipelines.training import ADAPT_CHAIN
from reid_core.artifacts import EvaluationRecord, PromotionRecord
from reid_core.config import ConfigError
from reid_core.stages import STAGES, PortError
from reid_core.stages.kfp_glue import parse_config_yaml, port_paths
from tests.support.kfp_spec import component_tasks, function_of

ROOT = Path(__file__).resolve().parents[1]

# What each port's artifact is in KFP (the component signatures must agree).
PORT_TYPES = {
    "dataset": "system.Dataset",
    "manifest": "system.Dataset",
    "report": "system.Dataset",
    "features": "system.Dataset",
    "checkpoint": "system.Model",
    "model": "system.Model",
    "teacher": "system.Model",
    "onnx": "system.Model",
    "metrics": "system.Metrics",
    "evaluation": "system.Metrics",
    "decision": "system.Artifact",
    "markdown": "system.Markdown",
    "metrics_table": "system.Markdown",
    "report_page": "system.HTML",
    "roc": "system.ClassificationMetrics",
}
STAGE_PARAMETERS = {"config_yaml", "pipeline_run_id", "mlflow_tracking_uri", "config_overrides"}
TASKS_PER_FUNCTION = {
    "fetch": 2,
    "preprocess": 2,
    "train": 1,
    "distill": 1,
    "adapt": ADAPT_CHAIN,
    "evaluate": 4,  # teacher (with a target, or without), student, adapted
    "export": 1,
    "promote": 1,
}
JOB_ID_PLACEHOLDER = "{{$.pipeline_job_uuid}}"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tools.compile_pipeline(tmp_path_factory.mktemp("kfp") / "training.yaml")


@pytest.fixture(scope="module")
def spec(compiled: Path) -> dict[str, Any]:
    return next(yaml.safe_load_all(compiled.read_text()))  # the platform spec follows


@pytest.fixture(scope="module")
def tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task that runs a component, with its traced `sources` and its `condition`."""
    return component_tasks(spec)


def _producer(
    spec: dict[str, Any], tasks: dict[str, dict[str, Any]], task: dict[str, Any], port: str
) -> tuple[str, str]:
    """(function, task name) of the task whose output feeds `port` of `task`."""
    name = task["sources"][port][0]
    return function_of(spec, tasks[name]), name


def _round_number(task: dict[str, Any]) -> int:
    return task["inputs"]["parameters"]["round_number"]["runtimeValue"]["constant"]


def _port_of(input_name: str) -> str:
    """The stage port of a component input: `dataset_2` is the 2nd item of port `dataset`."""
    base, _, index = input_name.rpartition("_")
    return base if index.isdigit() else input_name


def _io_definitions(component: dict[str, Any]) -> tuple[dict, dict, set[str]]:
    inputs = component.get("inputDefinitions", {})
    outputs = component.get("outputDefinitions", {})
    return (
        inputs.get("artifacts", {}),
        outputs.get("artifacts", {}),
        set(inputs.get("parameters", {})),
    )


def test_checked_in_pipeline_yaml_matches_a_fresh_compile(compiled: Path) -> None:
    assert tools.PIPELINE_FILE.is_file(), (
        "pipelines/training.yaml is missing: run `reid pipeline compile`"
    )
    assert compiled.read_bytes() == tools.PIPELINE_FILE.read_bytes(), (
        "pipelines/training.yaml is stale (components, pipeline, params.yaml or kfp changed): "
        f"regenerate it with `reid pipeline compile` (REID_IMAGE unset; this run used {IMAGE!r})"
    )


def test_compiling_twice_gives_identical_bytes(compiled: Path, tmp_path: Path) -> None:
    again = tools.compile_pipeline(tmp_path / "again.yaml")
    assert again.read_bytes() == compiled.read_bytes()


def test_compiled_pipeline_runs_each_stage_with_its_artifact_types(
    spec: dict[str, Any], tasks: dict[str, dict[str, Any]]
) -> None:
    functions = [function_of(spec, task) for task in tasks.values()]
    assert {f: functions.count(f) for f in set(functions)} == TASKS_PER_FUNCTION
    assert set(STAGES) <= set(functions)
    for task in tasks.values():
        component = spec["components"][task["componentRef"]["name"]]
        inputs, outputs, _ = _io_definitions(component)
        for port, definition in {**inputs, **outputs}.items():
            title = definition["artifactType"]["schemaTitle"]
            expected = PORT_TYPES[_port_of(port)]
            assert title == expected, f"{function_of(spec, task)}.{port} is {title}"
        assert task["taskInfo"]["name"], "every task has a display name"
    assert len({t["taskInfo"]["name"] for t in tasks.values()}) == len(tasks)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_component_declares_exactly_the_stage_ports(stage: str) -> None:
    assert set(STAGE_COMPONENTS) == set(STAGES), "one component per stage, no more"
    pipeline_spec = json_format.MessageToDict(STAGE_COMPONENTS[stage].pipeline_spec)
    (component,) = pipeline_spec["components"].values()
    inputs, outputs, parameters = _io_definitions(component)
    expected_inputs = set()
    for port in STAGES[stage].inputs:
        expected_inputs.add(port.name)
        if port.multiple:  # the further items: optional inputs <port>_2 ... <port>_<MAX>
            extra = {f"{port.name}_{i}" for i in range(2, MULTIPLE_SLOTS[stage] + 1)}
            assert all(inputs[name].get("isOptional") for name in extra), port.name
            expected_inputs |= extra
        assert not inputs[port.name].get("isOptional"), f"{port.name}: the first is required"
    assert set(inputs) == expected_inputs
    assert set(outputs) == {p.name for p in STAGES[stage].outputs} | set(UI_OUTPUTS.get(stage, ()))
    assert parameters == STAGE_PARAMETERS | STAGE_EXTRA_PARAMETERS.get(stage, set())


class _Slot:
    def __init__(self, path: str) -> None:
        self.path = path


def test_multiple_port_slots_fill_in_order_and_unused_ones_come_last() -> None:
    wired = {"dataset": [_Slot("a"), _Slot("b"), None], "model": _Slot("m")}
    assert port_paths("evaluate", wired) == {"dataset": [Path("a"), Path("b")], "model": Path("m")}
    with pytest.raises(PortError, match="'manifest' item 3 is wired but item 2 is not"):
        port_paths("evaluate", {"manifest": [_Slot("a"), None, _Slot("c")]})


def test_an_adapt_round_count_beyond_the_compiled_chain_is_refused(tmp_path: Path) -> None:
    from reid_core.stages.kfp_glue import run_adapt_round

    with pytest.raises(ValueError, match=r"adapt rounds must lie in 1..3.*got 4"):
        run_adapt_round(1, 4, 3, "", "", "", {"model": _Slot("m")}, {})


def test_an_adapt_round_past_the_count_passes_its_model_on(tmp_path: Path) -> None:
    from reid_core.stages.kfp_glue import run_adapt_round

    class _Metrics(_Slot):
        logged: dict[str, float] = {}

        def log_metric(self, key: str, value: float) -> None:
            self.logged[key] = value

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "model.safetensors").write_bytes(b"weights")
    metrics = _Metrics(str(tmp_path / "metrics.json"))
    outputs = {"checkpoint": _Slot(str(tmp_path / "out")), "metrics": metrics}
    run_adapt_round(3, 2, 3, "", "", "", {"model": _Slot(str(tmp_path / "in"))}, outputs)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == b"weights"
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"round_skipped": 1.0}
    assert metrics.logged == {"round_skipped": 1.0}


def test_fetch_tasks_take_the_run_forms_dataset_parameters(
    spec: dict[str, Any], tasks: dict[str, dict[str, Any]]
) -> None:
    from pipelines.training import _params

    parameters = spec["root"]["inputDefinitions"]["parameters"]
    datasets = _params().datasets
    assert parameters["source_dataset"]["defaultValue"] == datasets.source
    assert parameters["target_dataset"]["defaultValue"] == datasets.target
    fetches = {
        task["inputs"]["parameters"]["name"]["runtimeValue"]["constant"]: task
        for task in tasks.values()
        if function_of(spec, task) == "fetch"
    }
    assert set(fetches) == {"source", "target"}
    for name, task in fetches.items():
        assert task["sources"]["reference"] == ("pipeline", f"{name}_dataset")
        assert not task["condition"], "both datasets are fetched (checked) in every run"


def test_pipeline_wires_teacher_student_adaptation_and_promotion(
    spec: dict[str, Any], tasks: dict[str, dict[str, Any]]
) -> None:
    by_function: dict[str, list[dict[str, Any]]] = {}
    for task in tasks.values():
        by_function.setdefault(function_of(spec, task), []).append(task)
    # The dataset each fetch task names, as the domains the assertions below speak of.
    synth_style = {
        name: {"source": "day", "target": "dusk"}[
            task["inputs"]["parameters"]["name"]["runtimeValue"]["constant"]
        ]
        for name, task in tasks.items()
        if function_of(spec, task) == "fetch"
    }
    assert sorted(synth_style.values()) == ["day", "dusk"]

    def producer(task: dict[str, Any], port: str) -> tuple[str, str]:
        return _producer(spec, tasks, task, port)

    def domain_of(task: dict[str, Any]) -> str:
        return synth_style[producer(task, "dataset")[1]]

    (promote,) = by_function["promote"]
    evaluation, evaluation_name = producer(promote, "evaluation")
    assert evaluation == "evaluate"
    evaluated = tasks[evaluation_name]
    assert producer(evaluated, "model")[0] == "distill"
    assert domain_of(evaluated) == "day"
    assert producer(promote, "model")[0] == "distill"
    assert producer(promote, "onnx")[0] == "export"
    (export,) = by_function["export"]
    assert producer(export, "model")[0] == "distill"
    (distill,) = by_function["distill"]
    assert producer(distill, "teacher")[0] == "train"
    rounds = sorted(by_function["adapt"], key=_round_number)
    assert [_round_number(t) for t in rounds] == list(range(1, ADAPT_CHAIN + 1))
    assert producer(rounds[0], "model")[0] == "train"
    for before, after in zip(rounds, rounds[1:], strict=False):
        assert tasks[producer(after, "model")[1]] is before, "rounds form one chain"
    for task in rounds:
        assert domain_of(task) == "dusk"
        assert task["sources"]["rounds"] == ("pipeline", "adapt_rounds")
    evaluated_adapted = next(
        t for t in by_function["evaluate"] if producer(t, "model")[0] == "adapt"
    )
    assert tasks[producer(evaluated_adapted, "model")[1]] is rounds[-1]

    def test_sets_of(task: dict[str, Any]) -> tuple[str, ...]:
        """The synth style of each test set an evaluate task takes, primary first."""
        styles = []
        for i in range(1, MAX_TEST_SETS + 1):
            suffix = "" if i == 1 else f"_{i}"
            if f"dataset{suffix}" not in task["sources"]:
                break
            style = synth_style[producer(task, f"dataset{suffix}")[1]]
            prep = tasks[producer(task, f"manifest{suffix}")[1]]
            assert domain_of(prep) == style, "each dataset comes with its own manifest"
            styles.append(style)
        return tuple(styles)

    # With a target: the teacher on both domains, the adapted teacher target first. Without
    # one (the Else branch): the teacher on the source only. The student's is in every run.
    with_target, without_target = "!= ''", "!(inputs"
    evaluations = sorted(
        (producer(t, "model")[0], test_sets_of(t), t["condition"].startswith("!("))
        for t in by_function["evaluate"]
    )
    assert evaluations == [
        ("adapt", ("dusk", "day"), False),
        ("distill", ("day",), False),
        ("train", ("day",), True),
        ("train", ("day", "dusk"), False),
    ]
    assert test_sets_of(evaluated) == ("day",) and not evaluated["condition"]
    for task in tasks.values():
        function = function_of(spec, task)
        uses_target = function in ("preprocess", "adapt", "evaluate") and (
            "dusk" in test_sets_of(task) if function == "evaluate" else domain_of(task) == "dusk"
        )
        if uses_target:
            assert with_target in task["condition"] and not task["condition"].startswith("!(")
        elif function == "evaluate" and producer(task, "model")[0] == "train":
            assert task["condition"].startswith(without_target)
        else:
            assert not task["condition"], f"{task['taskInfo']['name']} runs in every run"
        assert "pipelinechannel--target_dataset" in task["condition"] or not task["condition"]

    for task in by_function["preprocess"]:
        overrides = task["inputs"]["parameters"]["config_overrides"]["runtimeValue"]["constant"]
        domain = {"day": "source", "dusk": "target"}[domain_of(task)]
        assert overrides == [f"data.domain={domain}"]
    for function, group in by_function.items():
        for task in group:
            run_id = task["inputs"]["parameters"]["pipeline_run_id"]["runtimeValue"]
            assert run_id["constant"] == JOB_ID_PLACEHOLDER
            caching = task.get("cachingOptions", {}).get("enableCache", False)
            assert caching is (function != "promote"), f"{function}: caching {caching}"


def test_pipeline_config_default_is_the_full_project_config(spec: dict[str, Any]) -> None:
    default = spec["root"]["inputDefinitions"]["parameters"]["config_yaml"]["defaultValue"]
    from pipelines.training import default_config_yaml

    assert default == default_config_yaml()
    assert set(yaml.safe_load(default)) >= {"datasets", "synth", "train", "promote", "tracking"}


def test_config_yaml_overrides_apply_and_bad_keys_are_named() -> None:
    config = parse_config_yaml("train:\n  solver:\n    epochs: 3\n", ["data.domain=target"])
    assert (config.train.solver.epochs, config.data.domain) == (3, "target")
    assert parse_config_yaml("").train.solver.epochs == 12
    with pytest.raises(ConfigError, match="train.solver.epochz: unknown key"):
        parse_config_yaml("", ["train.solver.epochz=3"])
    with pytest.raises(ConfigError, match="config_yaml is not a YAML config file"):
        parse_config_yaml("train: [1,")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config_yaml("- 1\n")


def test_submit_to_an_unreachable_host_fails_clearly() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    host = f"http://127.0.0.1:{port}"
    with pytest.raises(ConnectionError, match=f"Kubeflow Pipelines API at {host} is unreachable"):
        tools.submit(host, "", "reidflow-test", None)
    with pytest.raises(ValueError, match="must be an http"):
        tools.submit("localhost:8080", "", "reidflow-test", None)


def _tiny_config(tmp_path: Path) -> str:
    """configs/tiny.yaml (seconds per stage) with this test's registry, store and repository."""
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    config["promote"] = {"model_name": "reid-kfp-test"}
    # not "triton": a folder of that name in the working directory would shadow the
    # triton package for torch in the task subprocesses (`python -m` puts cwd first).
    config["triton"] = {"repository": str(tmp_path / "model_repository")}
    config["tracking"] = {"experiment": "kfp-local-test", "workspace": str(tmp_path / "mlflow")}
    return yaml.safe_dump(config, sort_keys=False)


def _run_tiny_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **parameters: str
) -> dict[str, Any]:
    """run_local on the tiny config in `tmp_path`, MLflow in `tmp_path/mlflow.db`."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return tools.run_local(
        _tiny_config(tmp_path), tmp_path / "work", mlflow_tracking_uri=uri, parameters=parameters
    )


@pytest.mark.integration
def test_run_local_executes_every_task_and_promotes_to_triton(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "mlflow.db"
    result = _run_tiny_pipeline(tmp_path, monkeypatch, adapt_rounds="2")

    states = {name: task["state"] for name, task in result["tasks"].items()}
    assert set(states.values()) == {"SUCCEEDED", "SKIPPED"}, states
    assert result["status"] == "SUCCEEDED"
    assert len(states) == sum(TASKS_PER_FUNCTION.values())
    decision_file = Path(result["outputs"]["decision"]["uri"])
    PromotionRecord.load_file(decision_file)  # the decision, whole
    outputs = result["outputs"]
    evaluations = {
        task["display_name"]: task["outputs"]["metrics"]["metadata"]
        for task in result["tasks"].values()
        if task["display_name"].startswith("evaluate") and task["state"] == "SUCCEEDED"
    }
    assert sorted(evaluations) == [
        "evaluate adapted @ target, source",
        "evaluate student @ source",
        "evaluate teacher @ source, target",
    ]
    assert all(evaluations.values()), "every evaluation logs its metrics to KFP"
    teacher = evaluations["evaluate teacher @ source, target"]
    assert teacher["rank1"] == teacher["source/rank1"] and "target/mAP" in teacher
    skipped = [t["display_name"] for t in result["tasks"].values() if t["state"] == "SKIPPED"]
    assert skipped == ["evaluate teacher @ source"], "the branch for no target is not taken"
    evaluation = EvaluationRecord.load_file(Path(outputs["student_metrics"]["uri"]))
    assert set(evaluation.test_sets) == {"source"}
    # The evaluate task's views for the KFP UI: the table, the page, the primary ROC.
    table = Path(outputs["student_table"]["uri"]).read_text()
    assert "| source |" in table and "rank-1 (%)" in table
    page = Path(outputs["student_report"]["uri"]).read_text()
    assert page.count("data:image/png;base64,") == 4 and "<td>source</td>" in page
    roc = outputs["student_roc"]["metadata"]["confidenceMetrics"]
    assert 2 <= len(roc) <= 200
    fpr = [point["falsePositiveRate"] for point in roc]
    tpr = [point["recall"] for point in roc]
    assert fpr == sorted(fpr) and tpr == sorted(tpr)
    assert all(0 <= v <= 1 for v in fpr + tpr)
    assert all(isinstance(point["confidenceThreshold"], float) for point in roc)
    assert (Path(result["outputs"]["student_onnx"]["uri"]) / "model.onnx").is_file()
    model_dir = tmp_path / "model_repository" / "reid-kfp-test"
    assert (model_dir / "config.pbtxt").is_file()
    assert list(model_dir.glob("*/model.onnx")), "no model version published to Triton"

    # All stages of the run sit under one MLflow parent run, keyed by the KFP run id.
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "select s.value, r.value from tags s "
            "join tags k on s.run_uuid = k.run_uuid join tags r on s.run_uuid = r.run_uuid "
            "where s.key = 'reid.stage' and k.key = 'reid.kind' and k.value = 'stage' "
            "and r.key = 'reid.pipeline_run_id'"
        ).fetchall()
    assert {stage for stage, _ in rows} == set(STAGES)
    # The registered student names the data it was trained on, as the fetch task recorded it.
    with sqlite3.connect(db) as con:
        lineage = dict(
            con.execute(
                "select key, value from model_version_tags where key like 'reid.dataset.source.%'"
            ).fetchall()
        )
    assert lineage["reid.dataset.source.reference"] == "synth:day?seed=0"
    assert lineage["reid.dataset.source.kind"] == "synth"
    assert len(lineage["reid.dataset.source.content_sha256"]) == 64
    assert [stage for stage, _ in rows].count("adapt") == 2, "rounds 1 and 2 adapt, 3 passes on"
    run_ids = {run_id for _, run_id in rows}
    assert len(run_ids) == 1 and JOB_ID_PLACEHOLDER not in run_ids, run_ids


@pytest.mark.integration
def test_run_local_without_a_target_skips_adaptation_and_its_evaluations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run_tiny_pipeline(tmp_path, monkeypatch, target_dataset="")

    assert result["status"] == "SUCCEEDED", result["tasks"]
    ran = sorted(t["display_name"] for t in result["tasks"].values() if t["state"] == "SUCCEEDED")
    assert ran == [
        "distill student (source)",
        "evaluate student @ source",
        "evaluate teacher @ source",
        "export student (ONNX)",
        "fetch source dataset",
        "fetch target dataset",
        "preprocess source",
        "promote student",
        "train teacher (source)",
    ]
    skipped = [t for t in result["tasks"].values() if t["state"] == "SKIPPED"]
    assert len(skipped) == ADAPT_CHAIN + 3  # preprocess target, the rounds, two evaluations
    target = next(
        t for t in result["tasks"].values() if t["display_name"] == "fetch target dataset"
    )
    metadata = target["outputs"]["dataset"]["metadata"]
    assert metadata == {"reid.dataset.target.kind": "none", "reid.dataset.target.files": "0"}
    decision = PromotionRecord.load_file(Path(result["outputs"]["decision"]["uri"]))
    assert decision.promoted, decision


def test_pipeline_arguments_follow_the_config_and_take_typed_parameters() -> None:
    text = "adapt: {rounds: 2}\ndatasets: {source: 'synth:dusk?seed=4', target: data/duke}\n"
    arguments = tools.pipeline_arguments(text)
    assert arguments["adapt_rounds"] == 2
    assert (arguments["source_dataset"], arguments["target_dataset"]) == (
        "synth:dusk?seed=4",
        "data/duke",
    )
    given = {
        "adapt_rounds": "3",
        "source_dataset": "s3://bucket/market",
        "extra_teachers": '["models:/reid-teacher@champion"]',
    }
    arguments = tools.pipeline_arguments(text, given)
    assert arguments["adapt_rounds"] == 3 and arguments["source_dataset"] == "s3://bucket/market"
    assert arguments["extra_teachers"] == ["models:/reid-teacher@champion"]
    with pytest.raises(ValueError, match="unknown pipeline parameter 'adapt_round'"):
        tools.pipeline_arguments(text, {"adapt_round": "2"})
    with pytest.raises(ValueError, match="adapt_rounds: 'two' is not a Integer"):
        tools.pipeline_arguments(text, {"adapt_rounds": "two"})
    with pytest.raises(ValueError, match="target_dataset: unknown dataset reference scheme"):
        tools.pipeline_arguments(text, {"target_dataset": "gs://bucket/duke"})


def test_the_docker_runner_first_asks_for_what_containers_cannot_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = _tiny_config(tmp_path)
    with pytest.raises(ValueError, match="docker runner needs an MLflow server"):
        tools.run_local(config, tmp_path / "work", runner="docker")
    with pytest.raises(ValueError, match="docker runner needs an s3:// Triton repository"):
        tools.run_local(
            config, tmp_path / "work", runner="docker", mlflow_tracking_uri="http://127.0.0.1:1"
        )
    with pytest.raises(ValueError, match="unknown runner 'kubernetes'"):
        tools.run_local(config, tmp_path / "work", runner="kubernetes")
    assert not (tmp_path / "work").exists(), "nothing is written before the checks pass"
