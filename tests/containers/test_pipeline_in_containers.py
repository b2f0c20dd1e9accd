"""The compiled pipeline, every task in a container of the built image (kfp.local's
DockerRunner through podman's Docker API), as on a cluster: the source dataset from a DVC remote
on S3 by way of a git server, the target from an S3 prefix, MLflow a real server on the host; the
promoted model is then served by a real tritonserver, from the S3 repository promotion wrote."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from reid_core.data.synth import SynthSpec, generate
from reid_core.serving.client import TritonEmbedder
from reid_core.serving.s3_repository import s3_client
from reid_core.serving.server import TritonServer, free_ports
from reid_core.stages import STAGES

from .conftest import ROOT

pytestmark = pytest.mark.containers

MODEL_NAME = "reid-container-test"
SYNTH = {"num_ids": 16, "num_cams": 3, "images_per_id": 6, "height": 64, "width": 32}
RUN_TIMEOUT_S = 1500


def _git(repo: Path, *args: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True
    )
    return proc.stdout.strip()


@pytest.fixture
def podman_socket(tmp_path, podman, start_process) -> str:
    """podman's Docker-compatible API on a socket of this test's own; returns DOCKER_HOST."""
    socket = tmp_path / "podman.sock"
    start_process(
        [*podman, "system", "service", "--time=0", f"unix://{socket}"], tmp_path / "podman.log"
    )
    deadline = time.monotonic() + 30
    while not socket.exists():
        if time.monotonic() > deadline:
            pytest.fail(
                f"podman system service made no socket:\n{(tmp_path / 'podman.log').read_text()}"
            )
        time.sleep(0.2)
    return f"unix://{socket}"


@pytest.fixture
def git_server(tmp_path, start_process) -> tuple[Path, str]:
    """`git daemon` on 127.0.0.1 serving the folder it returns, and its git:// URL."""
    (port,) = free_ports(1)  # not the free_port fixture: the MLflow server takes that one
    served = tmp_path / "git"
    served.mkdir()
    start_process(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            f"--base-path={served}",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(served),
        ],
        tmp_path / "git-daemon.log",
    )
    return served, f"git://127.0.0.1:{port}"


@pytest.fixture
def source_repo(git_server, s3_endpoint, s3_bucket, venv_env) -> tuple[str, str]:
    """A datasets repository on the git server: data/market tracked by DVC, its data pushed to
    a DVC remote on the loopback S3 and nowhere else. Returns (git URL, commit of tag v1)."""
    served, url = git_server
    repo = served / "datasets.git"
    work = served.parent / "datasets-work"
    work.mkdir()
    env = venv_env()
    for args in (
        ("init", "-q"),
        ("config", "user.email", "test@example.org"),
        ("config", "user.name", "test"),
    ):
        _git(work, *args, env=env)
    for cmd in (
        ["dvc", "init", "-q"],
        ["dvc", "remote", "add", "-d", "store", f"s3://{s3_bucket}/dvc"],
        ["dvc", "remote", "modify", "store", "endpointurl", s3_endpoint],
    ):
        subprocess.run(cmd, cwd=work, env=env, check=True, capture_output=True)
    generate(work / "data" / "market", SynthSpec(**SYNTH, style="day", seed=0))
    subprocess.run(["dvc", "add", "-q", "data/market"], cwd=work, env=env, check=True)
    _git(work, "add", "-A", env=env)
    _git(work, "commit", "-qm", "market, first release", env=env)
    _git(work, "tag", "v1", env=env)
    subprocess.run(["dvc", "push", "-q"], cwd=work, env=env, check=True)
    _git(served, "clone", "-q", "--bare", str(work), str(repo), env=env)
    return f"{url}/datasets.git", _git(work, "rev-parse", "v1^{commit}", env=env)


