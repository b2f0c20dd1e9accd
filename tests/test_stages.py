"""Every stage through the `reid` CLI on a tiny synthetic dataset, with a real MLflow store."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reid_core.artifacts import EvaluationRecord, ExportRecord, PromotionRecord
from reid_core.config import ReidConfig
from reid_core.data.gallery_draws import gallery_draws
from reid_core.data.manifest import read_manifest
from reid_core.data.splits import load_split
from reid_core.engine.checkpoint import load_checkpoint, weights_digest
from reid_core.evaluation.distance import compute_distance
from reid_core.evaluation.dsr import choose_rerank_weight, dsr_top_k
from reid_core.evaluation.features import extract_features_and_maps
from reid_core.evaluation.rank import evaluate_rank
from reid_core.evaluation.repeated import evaluate_gallery_draws
from reid_core.tracking.trained_by import WEIGHTS_TAG

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
SOURCE_SET = ("--dataset", "ds", "--manifest", "m.parquet")  # domain "source"
TARGET_SET = ("--dataset", "target", "--manifest", "t.parquet")  # domain "target"
TWO_TEST_SETS = (*SOURCE_SET, *TARGET_SET)


def evaluate_outputs(name: str) -> tuple[str, ...]:
    """evaluate's output options: <name>.json, <name>_features/, <name>_report/."""
    return (
        "--metrics",
        f"{name}.json",
        "--features",
        f"{name}_features",
        "--report",
        f"{name}_report",
    )


def evaluation_as(ws: Path, name: str, map_gain: float = 0.0, eval_set_hash: str = "") -> str:
    """A copy of eval.json named `name`, its primary mAP `map_gain` higher, on another
    evaluation set when `eval_set_hash` is given; returns the name."""
    evaluation = EvaluationRecord.load_file(ws / "eval.json")
    metrics = {**evaluation.metrics, "mAP": evaluation.metrics["mAP"] + map_gain}
    other = eval_set_hash or evaluation.eval_set_hash
    replace(evaluation, metrics=metrics, eval_set_hash=other).save_file(ws / name)
    return name


def decision(path: Path) -> PromotionRecord:
    return PromotionRecord.load_file(path)


