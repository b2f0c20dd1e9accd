"""Training beyond one pod: the PyTorchJob the pipeline creates, checked against the training
operator's SDK models (strict on unknown fields), and `reid train` run locally in exactly the
environment the operator gives its pods, training as one job."""

from __future__ import annotations

import copy
import shutil
import socket
import subprocess
from pathlib import PurePosixPath

import kubernetes_validate
import pytest
import torch
from conftest import ROOT, VENV_BIN
from safetensors.torch import load_file

from reid_core.cluster.openapi import SchemaError, to_model
from reid_core.cluster.pytorchjob import (
    CONTAINER,
    PORT_NAME,
    JobFolder,
    build_pytorchjob,
    describe_progress,
    job_state,
    validate_pytorchjob,
)
from reid_core.config import STATE_MOUNT, KubeflowConfig, config_to_yaml, load_config
from tests.support.local_operator import operator_environment, run_job_locally

TINY = ROOT / "configs" / "tiny.yaml"
K8S_VERSION = "1.31"
SECRET_KEYS = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_TOKEN"]


def _settings(**kubeflow) -> KubeflowConfig:
    return KubeflowConfig(
        **{"state_volume": "reid-state", "credentials_keys": SECRET_KEYS, **kubeflow}
    )


GPU_SETTINGS = _settings(
    training_job={"nodes": 2},
    accelerator={
        "type": "nvidia.com/gpu",
        "count": 4,
        "node_selector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
)
FOLDER = JobFolder(PurePosixPath(STATE_MOUNT) / "run-1" / "train-job")


def _job(settings: KubeflowConfig = GPU_SETTINGS, folder: JobFolder = FOLDER) -> dict:
    return build_pytorchjob(
        name="reid-train-abc",
        namespace="team-a",
        image="registry.example/reidflow:0.1.0-cuda",
        folder=folder,
        settings=settings,
        env={"MLFLOW_TRACKING_URI": "http://mlflow:5000", "REID_PIPELINE_RUN_ID": "run-1"},
    )


def _validate_pod_template(template: dict) -> None:
    """The pod template against Kubernetes' own OpenAPI schema, strictly."""
    pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
    kubernetes_validate.validate({**pod_template, "template": template}, K8S_VERSION, strict=True)


# ------------------------------------------------------------------ the job object


def test_a_two_node_job_has_a_master_and_a_worker_each_with_every_gpu_and_the_shared_claim():
    job = _job()
    validate_pytorchjob(job)
    spec = job["spec"]
    assert spec["nprocPerNode"] == "4"  # one training process per GPU
    replicas = spec["pytorchReplicaSpecs"]
    assert {kind: r["replicas"] for kind, r in replicas.items()} == {"Master": 1, "Worker": 1}
    for replica in replicas.values():
        _validate_pod_template(replica["template"])
        pod = replica["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == CONTAINER
        assert container["image"] == "registry.example/reidflow:0.1.0-cuda"
        assert [container["command"][0], container["args"][0]] == ["reid", "train"]
        assert f"--checkpoint={FOLDER.checkpoint}" in container["args"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert container["resources"]["requests"] == {"cpu": "4", "memory": "16Gi"}
        assert {p["name"] for p in container["ports"]} == {PORT_NAME}
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert pod["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if
                  "persistentVolumeClaim" in v]  # fmt: skip
        assert claims == ["reid-state"]
        assert {"name": "state", "mountPath": STATE_MOUNT} in container["volumeMounts"]
        env = {e["name"]: e for e in container["env"]}
        assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow:5000"
        for key in SECRET_KEYS:  # credentials by reference to the Secret, never a value
            assert "value" not in env[key]
            assert env[key]["valueFrom"]["secretKeyRef"] == {
                "name": "reidflow-s3",
                "key": key,
                "optional": True,
            }
    assert spec["runPolicy"]["backoffLimit"] == 2


def test_a_one_node_cpu_job_is_a_master_alone_with_one_process():
    job = _job(_settings(training_job={"nodes": 1}))
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    assert job["spec"]["nprocPerNode"] == "1"
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    _validate_pod_template(job["spec"]["pytorchReplicaSpecs"]["Master"]["template"])


def test_a_training_job_without_a_shared_claim_is_refused_by_the_config():
    with pytest.raises(ValueError, match="training_job.nodes needs state_volume"):
        KubeflowConfig(training_job={"nodes": 2})


def _edited(edit) -> dict:
    job = copy.deepcopy(_job())
    edit(job)
    return job


def _replicas(job: dict) -> dict:
    return job["spec"]["pytorchReplicaSpecs"]


def _master(job: dict) -> dict:
    return _replicas(job)["Master"]


def _container(job: dict) -> dict:
    return _master(job)["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda j: j["spec"].update(nprocsPerNode="4"), r"\.spec: unknown field 'nprocsPerNode'"),
        (lambda j: _container(j).update(imagePullPolicyy="Always"),
         r"containers\[0\]: unknown field 'imagePullPolicyy'"),
        (lambda j: _master(j).update(replicas="1"), r"Master\.replicas: expected int"),
        (lambda j: _container(j).pop("name"), r"containers\[0\]: .*name"),
        (lambda j: _replicas(j).update(Chief=_replicas(j).pop("Worker")), "replica type must be"),
        (lambda j: _replicas(j).pop("Master"), "needs a Master"),
        (lambda j: _master(j).update(restartPolicy="Sometimes"), "restartPolicy: one of"),
        (lambda j: j["spec"]["runPolicy"].update(cleanPodPolicy="Never"), "cleanPodPolicy: one of"),
        (lambda j: _container(j).update(name="trainer"), "no container named 'pytorch'"),
        (lambda j: _container(j).pop("ports"), "needs a port"),
        (lambda j: j.update(kind="TFJob"), "apiVersion/kind must be"),
    ],
    ids=["spec-typo", "container-typo", "type", "required", "replica-type", "no-master",
         "restart-policy", "clean-pod-policy", "container-name", "master-port", "kind"],
)  # fmt: skip
def test_a_job_that_the_operator_would_not_take_is_refused_naming_the_field(edit, message):
    with pytest.raises(SchemaError, match=message):
        validate_pytorchjob(_edited(edit))


def test_progress_lines_follow_the_job_status_the_api_returns():
    job = copy.deepcopy(_job())
    assert job_state(to_model(job, "KubeflowOrgV1PyTorchJob")) == "Pending"
    job["status"] = {
        "conditions": [
            {"type": "Created", "status": "True", "reason": "PyTorchJobCreated"},
            {"type": "Running", "status": "True", "message": "PyTorchJob team-a/x is running."},
        ],
        "replicaStatuses": {"Master": {"active": 1}, "Worker": {"active": 1, "failed": 1}},
    }
    model = to_model(job, "KubeflowOrgV1PyTorchJob")
    assert job_state(model) == "Running"
    assert describe_progress(model) == (
        "Running; Master: 1 active; Worker: 1 active, 1 failed; PyTorchJob team-a/x is running."
    )


# ------------------------------------------------------------------ rendezvous, locally


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory, venv_env):
    """A generated dataset and its manifest, as the launcher task puts them on the claim."""
    root = tmp_path_factory.mktemp("operator-data")
    env = venv_env(OMP_NUM_THREADS="1")
    for args in (
        ["data", "synth", str(root / "dataset")],
        ["preprocess", f"--dataset={root / 'dataset'}", f"--manifest={root / 'manifest.parquet'}",
         f"--report={root / 'report.json'}"],
    ):  # fmt: skip
        subprocess.run([str(VENV_BIN / "reid"), *args, f"--config={TINY}"], env=env, check=True,
                       cwd=root, capture_output=True)  # fmt: skip
    return root


def _job_folder(tmp_path, tiny_source, name: str) -> JobFolder:
    folder = JobFolder(tmp_path / name)
    shutil.copytree(tiny_source / "dataset", folder.dataset)
    shutil.copyfile(tiny_source / "manifest.parquet", folder.manifest)
    config = load_config([TINY], [f"runtime.state_dir={folder.state}", "train.solver.epochs=2"])
    folder.config.write_text(config_to_yaml(config))
    return folder


def _reid_train_env(venv_env, tmp_path, run_id: str, **operator) -> dict[str, str]:
    return venv_env(
        OMP_NUM_THREADS="1",
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        REID_PIPELINE_RUN_ID=run_id,
        **operator,
    )


def _assert_same_weights(a, b) -> None:
    a, b = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)


