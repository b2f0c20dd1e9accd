"""The compiled pipeline on a cluster: each task's resources, the GPU variant's accelerators,
image and placement, and credentials from a Kubernetes Secret, checked task by task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from components import IMAGE
from pipelines import tools
from pipelines.placement import STATE_MOUNT
from reid_core.config import (
    ACCELERATED_STAGES,
    KUBEFLOW_STAGES,
    TRAINING_STAGES,
    ConfigError,
    ReidConfig,
    load_config,
)
from reid_core.stages import STAGES

GPU_SETTINGS = [
    "kubeflow.accelerator.type=nvidia.com/gpu",
    "kubeflow.accelerator.count=2",
    'kubeflow.accelerator.node_selector={"nvidia.com/gpu.product": "NVIDIA-H200"}',
    'kubeflow.accelerator.tolerations=[{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]',
    "kubeflow.credentials_secret=reidflow-credentials",
    "kubeflow.resources.train.memory_limit=64Gi",
]


def _compile(tmp_path: Path, overrides: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The compiled pipeline spec and its Kubernetes platform spec ({} when there is none)."""
    config = load_config(overrides=overrides)
    out = tools.compile_pipeline(tmp_path / "pipeline.yaml", config)
    documents = list(yaml.safe_load_all(out.read_text()))
    platform = documents[1]["platforms"]["kubernetes"] if len(documents) > 1 else {}
    return documents[0], platform


def _executors_by_stage(spec: dict[str, Any]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Each stage's executors (label, container), from the function each one runs."""
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for label, executor in spec["deploymentSpec"]["executors"].items():
        args = executor["container"]["args"]
        stage = args[args.index("--function_to_execute") + 1]
        found.setdefault(stage, []).append((label, executor["container"]))
    return found


def test_every_task_requests_and_is_limited_to_its_stages_resources(tmp_path):
    spec, platform = _compile(tmp_path, [])
    defaults = ReidConfig().kubeflow.resources
    by_stage = _executors_by_stage(spec)
    assert set(by_stage) == set(KUBEFLOW_STAGES) == set(STAGES)
    for stage, executors in by_stage.items():
        expected = defaults[stage]
        for label, container in executors:
            resources = container["resources"]
            assert resources["resourceCpuRequest"] == expected.cpu_request, label
            assert resources["resourceCpuLimit"] == expected.cpu_limit, label
            assert resources["resourceMemoryRequest"] == expected.memory_request, label
            assert resources["resourceMemoryLimit"] == expected.memory_limit, label
            assert "accelerator" not in resources and container["image"] == IMAGE, label
    train = by_stage["train"][0][1]["resources"]
    evaluate = by_stage["evaluate"][0][1]["resources"]
    assert (
        train["memoryLimit"]
        > evaluate["memoryLimit"]
        > by_stage["fetch"][0][1]["resources"]["memoryLimit"]
    )
    for label, placement in platform["deploymentSpec"]["executors"].items():
        assert set(placement) == {"secretAsEnv"}, f"{label}: no placement without a GPU"
        assert placement["secretAsEnv"][0]["secretName"] == "reidflow-s3"
    _, without = _compile(tmp_path, ["kubeflow.credentials_secret="])
    assert without == {}, "no Secret named, no platform section"


def test_gpu_variant_accelerates_the_model_stages_with_the_cuda_image_and_placement(tmp_path):
    spec, platform = _compile(tmp_path, GPU_SETTINGS)
    executors = platform["deploymentSpec"]["executors"]
    for stage, found in _executors_by_stage(spec).items():
        for label, container in found:
            resources = container["resources"]
            placement = executors[label]
            if stage in ACCELERATED_STAGES:
                assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu", label
                assert resources["accelerator"]["resourceCount"] == "2", label
                assert container["image"] == f"{IMAGE}-cuda", label
                assert placement["nodeSelector"] == {
                    "labels": {"nvidia.com/gpu.product": "NVIDIA-H200"}
                }
                assert placement["tolerations"] == [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ]
            else:
                assert "accelerator" not in resources and container["image"] == IMAGE, label
                assert "nodeSelector" not in placement and "tolerations" not in placement
            if stage == "train":
                assert resources["resourceMemoryLimit"] == "64Gi"
            (secret,) = placement["secretAsEnv"]
            assert secret["secretName"] == "reidflow-credentials" and secret["optional"]
            names = {pair["envVar"] for pair in secret["keyToEnv"]}
            assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_TOKEN"} <= names


def test_no_credential_value_reaches_the_compiled_pipeline(tmp_path, monkeypatch):
    secret = "compile-time-secret-value-4f1e"
    for name in ("AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.setenv(name, secret)
    _compile(tmp_path, GPU_SETTINGS)
    assert secret not in (tmp_path / "pipeline.yaml").read_text()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("kubeflow.resources.trian.cpu_limit=4", "no stage called 'trian'"),
        ("kubeflow.resources.train.cpu_request=20", "cpu_request 20 is more than cpu_limit 8"),
        ("kubeflow.resources.evaluate.memory_limit=lots", "memory_limit"),
        ("kubeflow.accelerator.count=0", "count"),
        ('kubeflow.accelerator.node_selector={"bad key!": "x"}', "not a Kubernetes label key"),
        ("kubeflow.credentials_secret=Not_A_Name", "credentials_secret"),
        ('kubeflow.credentials_keys=["AWS KEY"]', "not an environment variable name"),
    ],
)
def test_bad_cluster_settings_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_training_tasks_retry_with_backoff_and_keep_their_state_on_the_volume(tmp_path):
    spec, platform = _compile(
        tmp_path, ["kubeflow.state_volume=reidflow-state", "kubeflow.retries=3"]
    )
    executors = platform["deploymentSpec"]["executors"]
    tasks = {}
    for dag in [
        spec["root"]["dag"],
        *(c["dag"] for c in spec["components"].values() if "dag" in c),
    ]:
        tasks.update(dag["tasks"])
    labels = {
        label: stage for stage, found in _executors_by_stage(spec).items() for label, _ in found
    }
    for name, task in tasks.items():
        component = spec["components"][task["componentRef"]["name"]]
        if "executorLabel" not in component:
            continue
        label = component["executorLabel"]
        stage = labels[label]
        overrides = task["inputs"]["parameters"]["config_overrides"]["runtimeValue"]["constant"]
        if stage in TRAINING_STAGES:
            assert task["retryPolicy"] == {
                "maxRetryCount": 3,
                "backoffDuration": "30s",
                "backoffFactor": 2.0,
                "backoffMaxDuration": "3600s",
            }, name
            assert executors[label]["pvcMount"] == [
                {
                    "constant": "reidflow-state",
                    "mountPath": STATE_MOUNT,
                    "pvcNameParameter": {"runtimeValue": {"constant": "reidflow-state"}},
                }
            ], name
            assert f"runtime.state_dir={STATE_MOUNT}" in overrides, name
        else:
            assert "retryPolicy" not in task and "pvcMount" not in executors[label], name
            assert not any(o.startswith("runtime.state_dir") for o in overrides), name