def reid(*args, cwd, env, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "reid_core.cli", *map(str, args), "--config", str(TINY)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"reid {args[0]} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("stages")
    env = {
        **os.environ,
        "GX_ANALYTICS_ENABLED": "false",
        "REID_PIPELINE_RUN_ID": "stages-test",
        "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlflow.db'}",
    }
    env.pop("MLFLOW_REGISTRY_URI", None)
    reid("data", "synth", "ds", cwd=ws, env=env)
    reid(
        "preprocess",
        "--dataset",
        "ds",
        "--manifest",
        "m.parquet",
        "--report",
        "r.json",
        cwd=ws,
        env=env,
    )
    reid(
        "train",
        "--dataset",
        "ds",
        "--manifest",
        "m.parquet",
        "--checkpoint",
        "teacher",
        "--metrics",
        "teacher.json",
        cwd=ws,
        env=env,
    )
    reid(
        "distill",
        "--dataset",
        "ds",
        "--manifest",
        "m.parquet",
        "--teacher",
        "teacher",
        "--checkpoint",
        "student",
        "--metrics",
        "student.json",
        cwd=ws,
        env=env,
    )
    reid("data", "synth", "target", "--style", "dusk", "--seed", "1", cwd=ws, env=env)
    reid(
        "preprocess",
        "--dataset",
        "target",
        "--manifest",
        "t.parquet",
        "--report",
        "t.json",
        "--set",
        "data.domain=target",
        cwd=ws,
        env=env,
    )
    reid(
        "evaluate", *TWO_TEST_SETS, *evaluate_outputs("eval"), "--model", "student", cwd=ws, env=env
    )
    reid(
        "export",
        "--dataset",
        "ds",
        "--manifest",
        "m.parquet",
        "--model",
        "student",
        "--onnx",
        "onnx",
        cwd=ws,
        env=env,
    )
    return ws, env


def test_stages_write_their_declared_outputs(workspace):
    ws, _ = workspace
    metrics = json.loads((ws / "eval.json").read_text())
    for key in ("rank1", "rank5", "mAP", "mINP", "tar_at_far_0.0001", "tar_at_far_0.01"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["eval_set_hash"] and metrics["test_set"] == "source"
    assert set(metrics["test_sets"]) == {"source", "target"}
    assert (ws / "teacher" / "model.safetensors").is_file()
    assert (ws / "onnx" / "model.onnx").is_file()
    assert ExportRecord.load(ws / "onnx").parity_passed is True


def test_stages_are_child_runs_of_one_pipeline_run(workspace):
    import mlflow

    ws, env = workspace
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs(
        [client.get_experiment_by_name("reidflow").experiment_id],
        filter_string="tags.`reid.pipeline_run_id` = 'stages-test'",
    )
    parents = [r for r in runs if r.data.tags.get("reid.kind") == "pipeline"]
    stages = [r for r in runs if r.data.tags.get("reid.kind") == "stage"]
    assert len(parents) == 1
    assert {r.data.tags["mlflow.parentRunId"] for r in stages} == {parents[0].info.run_id}
    assert {r.data.tags["reid.stage"] for r in stages} == {
        "preprocess",
        "train",
        "distill",
        "evaluate",
        "export",
    }
    train = next(r for r in stages if r.data.tags["reid.stage"] == "train")
    assert train.data.params["train.solver.ids_per_batch"] == "4"
    assert len(client.get_metric_history(train.info.run_id, "loss_ce")) >= 2


def test_promote_to_the_tensorrt_flavour_without_an_engine_fails_before_registering(workspace):
    import mlflow

    ws, env = workspace
    before = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).search_model_versions()
    proc = reid(
        "promote", "--onnx", "onnx", "--model", "student", "--evaluation", "eval.json",
        "--decision", "trt.json", "--markdown", "trt.md", "--set", "triton.backend=tensorrt",
        "--set", f"triton.repository={ws / 'trt_repository'}", cwd=ws, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "model.plan does not exist" in proc.stderr
    after = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).search_model_versions()
    assert len(after) == len(before)
    assert not (ws / "trt.json").exists() and not (ws / "trt_repository").exists()


def test_a_better_model_replaces_the_champion_and_rollback_restores_it(workspace):
    import mlflow

    ws, env = workspace
    evaluation = EvaluationRecord.load_file(ws / "eval.json")
    evaluation_as(ws, "eval_better.json", map_gain=0.1)
    repo = ws / "rollback_repository"
    sets = ("--set", "promote.model_name=reid-rollback", "--set", f"triton.repository={repo}")
    for i, ev in enumerate(("eval.json", "eval_better.json")):
        outputs = ("--decision", f"rb{i}.json", "--markdown", f"rb{i}.md")
        reid("promote", "--onnx", "onnx", "--model", "student", "--evaluation", ev, *outputs,
             *sets, cwd=ws, env=env)  # fmt: skip
    second = decision(ws / "rb1.json")
    assert second.promoted and second.triton_version == 2
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_URI"])
    assert str(client.get_model_version_by_alias("reid-rollback", "previous").version) == "1"

    proc = reid("rollback", *sets, cwd=ws, env=env)
    assert "champion is v1 again (was v2); served as Triton version 3" in proc.stdout
    assert str(client.get_model_version_by_alias("reid-rollback", "champion").version) == "1"
    assert "previous" not in client.get_registered_model("reid-rollback").aliases
    assert "rollback" in client.get_model_version("reid-rollback", "2").tags["reid.rolled_back"]
    assert sorted(p.name for p in (repo / "reid-rollback").iterdir()) == [
        "1", "2", "3", "config.pbtxt"
    ]  # fmt: skip
    assert (repo / "reid-rollback" / "3" / "model.py").is_file()  # the python flavour

    again = reid("rollback", *sets, cwd=ws, env=env, check=False)
    assert again.returncode == 1 and "nothing to roll back to" in again.stderr

    table = reid("models", "compare", *sets, cwd=ws, env=env).stdout.splitlines()
    own_set = f"champion-{evaluation.eval_set_hash[:12]}"  # v1's set's champion again too
    assert table[0] == "|  | v2 | v1 |" and table[2] == f"| aliases | — | champion, {own_set} |"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table}
    assert rows["Triton version"].endswith("| 2 | 3 |")  # v1 served again as version 3
    assert rows["replaced"].endswith("| 1 | — |")
    assert "pass mAP gain" in rows["promotion"] and rows["evaluation set"].count("|") == 4
    missing = reid("models", "compare", "9", *sets, cwd=ws, env=env, check=False)
    assert missing.returncode == 2 and "has no version 9" in missing.stderr


@pytest.mark.parametrize("store", ["local", "s3"])
def test_two_racing_promotions_end_with_one_consistent_champion_and_repository(
    store, workspace, request
):
    import mlflow

    from reid_core.serving.repositories import open_repository

    ws, env = workspace
    name = f"reid-race-{store}"
    if store == "s3":  # the lock is then an S3 object, as for promotions on several machines
        endpoint = request.getfixturevalue("s3_endpoint")
        repo = f"s3://{endpoint}/{request.getfixturevalue('s3_bucket')}/triton"
        env = {**env, **{k: os.environ[k] for k in os.environ if k.startswith("AWS_")}}
    else:
        repo = str(ws / "race_repository")
    sets = ("--set", f"promote.model_name={name}", "--set", f"triton.repository={repo}")
    procs = []
    for i, gain in enumerate((0.0, 0.1)):
        evaluation_as(ws, f"race{i}.json", map_gain=gain)
        cmd = ["promote", "--onnx", "onnx", "--model", "student", "--evaluation", f"race{i}.json",
               "--decision", f"rd{i}.json", "--markdown", f"rd{i}.md", *sets]  # fmt: skip
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "reid_core.cli", *map(str, cmd)],
                cwd=ws,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    decisions = [decision(ws / f"rd{i}.json") for i in range(2)]
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias(name, "champion")
    assert int(champion.version) == decisions[1].version  # the better one, whatever the order
    published = open_repository(repo).versions(name)
    promoted = [d for d in decisions if d.promoted]
    assert published == list(range(1, len(promoted) + 1))
    assert champion.tags["reid.triton_version"] == str(published[-1])  # newest = champion
    assert open_repository(repo).served(name) == [published[-1]]  # and Triton serves it
    if len(promoted) == 2:  # the worse one went first; the better one then replaced it
        assert champion.tags["reid.previous_champion"] == str(decisions[0].version)