@pytest.fixture(scope="module")
def torchrun_reference(tmp_path_factory, tiny_source, venv_env):
    """The same training by torchrun with 2 processes on one machine: the known-good job."""
    tmp_path = tmp_path_factory.mktemp("torchrun")
    folder = _job_folder(tmp_path, tiny_source, "reference")
    env = _reid_train_env(venv_env, tmp_path, "torchrun-reference")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [str(VENV_BIN / "torchrun"), "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "reid_core.cli", *folder.train_args()]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder.checkpoint


def test_two_pods_of_one_process_in_the_operators_environment_train_as_one(
    tmp_path, tiny_source, torchrun_reference, venv_env, free_port
):
    folder = _job_folder(tmp_path, tiny_source, "job")
    job = build_pytorchjob("reid-train-2x1", "default", "reidflow", folder,
                           _settings(training_job={"nodes": 2}), env={})  # fmt: skip
    assert operator_environment(job, "Worker", 0, "m")["RANK"] == "1"
    env = _reid_train_env(venv_env, tmp_path, "operator-2x1")
    run_job_locally(job, env, tmp_path, free_port, VENV_BIN)
    _assert_same_weights(torchrun_reference, folder.checkpoint)
    assert folder.metrics.is_file()


def test_one_pod_of_two_processes_starts_its_workers_from_the_operators_environment(
    tmp_path, tiny_source, torchrun_reference, venv_env, free_port
):
    folder = _job_folder(tmp_path, tiny_source, "job")
    settings = _settings(training_job={"nodes": 1},
                         accelerator={"type": "nvidia.com/gpu", "count": 2})  # fmt: skip
    job = build_pytorchjob("reid-train-1x2", "default", "reidflow", folder, settings, env={})
    environment = operator_environment(job, "Master", 0, "127.0.0.1")
    assert environment["PET_NPROC_PER_NODE"] == "2" and environment["WORLD_SIZE"] == "2"
    run_job_locally(job, _reid_train_env(venv_env, tmp_path, "operator-1x2"), tmp_path,
                    free_port, VENV_BIN)  # fmt: skip
    assert "2 data-parallel workers" in (tmp_path / "master-0.log").read_text()
    _assert_same_weights(torchrun_reference, folder.checkpoint)


def test_the_train_task_stages_the_job_on_the_claim_and_returns_its_checkpoint(
    tmp_path, tiny_source, torchrun_reference, venv_env, free_port, monkeypatch
):
    from kfp.dsl import Dataset, Metrics, Model

    from reid_core.stages.kfp_glue import run_training_job

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)  # restored after the test, as is
    monkeypatch.setenv("REID_PIPELINE_RUN_ID", "unset")  # what the task sets here
    env = venv_env(OMP_NUM_THREADS="1")
    jobs = []

    def run_here(job, timeout_s, poll_s, report):
        jobs.append(job)
        run_job_locally(job, env, tmp_path, free_port, VENV_BIN)

    out = tmp_path / "outputs"
    outputs = {"checkpoint": Model(uri=str(out / "checkpoint")),
               "metrics": Metrics(uri=str(out / "metrics.json"))}  # fmt: skip
    metrics = run_training_job(
        config_to_yaml(load_config([TINY], ["train.solver.epochs=2"])),
        "run-42",
        "",
        ["kubeflow.state_volume=reid-state", "kubeflow.training_job.nodes=2",
         "kubeflow.training_job.namespace=team-a"],
        "reidflow:test",
        inputs={"dataset": Dataset(uri=str(tiny_source / "dataset")),
                "manifest": Dataset(uri=str(tiny_source / "manifest.parquet"))},
        outputs=outputs,
        mount=str(tmp_path / "claim"),
        run_job=run_here,
    )  # fmt: skip
    (job,) = jobs
    assert job["metadata"]["namespace"] == "team-a"
    assert job["metadata"]["labels"]["reidflow.dev/pipeline-run"] == "run-42"
    (container,) = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    env_values = {e["name"]: e.get("value") for e in container["env"]}
    assert env_values["REID_PIPELINE_RUN_ID"] == "run-42"
    assert env_values["MLFLOW_TRACKING_URI"] == tracking
    assert (tmp_path / "claim" / "run-42" / "train-job" / "dataset").is_dir()
    _assert_same_weights(torchrun_reference, out / "checkpoint")
    assert metrics["train_images"] > 0
    assert outputs["metrics"].metadata["train_images"] == metrics["train_images"]


