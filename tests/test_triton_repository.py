"""Triton model repositories: every config flavour parses as Triton's ModelConfig; publishing
to a folder and to S3 (a moto server on loopback) keeps the same promises."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from reid_core.config import TritonConfig
from reid_core.serving.repositories import LocalRepository, served_in
from reid_core.serving.s3_repository import (
    PublishError,
    S3Location,
    S3Repository,
    s3_client,
    s3_etag,
)
from reid_core.serving.triton import publish_next_version, triton_config


def parse(text: str) -> model_config_pb2.ModelConfig:
    """Parse with Triton's own schema: an unknown field or a wrong type raises."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_production_config_is_a_valid_onnxruntime_model_config():
    config = TritonConfig(
        backend="onnxruntime",
        instance_kind="gpu",
        instance_count=2,
        max_batch_size=32,
        preferred_batch_sizes=[8, 16, 32],
        max_queue_delay_us=500,
        serve_versions=2,
    )
    parsed = parse(triton_config("reid", 256, 128, 2048, config))
    assert parsed.platform == "onnxruntime_onnx" and parsed.backend == ""
    assert parsed.max_batch_size == 32
    (inp,), (out,) = parsed.input, parsed.output
    assert (inp.name, list(inp.dims), inp.data_type) == ("images", [3, 256, 128], 11)  # TYPE_FP32
    assert (out.name, list(out.dims)) == ("features", [2048])
    assert list(parsed.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 500
    (group,) = parsed.instance_group
    assert group.count == 2 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert parsed.version_policy.latest.num_versions == 2
    pinned = parse(triton_config("reid", 256, 128, 2048, config, versions=[3, 4]))
    assert list(pinned.version_policy.specific.versions) == [3, 4]


def test_local_config_uses_the_python_backend_on_cpu_even_when_gpu_is_asked():
    parsed = parse(triton_config("reid", 64, 32, 64, TritonConfig(instance_kind="gpu")))
    assert parsed.backend == "python" and parsed.platform == ""
    assert parsed.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_dynamic_batching_can_be_switched_off():
    parsed = parse(triton_config("reid", 64, 32, 64, TritonConfig(dynamic_batching=False)))
    assert not parsed.HasField("dynamic_batching")


def test_preferred_batch_sizes_above_the_maximum_are_refused():
    with pytest.raises(ValueError, match="preferred_batch_sizes"):
        TritonConfig(max_batch_size=16, preferred_batch_sizes=[8, 32])


def test_keep_versions_below_serve_versions_is_refused():
    with pytest.raises(ValueError, match="keep_versions"):
        TritonConfig(serve_versions=2, keep_versions=1)


@pytest.fixture
def onnx_file(tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not really onnx, publishing only copies it")
    return path


@pytest.fixture(params=["local", "s3"])
def location(request, tmp_path) -> str:
    """A repository location of each kind: a folder, and a prefix in a fresh S3 bucket."""
    if request.param == "local":
        return str(tmp_path / "repo")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{endpoint}/{bucket}/triton"


def store(location: str):
    return S3Repository(location) if location.startswith("s3://") else LocalRepository(location)


def files_of(location: str, name: str, version: int) -> dict[str, bytes]:
    """The files of one version folder, read back from the store itself."""
    if not location.startswith("s3://"):
        folder = Path(location) / name / str(version)
        return {p.name: p.read_bytes() for p in folder.iterdir()}
    repo = S3Repository(location)
    prefix = repo.where.key(name, version) + "/"
    listed = repo.client.list_objects_v2(Bucket=repo.where.bucket, Prefix=prefix)
    return {
        o["Key"][len(prefix) :]: repo.client.get_object(Bucket=repo.where.bucket, Key=o["Key"])[
            "Body"
        ].read()
        for o in listed.get("Contents", [])
    }


def config_text(location: str, name: str) -> str | None:
    return store(location).read_config(name)


def publish(location: str, model_file: Path, **settings: object) -> int:
    config = TritonConfig(repository=location, **settings)
    return publish_next_version(config, "reid", model_file, 64, 32, 64)[0]


def test_versions_are_numbered_on_and_only_the_newest_kept(location, onnx_file):
    numbers = [
        publish(location, onnx_file, keep_versions=2, backend="onnxruntime") for _ in range(4)
    ]
    assert numbers == [1, 2, 3, 4]
    assert store(location).versions("reid") == [3, 4]
    assert files_of(location, "reid", 4) == {"model.onnx": onnx_file.read_bytes()}


def test_the_config_names_the_served_versions(location, onnx_file):
    for _ in range(3):
        publish(location, onnx_file, serve_versions=2)
    text = config_text(location, "reid")
    assert list(parse(text).version_policy.specific.versions) == [2, 3]
    assert store(location).served("reid") == [2, 3] == served_in(text)


def test_a_version_served_before_the_publish_outlives_it(location, onnx_file):
    # Triton may still be reloading the replaced version when the config switches
    publish(location, onnx_file, keep_versions=1)
    publish(location, onnx_file, keep_versions=1)
    assert store(location).versions("reid") == [1, 2]
    publish(location, onnx_file, keep_versions=1)
    assert store(location).versions("reid") == [2, 3]


def test_the_python_flavour_ships_its_model_py_next_to_the_onnx_file(location, onnx_file):
    publish(location, onnx_file, backend="python")
    files = files_of(location, "reid", 1)
    assert sorted(files) == ["model.onnx", "model.py"]
    assert b"TritonPythonModel" in files["model.py"]


def test_the_tensorrt_flavour_serves_the_engine_file(location, tmp_path):
    parsed = parse(triton_config("reid", 64, 32, 64, TritonConfig(backend="tensorrt")))
    assert parsed.platform == "tensorrt_plan"
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine")
    publish(location, plan, backend="tensorrt")
    assert files_of(location, "reid", 1) == {"model.plan": b"engine"}


def test_a_failed_publish_changes_nothing(location, onnx_file, tmp_path):
    publish(location, onnx_file)
    before = config_text(location, "reid")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        publish(location, tmp_path / "missing.onnx")
    assert store(location).versions("reid") == [1]
    assert config_text(location, "reid") == before


def test_versions_start_at_one_and_a_served_one_is_not_overwritten(location, onnx_file):
    repo = store(location)
    files = {"model.onnx": onnx_file}
    with pytest.raises(ValueError, match="start at 1"):
        repo.publish("reid", 0, files, "cfg", [0], keep=3)
    publish(location, onnx_file)
    with pytest.raises(ValueError, match="being served"):
        repo.publish("reid", 1, files, "cfg", [1], keep=3)


def test_the_lock_lets_one_holder_in_at_a_time(location):
    inside, overlaps = [], []

    def hold() -> None:
        with store(location).lock("reid", timeout=60):
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(len(inside))
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=hold) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == []


# -- S3 only


def test_s3_locations_use_tritons_spelling():
    aws = S3Location.parse("s3://models/triton/prod")
    assert (aws.bucket, aws.prefix, aws.endpoint_url) == ("models", "triton/prod", None)
    other = S3Location.parse("s3://minio.svc:9000/models/triton")
    assert (other.bucket, other.prefix, other.endpoint_url) == (
        "models",
        "triton",
        "http://minio.svc:9000",
    )
    tls = S3Location.parse("s3://https://s3.example.com:443/models")
    assert (tls.prefix, tls.endpoint_url) == ("", "https://s3.example.com:443")
    assert tls.key("reid", 1, "model.onnx") == "reid/1/model.onnx"
    with pytest.raises(ValueError, match="not an S3 repository location"):
        S3Location.parse("s3://Bad_Bucket!/x")


def test_the_expected_etag_is_the_one_s3_computes(s3_endpoint, s3_bucket, tmp_path):
    client = s3_client(s3_endpoint)
    repo = S3Repository(f"s3://{s3_endpoint}/{s3_bucket}/t", client)
    small, large = tmp_path / "small", tmp_path / "large"
    small.write_bytes(b"x" * 1000)
    large.write_bytes(bytes(range(256)) * (9 * 4096 + 7))  # over one 8 MiB part
    for path in (small, large):
        repo._upload(path, path.name)
        head = client.head_object(Bucket=s3_bucket, Key=path.name)
        assert head["ETag"].strip('"') == s3_etag(path)
    assert s3_etag(large).endswith("-2")


class CorruptingS3Repository(S3Repository):
    """Uploads a truncated model file, as a broken transfer would leave it."""

    def _upload(self, source: Path, key: str) -> None:
        if key.endswith(".onnx"):
            self.client.put_object(Bucket=self.where.bucket, Key=key, Body=source.read_bytes()[:-1])
        else:
            super()._upload(source, key)


def test_a_corrupted_s3_upload_is_caught_and_never_made_visible(s3_endpoint, s3_bucket, onnx_file):
    location = f"s3://{s3_endpoint}/{s3_bucket}/triton"
    publish(location, onnx_file, backend="python")
    before = config_text(location, "reid")
    broken = CorruptingS3Repository(location)
    with pytest.raises(PublishError, match="does not match"):
        broken.publish("reid", 2, {"model.onnx": onnx_file}, "replaced config", [2], keep=3)
    assert S3Repository(location).versions("reid") == [1]  # the upload was removed
    assert config_text(location, "reid") == before  # Triton's view did not change


def test_an_expired_s3_lock_is_broken_and_a_live_one_waited_for(s3_endpoint, s3_bucket):
    repo = S3Repository(f"s3://{s3_endpoint}/{s3_bucket}/triton")
    key = repo.where.key(".reid.lock")
    dead = '{"owner": "crashed-host:1", "expires": 0}'
    repo.client.put_object(Bucket=s3_bucket, Key=key, Body=dead.encode())
    other = S3Repository(repo.location)
    with repo.lock("reid", timeout=5):  # breaks the dead lock
        waiting = other.lock("reid", timeout=0.5)
        with pytest.raises(TimeoutError, match=r"held by .*:\d+"), waiting:
            pass
    listed = repo.client.list_objects_v2(Bucket=s3_bucket, Prefix="triton/")
    assert listed.get("KeyCount", 0) == 0  # released