def test_pipeline_runs_in_containers_and_its_promoted_model_is_served(
    tmp_path,
    cpu_image,
    podman_socket,
    source_repo,
    s3_endpoint,
    s3_bucket,
    mlflow_server,
    venv_env,
    triton_installation,
):
    repo_url, commit = source_repo
    generate(tmp_path / "target", SynthSpec(**SYNTH, style="dusk", seed=1))
    client = s3_client(s3_endpoint)
    for path in sorted((tmp_path / "target").rglob("*")):
        if path.is_file():
            key = f"datasets/dusk/{path.relative_to(tmp_path / 'target').as_posix()}"
            client.upload_file(str(path), s3_bucket, key)
    triton_repository = f"s3://{s3_endpoint}/{s3_bucket}/triton"
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    config["promote"] = {"model_name": MODEL_NAME}
    config["triton"] = {"repository": triton_repository}
    config["tracking"] = {"experiment": "container-test"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    source = f"dvc:{repo_url}?path=data/market&rev=v1"
    target = f"s3://{s3_endpoint}/{s3_bucket}/datasets/dusk"

    started = time.monotonic()
    proc = subprocess.run(
        [
            "reid",
            "pipeline",
            "run-local",
            "--runner",
            "docker",
            "--config",
            str(tmp_path / "config.yaml"),
            "--workdir",
            str(tmp_path / "work"),
            "--param",
            f"source_dataset={source}",
            "--param",
            f"target_dataset={target}",
            "--param",
            "adapt_rounds=1",
        ],
        cwd=ROOT,
        env=venv_env(
            DOCKER_HOST=podman_socket,
            REID_IMAGE=f"localhost/{cpu_image}",
            MLFLOW_TRACKING_URI=mlflow_server,
        ),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    elapsed = time.monotonic() - started
    logs = sorted((tmp_path / "work" / "kfp_local").glob("run-*.log"))
    tail = "\n".join(logs[-1].read_text(errors="replace").splitlines()[-60:]) if logs else ""
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n--- task output ---\n{tail}"
    print(f"containerized pipeline run: {elapsed:.0f} s")
    assert f"{MODEL_NAME} version 1 promoted to champion" in proc.stdout, proc.stdout
    written = list((tmp_path / "work" / "kfp_local").glob("*/*/executor_output.json"))
    assert len(written) >= 12 and {path.stat().st_uid for path in written} == {10001}, (
        "every task wrote its outputs from a container, as the image's unprivileged user"
    )

    # The registry: the promoted version is the champion and names the data it came from.
    from mlflow import MlflowClient

    registry = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    version = registry.get_model_version_by_alias(MODEL_NAME, "champion")
    assert version.version == "1"
    tags = version.tags
    assert tags["reid.dataset.source.kind"] == "dvc"
    assert tags["reid.dataset.source.repo"] == repo_url
    assert tags["reid.dataset.source.rev"] == commit
    assert tags["reid.dataset.source.md5"].endswith(".dir")
    experiment = registry.get_experiment_by_name("container-test")
    trained_by = tags["reid.train_run_id"]
    (evaluation,) = registry.search_runs(
        [experiment.experiment_id],
        f"tags.`reid.stage` = 'evaluate' and tags.`reid.model_run_id` = '{trained_by}'",
    )
    assert evaluation.data.tags["reid.test_sets"] == "source"
    assert 0 < evaluation.data.metrics["mAP"] <= 100 and "rank1" in evaluation.data.metrics
    stages = {
        r.data.tags.get("reid.stage")
        for r in registry.search_runs([experiment.experiment_id], max_results=200)
    }
    assert set(STAGES) <= stages
    adapt_runs = registry.search_runs(
        [experiment.experiment_id], "tags.`reid.stage` = 'adapt'", max_results=10
    )
    assert adapt_runs and all(
        r.data.tags.get("reid.dataset.target.kind") == "s3"
        for r in adapt_runs
        if "reid.dataset.target.kind" in r.data.tags
    )

    # Triton serves the champion from the S3 repository, with ONNX Runtime's embeddings.
    import onnxruntime

    (onnx_file,) = (tmp_path / "work" / "kfp_local").glob("*/export/onnx/model.onnx")
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 64, 32)).astype(np.float32)
    expected = session.run(None, {session.get_inputs()[0].name: images})[0]
    http, grpc, metrics = free_ports(3)
    server = TritonServer(
        triton_repository,
        triton_installation,
        http,
        grpc,
        metrics,
        poll_seconds=1,
        log=tmp_path / "triton.log",
    ).start()
    try:
        server.wait_model_ready(MODEL_NAME, 1)
        with TritonEmbedder(server.http_url, MODEL_NAME) as embedder:
            served = embedder.embed(images)
    finally:
        server.stop()
    np.testing.assert_allclose(served, expected, atol=1e-4, rtol=1e-4)
    decision = json.loads(
        next((tmp_path / "work" / "kfp_local").glob("*/promote/decision")).read_text()
    )
    assert decision["promoted"] and decision["version"] == 1