def test_the_pipeline_option_compiles_a_light_launcher_for_the_gpu_job(tmp_path):
    import yaml

    from pipelines.tools import compile_pipeline

    config = load_config([], ["kubeflow.state_volume=reid-state", "kubeflow.training_job.nodes=4",
                              "kubeflow.accelerator.type=nvidia.com/gpu",
                              "kubeflow.accelerator.count=8"])  # fmt: skip
    pipeline, platform = yaml.safe_load_all(
        compile_pipeline(tmp_path / "p.yaml", config).read_text()
    )
    executors = pipeline["deploymentSpec"]["executors"]
    assert "exec-train" not in executors
    launcher = executors["exec-train-job"]["container"]
    assert launcher["image"] == "reidflow:0.1.0"  # the launcher itself needs no GPU
    assert "accelerator" not in launcher["resources"]
    assert launcher["resources"]["resourceCpuRequest"] == "1"
    task = pipeline["root"]["dag"]["tasks"]["train-job"]
    image = task["inputs"]["parameters"]["image"]["runtimeValue"]["constant"]
    assert image == "reidflow:0.1.0-cuda"  # ... its job's pods do
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert kubernetes["exec-train-job"]["pvcMount"][0]["mountPath"] == STATE_MOUNT
    assert task["retryPolicy"]["maxRetryCount"] == 2
    # data-parallel inside one pod is what a GPU pipeline without the job does
    config.kubeflow.training_job.nodes = 0
    pipeline, _ = yaml.safe_load_all(compile_pipeline(tmp_path / "q.yaml", config).read_text())
    overrides = pipeline["root"]["dag"]["tasks"]["train"]["inputs"]["parameters"]
    assert "runtime.procs_per_node=8" in str(overrides["config_overrides"])