def test_a_model_on_a_new_evaluation_set_is_judged_against_that_sets_champion(workspace):
    import mlflow

    ws, env = workspace
    evaluation = EvaluationRecord.load_file(ws / "eval.json")
    evaluation_as(ws, "eval_other_set.json", map_gain=-0.2, eval_set_hash="f" * 16)
    name = "reid-two-sets"
    sets = ("--set", f"promote.model_name={name}", "--set", f"triton.repository={ws / 'two'}")
    for i, ev in enumerate(("eval.json", "eval_other_set.json", "eval.json")):
        outputs = ("--decision", f"ts{i}.json", "--markdown", f"ts{i}.md")
        reid("promote", "--onnx", "onnx", "--model", "student", "--evaluation", ev, *outputs,
             *sets, cwd=ws, env=env)  # fmt: skip
    first, second, third = (decision(ws / f"ts{i}.json") for i in range(3))
    assert first.promoted
    # A worse mAP on another set is no reason to refuse: that set had no champion yet.
    assert second.promoted and second.evaluation_set == "f" * 16
    assert second.reasons[-1] == f"pass champion: no champion on evaluation set {'f' * 12} yet"
    assert f"Judged on evaluation set `{'f' * 12}`" in (ws / "ts1.md").read_text()
    # Back on the first set, the comparison is with that set's champion (v1), not the served v2.
    assert not third.promoted and "vs champion v1's" in third.reasons[0]
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_URI"])
    aliases = client.get_registered_model(name).aliases
    assert int(aliases["champion"]) == 2 and int(aliases[f"champion-{'f' * 12}"]) == 2
    assert int(aliases[f"champion-{evaluation.eval_set_hash[:12]}"]) == 1


