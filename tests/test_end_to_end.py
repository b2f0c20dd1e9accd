"""End to end on real servers: three `dvc repro` runs of the project with different configs.

A real `mlflow server` (SQLite, artifacts on S3), a moto S3 server on loopback holding the DVC
remote, MLflow's artifacts and the Triton model repository, and a real tritonserver polling
that repository. An untrained student becomes the first champion; a trained one beats it and
Triton switches to it by itself; a second untrained one is refused, with its reasons recorded;
`reid rollback` then serves the first again.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from reid_core.artifacts import PromotionRecord
from reid_core.serving.client import TritonEmbedder
from reid_core.serving.s3_repository import S3Repository, s3_client
from reid_core.serving.server import TritonServer, free_ports
from tests.support.project import Project, copy_project, digest

pytestmark = pytest.mark.integration

NAME = "reid-student"
# learning rates of the three runs: barely moved from initialisation, then trained
UNTRAINED, TRAINED, UNTRAINED_AGAIN = 1e-7, 3.5e-4, 2e-7


def set_distill(project: Project, lr: float, epochs: int) -> None:
    path = project.root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["distill"]["solver"].update(lr=lr, epochs=epochs)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def repro(project: Project, run_id: str) -> PromotionRecord:
    project.run("dvc", "repro", run_id=run_id)
    return PromotionRecord.load_file(project.root / "reports" / "promotion.json")


def dataset_md5(project: Project) -> str:
    lock = yaml.safe_load((project.root / "dvc.lock").read_text())
    (out,) = lock["stages"]["fetch@source"]["outs"]
    return out["md5"]


def wait_for(predicate, what: str, server: TritonServer, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} after {timeout:.0f} s{server._log_tail(20)}")
        time.sleep(0.5)


def test_the_better_run_becomes_champion_and_is_served_the_worse_is_refused(
    tmp_path,
    tiny_config,
    venv_env,
    mlflow_server,
    s3_endpoint,
    s3_bucket,
    triton_installation,
):
    import mlflow

    repository = f"s3://{s3_endpoint}/{s3_bucket}/triton"
    over = yaml.safe_load(tiny_config.read_text())
    over["triton"] = {"repository": repository, "backend": "python", "poll_seconds": 1}
    env = venv_env(MLFLOW_TRACKING_URI=mlflow_server)
    project = copy_project(tmp_path / "project", over, env)
    project.run("dvc", "remote", "add", "--default", "--force", "s3", f"s3://{s3_bucket}/dvc")
    project.run("dvc", "remote", "modify", "s3", "endpointurl", s3_endpoint)

    # run 1: nothing to beat, so even an untrained student becomes champion
    set_distill(project, UNTRAINED, epochs=1)
    first = repro(project, "e2e-1")
    assert first.promoted and first.version == 1 and first.triton_version == 1
    first_onnx = tmp_path / "first.onnx"
    shutil.copyfile(project.root / "work" / "onnx" / "student" / "model.onnx", first_onnx)

    # the datasets go to the S3 remote and come back byte for byte
    dataset = project.root / "data" / "datasets" / "source"
    before = digest(dataset)
    project.run("dvc", "push")
    shutil.rmtree(dataset)
    shutil.rmtree(project.root / ".dvc" / "cache")
    project.run("dvc", "pull")
    assert digest(dataset) == before
    s3 = s3_client(s3_endpoint)
    assert s3.list_objects_v2(Bucket=s3_bucket, Prefix="dvc/files/md5/")["KeyCount"] > 0

    http, grpc, metrics = free_ports(3)
    log = tmp_path / "triton.log"
    server = TritonServer(repository, triton_installation, http, grpc, metrics, 1, log)
    with server:
        server.wait_model_ready(NAME, 1)

        # run 2: a trained student beats the champion; Triton, polling, switches to it
        set_distill(project, TRAINED, epochs=3)
        second = repro(project, "e2e-2")
        assert second.promoted, second.reasons
        assert (second.version, second.triton_version) == (2, 2)
        assert second.mAP > first.mAP
        version_ready = "/v2/models/{}/versions/{}/ready".format
        wait_for(lambda: server.status(version_ready(NAME, 2)) == 200, "v2 not served", server)
        wait_for(lambda: server.status(version_ready(NAME, 1)) == 400, "v1 not unloaded", server)
        onnx = project.root / "work" / "onnx" / "student" / "model.onnx"
        session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        images = np.random.default_rng(0).uniform(0, 255, (5, 3, 64, 32)).astype(np.float32)
        with TritonEmbedder(server.http_url, NAME) as embedder:
            served = embedder.embed(images)
            assert embedder.served_version == "2"
        np.testing.assert_allclose(served, session.run(None, {"images": images})[0], atol=1e-4)

        # run 3: another untrained student is refused; nothing new reaches Triton
        set_distill(project, UNTRAINED_AGAIN, epochs=1)
        third = repro(project, "e2e-3")
        assert not third.promoted and third.version == 3
        assert third.triton_version is None
        assert any(r.startswith("FAIL mAP gain") for r in third.reasons), third.reasons
        assert "**refused**" in (project.root / "reports" / "promotion.md").read_text()
        time.sleep(3)  # three polls: still version 2
        assert server.status(version_ready(NAME, 2)) == 200
        assert S3Repository(repository).versions(NAME) == [1, 2]

        # rollback: run 1's model is champion again, published to S3 as Triton version 3
        rolled = project.run("reid", "rollback").stdout
        assert "champion is v1 again (was v2)" in rolled, rolled
        wait_for(lambda: server.status(version_ready(NAME, 3)) == 200, "v3 not served", server)
        first_session = ort.InferenceSession(str(first_onnx), providers=["CPUExecutionProvider"])
        with TritonEmbedder(server.http_url, NAME) as embedder:
            served = embedder.embed(images)
            assert embedder.served_version == "3"
        np.testing.assert_allclose(
            served, first_session.run(None, {"images": images})[0], atol=1e-4
        )
    assert S3Repository(repository).versions(NAME) == [1, 2, 3]
    assert "failed to load" not in log.read_text(errors="replace")

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    assert client.get_model_version_by_alias(NAME, "champion").version == "1"  # rolled back
    assert client.get_model_version(NAME, "2").tags["reid.rolled_back"].startswith("replaced by v1")
    refused = client.get_model_version(NAME, "3").tags
    assert refused["reid.promotion"].startswith("refused: FAIL mAP gain")
    champion = client.get_model_version(NAME, "2").tags
    md5 = dataset_md5(project)
    assert champion["reid.dvc_md5"] == champion["reid.eval_dvc_md5.source"] == md5
    parent = client.get_run(champion["reid.parent_run_id"])
    assert parent.data.tags["reid.pipeline_run_id"] == champion["reid.pipeline_run_id"] == "e2e-2"
    for tag in ("reid.git_commit", "reid.config_hash", "reid.eval_set_hash", "reid.latency_ms"):
        assert champion[tag], tag
    # the registered models' files went through the server into the bucket
    stored = s3.list_objects_v2(Bucket=s3_bucket, Prefix="mlflow/")
    assert any(o["Key"].endswith("/MLmodel") for o in stored.get("Contents", []))