def test_promote_registers_then_refuses_an_equal_model(workspace):
    import mlflow

    ws, env = workspace
    common = ("--onnx", "onnx", "--model", "student", "--evaluation", "eval.json")
    repo = ws / "model_repository"
    overrides = ("--set", f"triton.repository={repo}")
    reid(
        "promote",
        *common,
        "--decision",
        "d1.json",
        "--markdown",
        "r1.md",
        *overrides,
        cwd=ws,
        env=env,
    )
    reid(
        "promote",
        *common,
        "--decision",
        "d2.json",
        "--markdown",
        "r2.md",
        *overrides,
        cwd=ws,
        env=env,
    )
    first, second = decision(ws / "d1.json"), decision(ws / "d2.json")
    assert first.promoted and first.version == 1
    assert not second.promoted and second.reasons[0].startswith("FAIL mAP gain")
    assert first.triton_version == 1 and second.triton_version is None
    report = (ws / "r2.md").read_text()
    assert "**refused**" in report and "| mAP gain | FAIL |" in report
    assert "| rank-1 drop | pass |" in report and "champion v1" in report
    assert (repo / "reid-student" / "1" / "model.onnx").is_file()
    assert not (repo / "reid-student" / "2").exists()
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("reid-student", "champion")
    # the registered model embeds through MLflow's pyfunc, as ONNX Runtime does (own process:
    # loading sets mlflow's global URIs)
    script = (
        "import mlflow, numpy as np, onnxruntime as ort\n"
        "x = np.random.default_rng(1).uniform(0, 255, (3, 3, 64, 32)).astype(np.float32)\n"
        "got = mlflow.pyfunc.load_model('models:/reid-student@champion').predict({'images': x})\n"
        "s = ort.InferenceSession('onnx/model.onnx', providers=['CPUExecutionProvider'])\n"
        "print(float(np.abs(got['features'] - s.run(None, {'images': x})[0]).max()))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ws, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0 and float(proc.stdout.split()[-1]) < 1e-5, proc.stderr
    assert int(champion.version) == 1
    for tag in (
        "reid.git_commit",
        "reid.config_hash",
        "reid.data_fingerprint",
        "reid.eval_set_hash",
        "reid.parent_run_id",
        "reid.pipeline_run_id",
        "reid.latency_ms",
        "reid.parity_min_cosine",
    ):
        assert champion.tags[tag], tag
    parent = client.get_run(champion.tags["reid.promote_run_id"]).data.tags["mlflow.parentRunId"]
    assert champion.tags["reid.parent_run_id"] == parent
    # a DVC hash per test set behind the figures (empty here: the workspace is not DVC-tracked)
    assert "reid.eval_dvc_md5.source" in champion.tags


ADAPT_ARGS = (*TARGET_SET, "--model", "teacher")


def test_adapt_rounds_log_clustering_quality_and_target_map_per_round(workspace):
    ws, env = workspace
    env = _other_pipeline(env, "adapt-test")
    reid("adapt", *ADAPT_ARGS, "--checkpoint", "adapted", "--metrics", "adapted.json",
         "--set", "adapt.rounds=2", cwd=ws, env=env)  # fmt: skip
    metrics = json.loads((ws / "adapted.json").read_text())
    assert metrics["rounds_completed"] == 2 and metrics["clusters"] >= 2
    assert 0 <= metrics["pseudo_nmi"] <= 1 and 0 <= metrics["target_mAP"] <= 1
    client, (run,) = _stage_runs(env, "adapt-test")
    steps = {
        key: [m.step for m in client.get_metric_history(run.info.run_id, key)]
        for key in ("target_mAP", "pseudo_ari", "pseudo_pair_precision", "clusters", "outliers")
    }
    assert steps.pop("target_mAP") == [0, 1, 2], "step 0 is direct transfer"
    assert all(s == [1, 2] for s in steps.values()), steps
    assert json.loads((ws / "adapted" / "meta.json").read_text())["rounds_completed"] == 2
    assert not list((ws / ".reidflow" / "state").glob("adapt-*")), "state removed when done"


def _weights(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize(
    "case, extra, message",
    [
        ("outliers", ("--set", "adapt.min_samples=1000"), "outlier"),
        ("collapse", ("--set", "adapt.eps=0.999", "--set", "adapt.k1=40"), "one cluster"),
    ],
)
def test_a_round_that_cannot_be_trained_on_keeps_the_previous_model(
    workspace, case, extra, message
):
    ws, env = workspace
    env = _other_pipeline(env, f"adapt-stop-{case}")
    proc = reid("adapt", *ADAPT_ARGS, "--checkpoint", f"kept_{case}", "--metrics",
                f"kept_{case}.json", *extra, cwd=ws, env=env)  # fmt: skip
    assert "round 1 stopped, keeping the input model" in proc.stderr and message in proc.stderr
    metrics = json.loads((ws / f"kept_{case}.json").read_text())
    assert metrics["rounds_completed"] == 0 and metrics["stopped_at_round"] == 1
    kept, teacher = _weights(ws / f"kept_{case}"), _weights(ws / "teacher")
    assert kept.keys() == teacher.keys()
    assert all(np.array_equal(kept[k], teacher[k]) for k in kept)
    _, (run,) = _stage_runs(env, f"adapt-stop-{case}")
    assert message in run.data.tags["reid.stopped"]


def test_an_empty_target_set_keeps_the_input_model(workspace):
    from reid_core.data.manifest import read_manifest, write_manifest

    ws, env = workspace
    df, meta = read_manifest(ws / "t.parquet")
    write_manifest(df[df["split"] != "train"], ws / "no_train.parquet", meta)
    proc = reid("adapt", "--dataset", "target", "--manifest", "no_train.parquet", "--model",
                "teacher", "--checkpoint", "kept_empty", "--metrics", "kept_empty.json",
                cwd=ws, env=_other_pipeline(env, "adapt-empty"))  # fmt: skip
    assert "the target set has no train images" in proc.stderr
    assert json.loads((ws / "kept_empty.json").read_text())["rounds_completed"] == 0
    assert (ws / "kept_empty" / "model.safetensors").is_file()


def test_distill_takes_several_teachers_including_one_from_the_registry(workspace):
    import mlflow

    ws, env = workspace
    env = _other_pipeline(env, "distill-registry")
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (newest,) = client.search_runs(  # found by the weights' digest, as the stages find it
        [e.experiment_id for e in client.search_experiments()],
        f"tags.`{WEIGHTS_TAG}` = '{weights_digest(ws / 'teacher')}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    train_run = newest.info.run_id
    client.create_registered_model("reid-teacher")
    version = client.create_model_version(
        "reid-teacher", f"runs:/{train_run}/checkpoint", run_id=train_run,
        tags={"reid.train_run_id": train_run},
    )  # fmt: skip
    client.set_registered_model_alias("reid-teacher", "champion", version.version)
    reid("distill", *SOURCE_SET, "--teacher", "teacher", "--teacher",
         "models:/reid-teacher@champion", "--checkpoint", "student2", "--metrics", "student2.json",
         "--set", "distill.pkt_weight=1", "--set", "distill.feature_weight=1",
         cwd=ws, env=env)  # fmt: skip
    metrics = json.loads((ws / "student2.json").read_text())
    assert metrics["teachers"] == 2
    meta = json.loads((ws / "student2" / "meta.json").read_text())
    assert meta["teachers"] == ["teacher", "models:/reid-teacher@champion"]
    _, (run,) = _stage_runs(env, "distill-registry")
    history = client.get_metric_history(run.info.run_id, "loss_feature")
    assert history and all(m.value > 0 for m in history)
    proc = reid("distill", *SOURCE_SET, "--teacher", "models:/reid-teacher@nobody",
                "--checkpoint", "s3", "--metrics", "s3.json",
                cwd=ws, env=env, check=False)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # a name that is not there
    assert "cannot resolve models:/reid-teacher@nobody" in proc.stderr
    assert not (ws / "s3").exists()


def test_a_missing_input_is_named(workspace):
    ws, env = workspace
    proc = reid(
        "evaluate",
        *SOURCE_SET,
        "--model",
        "nowhere",
        *evaluate_outputs("x"),
        cwd=ws,
        env=env,
        check=False,
    )
    assert proc.returncode == 2 and "nowhere" in proc.stderr


def test_two_test_sets_give_one_table_whose_rows_equal_each_set_alone(workspace):
    ws, env = workspace
    for name, test_set in (("source", SOURCE_SET), ("target", TARGET_SET)):
        reid("evaluate", *test_set, *evaluate_outputs(f"alone_{name}"), "--model", "student",
             cwd=ws, env=env)  # fmt: skip
    both = json.loads((ws / "eval.json").read_text())
    for name in ("source", "target"):
        alone = json.loads((ws / f"alone_{name}.json").read_text())
        assert set(alone["test_sets"]) == {name} and alone["test_set"] == name
        row = both["test_sets"][name]
        assert row["eval_set_hash"] == alone["eval_set_hash"]
        for key in ("rank1", "rank5", "rank10", "mAP", "mINP", "tar_at_far_0.01"):
            assert row[key] == pytest.approx(alone[key], rel=1e-9), (name, key)
    # The flat keys are the primary (first) test set's, as promote reads them.
    assert both["rank1"] == both["test_sets"]["source"]["rank1"] and both["domain"] == "source"
    assert both["test_sets"]["target"]["eval_set_hash"] != both["eval_set_hash"]


def test_vehicleid_test_sizes_give_one_table_of_means_and_spreads_over_gallery_draws(workspace):
    ws, env = workspace
    reid("data", "synth-vehicles", "veh", "--num-ids", "30", "--images-per-id", "4",
         "--size", "32", cwd=ws, env=env)  # fmt: skip
    sets = []
    for size in ("800", "1600", "2400"):
        reid("preprocess", "--dataset", "veh", "--manifest", f"veh{size}.parquet", "--report",
             f"veh{size}.json", "--set", "data.format=vehicleid", "--set", f"data.test_set={size}",
             "--set", "data.domain=vehicleid", cwd=ws, env=env)  # fmt: skip
        sets += ["--dataset", "veh", "--manifest", f"veh{size}.parquet"]
    reid("evaluate", *sets, *evaluate_outputs("veh"), "--model", "student", "--set",
         "evaluate.gallery_draws=6", "--set", "evaluate.draw_seed=3", cwd=ws, env=env)  # fmt: skip
    record = json.loads((ws / "veh.json").read_text())
    names = ["vehicleid-800", "vehicleid-1600", "vehicleid-2400"]
    assert sorted(record["test_sets"]) == sorted(names)
    table = (ws / "veh_report" / "metrics.md").read_text()
    for name in names:
        row = record["test_sets"][name]
        # a plain reference over the stage's own features: pool the manifest's query and
        # gallery in the stage's order, redraw with the same seed, average
        manifest = pd.read_parquet(ws / f"veh{name.split('-')[1]}.parquet")
        pool = pd.concat([manifest[manifest["split"] == s] for s in ("query", "gallery")])
        saved = np.load(ws / "veh_features" / f"{name}.npz")
        feats = {
            str(path): feat
            for split in ("query", "gallery")
            for path, feat in zip(saved[f"{split}_paths"], saved[f"{split}_feats"], strict=True)
        }
        pids = pool["pid"].to_numpy()
        trials = gallery_draws(pids, 6, seed=3)
        features = np.stack([feats[p] for p in pool["path"]])
        expected = evaluate_gallery_draws(features, pids, trials).as_metrics()
        assert {"rank5", "mAP_std", "rank1_std"} <= set(expected)
        for key in expected:
            assert row[key] == pytest.approx(expected[key], abs=1e-6), (name, key)
        # the first draw is what the features file holds
        assert sorted(saved["gallery_paths"]) == sorted(pool["path"].to_numpy()[trials[0].gallery])
        line = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert f"{100 * row['mAP']:.1f} ± {100 * row['mAP_std']:.1f}" in line
    assert (
        record["test_sets"]["vehicleid-800"]["num_valid_queries"]
        < record["test_sets"]["vehicleid-2400"]["num_valid_queries"]
    )


def _partial_sets(ws, env) -> tuple[str, ...]:
    """Synthetic partial test and validation sets (other people), preprocessed once."""
    if not (ws / "pv.parquet").exists():
        for name, seed, domain in (("pt", "5", "partial"), ("pv", "6", "partial_val")):
            reid("data", "synth", name, "--partial", "crop", "--seed", seed, cwd=ws, env=env)
            reid("preprocess", "--dataset", name, "--manifest", f"{name}.parquet", "--report",
                 f"{name}.json", "--set", f"data.domain={domain}", cwd=ws, env=env)  # fmt: skip
    return ("--dataset", "pt", "--manifest", "pt.parquet", "--dataset", "pv", "--manifest",
            "pv.parquet")  # fmt: skip


def test_dsr_reranks_the_test_set_at_the_weight_best_on_the_validation_set(workspace):
    ws, env = workspace
    sets = _partial_sets(ws, env)
    reid("evaluate", *sets, *evaluate_outputs("dsr"), "--model", "student", "--set",
         "evaluate.dsr=true", "--set", "evaluate.dsr_validation=partial_val", "--set",
         "evaluate.dsr_top_k=12", cwd=ws, env=env)  # fmt: skip
    reid("evaluate", *sets[:4], *evaluate_outputs("global"), "--model", "student", cwd=ws,
         env=env)  # fmt: skip
    record = json.loads((ws / "dsr.json").read_text())
    plain = json.loads((ws / "global.json").read_text())
    assert set(record["test_sets"]) == {"partial"}  # the validation set is not reported
    assert record["dsr_validation"] == "partial_val" and plain["dsr_weight"] is None
    assert record["global_mAP"] == pytest.approx(plain["mAP"], abs=1e-9)
    assert record["global_rank1"] == pytest.approx(plain["rank1"], abs=1e-9)
    assert record["tar_at_far_0.01"] == pytest.approx(plain["tar_at_far_0.01"], abs=1e-9)

    # a plain recomputation from the library's parts: the weight is the validation set's best
    model, meta = load_checkpoint(ws / "student")
    cfg = ReidConfig().evaluate

    def top_k(dataset):
        manifest, _ = read_manifest(ws / f"{dataset}.parquet")
        q, g = (load_split(ws / dataset, manifest, s, meta["height"], meta["width"])
                for s in ("query", "gallery"))  # fmt: skip
        (qf, qm), (gf, gm) = (extract_features_and_maps(model, x.images) for x in (q, g))
        labels = (q.pids, g.pids, q.camids, g.camids)
        return dsr_top_k(compute_distance(qf, gf), qm, gm, 12, cfg.dsr_lambda), labels

    val, val_labels = top_k("pv")
    weight, _ = choose_rerank_weight(val, *val_labels)
    assert record["dsr_weight"] == weight
    test, test_labels = top_k("pt")
    fused = evaluate_rank(test.fused(weight), *test_labels)
    assert record["mAP"] == pytest.approx(fused.mAP, abs=1e-6)
    assert record["rank1"] == pytest.approx(float(fused.cmc[0]), abs=1e-6)


def test_a_dsr_validation_set_that_is_not_an_input_fails_clearly_without_output(workspace):
    ws, env = workspace
    proc = reid("evaluate", *_partial_sets(ws, env), *evaluate_outputs("bad"), "--model",
                "student", "--set", "evaluate.dsr=true", "--set", "evaluate.dsr_validation=nowhere",
                cwd=ws, env=env, check=False)  # fmt: skip
    assert proc.returncode == 2 and "no input set is named so" in proc.stderr, proc.stderr
    assert not [p.name for p in ws.iterdir() if p.name.startswith(("bad", ".bad"))]


def test_report_folder_holds_the_table_the_page_and_each_sets_pictures(workspace):
    ws, _ = workspace
    metrics = json.loads((ws / "eval.json").read_text())
    report = ws / "eval_report"
    table = (report / "metrics.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| test set | rank-1 (%) | rank-5 (%) | rank-10 (%) | mAP (%)")
    assert [row.split("|")[1].strip() for row in rows[1:]] == ["source", "target"]
    for row in rows[1:]:
        name, rank1, *_ = (cell.strip() for cell in row.split("|")[1:-1])
        assert rank1 == f"{100 * metrics['test_sets'][name]['rank1']:.1f}"
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 8  # four pictures per test set
    assert "<td>source</td>" in page and "<td>target</td>" in page
    for name in ("source", "target"):
        for png in ("rank_list.png", "cmc.png", "roc.png", "distances.png"):
            assert (report / name / png).stat().st_size > 1000
        with np.load(ws / "eval_features" / f"{name}.npz") as feats:
            assert len(feats["query_feats"]) == len(feats["query_pids"]) > 0
    roc = json.loads((report / "roc.json").read_text())
    assert 2 <= len(roc["fpr"]) <= 200


def test_evaluate_logs_every_test_set_to_mlflow(workspace):
    import mlflow

    ws, env = workspace
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs(
        [client.get_experiment_by_name("reidflow").experiment_id],
        filter_string="tags.`reid.test_sets` = 'source,target'",
    )
    logged = run.data.metrics
    metrics = json.loads((ws / "eval.json").read_text())
    assert logged["rank1"] == logged["source/rank1"] == metrics["rank1"]
    assert logged["target/mAP"] == metrics["test_sets"]["target"]["mAP"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "reports")}
    assert {"reports/metrics.md", "reports/report.html", "reports/source"} <= artifacts
    pictures = {a.path for a in client.list_artifacts(run.info.run_id, "reports/target")}
    assert "reports/target/rank_list.png" in pictures


@pytest.mark.parametrize(
    ("test_sets", "message"),
    [
        ((*SOURCE_SET, *SOURCE_SET), "two test sets are named 'source'"),
        (("--dataset", "ds", "--dataset", "target", "--manifest", "m.parquet"), "2 --dataset, 1"),
    ],
    ids=["duplicate-names", "unpaired"],
)
def test_bad_test_sets_fail_clearly_without_output(workspace, test_sets, message):
    ws, env = workspace
    proc = reid(
        "evaluate",
        *test_sets,
        "--model",
        "student",
        *evaluate_outputs("bad"),
        cwd=ws,
        env=env,
        check=False,
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not [p.name for p in ws.iterdir() if p.name.startswith(("bad", ".bad"))]


TRAIN_ARGS = (*SOURCE_SET, "--metrics", "t.json")


def _other_pipeline(env, run_id):
    return {**env, "REID_PIPELINE_RUN_ID": run_id, "OMP_NUM_THREADS": "1"}


def _stage_runs(env, run_id):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs(
        [client.get_experiment_by_name("reidflow").experiment_id],
        filter_string=f"tags.`reid.pipeline_run_id` = '{run_id}' and tags.`reid.kind` = 'stage'",
    )
    return client, runs


def test_train_under_torchrun_writes_one_checkpoint_and_logs_evaluations(workspace, free_port):
    ws, env = workspace
    env = _other_pipeline(env, "torchrun-test")
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port),
           "-m", "reid_core.cli", "train", *TRAIN_ARGS, "--checkpoint", "ddp_teacher",
           "--config", str(TINY), "--set", "train.solver.epochs=2",
           "--set", "train.solver.eval_every=1"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (ws / "ddp_teacher" / "model.safetensors").is_file()
    client, runs = _stage_runs(env, "torchrun-test")
    assert len(runs) == 1  # rank 1 trains silently
    history = client.get_metric_history(runs[0].info.run_id, "val_mAP")
    assert len(history) == 2 and all(0 <= m.value <= 1 for m in history)


def test_a_killed_train_stage_resumes_and_cleans_its_state(workspace, start_process):
    ws, env = workspace
    env = _other_pipeline(env, "resume-test")
    args = ["train", *TRAIN_ARGS, "--checkpoint", "resumed_teacher", "--config", str(TINY),
            "--set", "train.solver.epochs=60", "--set", "train.solver.checkpoint_every=1",
            "--set", "runtime.state_dir=resume_state"]  # fmt: skip
    killed = start_process([sys.executable, "-m", "reid_core.cli", *args], ws / "k.log", env, ws)
    deadline = time.monotonic() + 180
    while not list((ws / "resume_state").glob("*/last.pt")):
        assert killed.poll() is None and time.monotonic() < deadline, (ws / "k.log").read_text()
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert not (ws / "resumed_teacher").exists()
    proc = subprocess.run([sys.executable, "-m", "reid_core.cli", *args], cwd=ws, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resuming from iteration" in proc.stdout
    assert (ws / "resumed_teacher" / "model.safetensors").is_file()
    assert not list((ws / "resume_state").glob("*/last.pt"))


def test_ablation_writes_a_table_and_one_mlflow_run_per_variant(workspace):
    import mlflow

    ws, env = workspace
    reid("ablate", *SOURCE_SET, "--out", "ablation.md", "--variants", "3", cwd=ws, env=env)
    table = (ws / "ablation.md").read_text()
    rows = [line for line in table.splitlines()[2:] if line.startswith("|")]
    assert [r.split("|")[1].strip() for r in rows] == ["baseline", "+BNNeck", "+label smoothing"]
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("reidflow-ablation")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["reid.variant"] for r in runs) == sorted(
        ["baseline", "+BNNeck", "+label smoothing"]
    )
    baseline = next(r for r in runs if r.data.tags["reid.variant"] == "baseline")
    assert baseline.data.params["train.model.head"] == "linear"
    assert 0 <= baseline.data.metrics["mAP"] <= 1


# ------------------------------------------------------------------ promotion is all or nothing


def _promotion_state(client, name: str, repo: str) -> tuple:
    """What a failed promotion or rollback must leave as it found it: aliases, served
    versions, config.pbtxt's text and the version folders."""
    from reid_core.serving.repositories import open_repository

    repository = open_repository(repo)
    aliases = dict(client.get_registered_model(name).aliases)
    return aliases, repository.served(name), repository.read_config(name), repository.versions(name)


def _fault(monkeypatch, step: str) -> None:
    """Make promotion fail at `step`, as a lost tracking server or an unwritable repository
    would."""
    from reid_core.serving.repositories import LocalRepository
    from reid_core.serving.s3_repository import S3Repository
    from reid_core.stages import promote
    from reid_core.tracking import registry

    def broken(*args, **kwargs):
        raise ConnectionError(f"injected failure at {step}")

    if step == "publish":  # the new version's files are written, config.pbtxt is not
        for store in (LocalRepository, S3Repository):
            monkeypatch.setattr(store, "_write_config", broken)
    elif step == "aliases":  # the set's champion alias moves, then the server goes
        real = registry.set_champion_alias

        def half(model_name, version, old):
            import mlflow

            mlflow.MlflowClient().set_registered_model_alias(
                model_name, real(registry.candidate(model_name, version).eval_set_hash),
                str(version),
            )  # fmt: skip
            broken()

        monkeypatch.setattr(registry, "set_champion", half)
    elif step == "decision":
        monkeypatch.setattr(promote, "_record", broken)


@pytest.mark.parametrize(
    ("step", "store"),
    [("publish", "local"), ("publish", "s3"), ("aliases", "s3"), ("decision", "local")],
)
def test_a_promotion_failing_at_any_step_leaves_registry_and_triton_as_they_were(
    store, step, workspace, request, monkeypatch
):
    import mlflow

    from reid_core.config import load_config
    from reid_core.stages import run_stage
    from reid_core.tracking.registry import PROMOTION_TAG

    ws, env = workspace
    for key in ("MLFLOW_TRACKING_URI", "REID_PIPELINE_RUN_ID", "GX_ANALYTICS_ENABLED"):
        monkeypatch.setenv(key, env[key])
    name = f"reid-fault-{step}-{store}"
    if store == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        repo = f"s3://{endpoint}/{request.getfixturevalue('s3_bucket')}/triton"
    else:
        repo = str(ws / f"fault_{step}_repository")
    config = load_config([TINY], [f"promote.model_name={name}", f"triton.repository={repo}"])
    evaluation_as(ws, "eval_fault.json", map_gain=0.1)
    inputs = {"onnx": ws / "onnx", "model": ws / "student", "evaluation": ws / "eval.json"}

    def promote(evaluation_file: str) -> PromotionRecord:
        outputs = {"decision": ws / f"{name}.json", "markdown": ws / f"{name}.md"}
        run_stage("promote", config, {**inputs, "evaluation": ws / evaluation_file}, outputs)
        return decision(outputs["decision"])

    assert promote("eval.json").promoted  # v1: champion, served as Triton version 1
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_URI"])
    before = _promotion_state(client, name, repo)
    with monkeypatch.context() as patch:
        _fault(patch, step)
        with pytest.raises(ConnectionError, match=f"injected failure at {step}"):
            promote("eval_fault.json")  # v2 is better: it would be promoted
    assert _promotion_state(client, name, repo) == before
    assert client.get_model_version(name, "2").tags[PROMOTION_TAG].startswith("failed: ")
    # the next promotion works from the state the failed one left
    assert promote("eval_fault.json").triton_version == 2


def test_a_rollback_failing_after_its_publish_is_undone(workspace, monkeypatch):
    import mlflow

    from reid_core.config import load_config
    from reid_core.tracking import rollback

    ws, env = workspace
    for key in ("MLFLOW_TRACKING_URI", "REID_PIPELINE_RUN_ID", "GX_ANALYTICS_ENABLED"):
        monkeypatch.setenv(key, env[key])
    name, repo = "reid-fault-rollback", str(ws / "fault_rollback_repository")
    sets = ("--set", f"promote.model_name={name}", "--set", f"triton.repository={repo}")
    evaluation_as(ws, "eval_rb.json", map_gain=0.1)
    for i, ev in enumerate(("eval.json", "eval_rb.json")):
        reid("promote", "--onnx", "onnx", "--model", "student", "--evaluation", ev, "--decision",
             f"frb{i}.json", "--markdown", f"frb{i}.md", *sets, cwd=ws, env=env)  # fmt: skip
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_URI"])
    before = _promotion_state(client, name, repo)
    real = rollback._move_aliases

    def half(client_, name_, target, tags):
        client_.set_registered_model_alias(name_, "champion", target)
        raise ConnectionError("injected failure after the champion alias moved")

    monkeypatch.setattr(rollback, "_move_aliases", half)
    config = load_config([TINY], [f"promote.model_name={name}", f"triton.repository={repo}"])
    with pytest.raises(ConnectionError, match="injected failure"):
        rollback.rollback(config)
    assert _promotion_state(client, name, repo) == before
    monkeypatch.setattr(rollback, "_move_aliases", real)
    assert rollback.rollback(config).restored == 1
