"""Triton model repositories: both config flavours parse as Triton's ModelConfig; publishing."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from reid_core.config import TritonConfig
from reid_core.export.triton import publish_version, published_versions, triton_config


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


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not really onnx, publishing only copies it")
    return path


def test_publishing_keeps_the_newest_versions_only(tmp_path, onnx_file):
    for version in (1, 2, 3, 4):
        publish_version(tmp_path, "reid", version, onnx_file, "cfg", keep=2)
    assert published_versions(tmp_path, "reid") == [3, 4]
    assert sorted(p.name for p in (tmp_path / "reid").iterdir()) == ["3", "4", "config.pbtxt"]
    assert (tmp_path / "reid" / "4" / "model.onnx").read_bytes() == onnx_file.read_bytes()


def test_the_python_flavour_ships_its_model_py_next_to_the_onnx_file(tmp_path, onnx_file):
    publish_version(tmp_path, "reid", 1, onnx_file, "cfg", backend="python")
    files = sorted(p.name for p in (tmp_path / "reid" / "1").iterdir())
    assert files == ["model.onnx", "model.py"]
    assert "TritonPythonModel" in (tmp_path / "reid" / "1" / "model.py").read_text()


def test_an_unchanged_config_is_not_rewritten(tmp_path, onnx_file):
    # Triton reloads a model whose config file changes: republishing must not touch it
    publish_version(tmp_path, "reid", 1, onnx_file, "cfg")
    config = tmp_path / "reid" / "config.pbtxt"
    before = config.stat().st_mtime_ns, config.stat().st_ino
    publish_version(tmp_path, "reid", 2, onnx_file, "cfg")
    assert (config.stat().st_mtime_ns, config.stat().st_ino) == before
    publish_version(tmp_path, "reid", 3, onnx_file, "cfg v2")
    assert config.read_text() == "cfg v2"


def test_a_failed_publish_leaves_no_version_behind(tmp_path):
    with pytest.raises(FileNotFoundError):
        publish_version(tmp_path, "reid", 1, tmp_path / "missing.onnx", "cfg")
    assert [p.name for p in (tmp_path / "reid").iterdir()] == ["config.pbtxt"]


def test_versions_start_at_one(tmp_path, onnx_file):
    with pytest.raises(ValueError, match="start at 1"):
        publish_version(tmp_path, "reid", 0, onnx_file, "cfg")


def test_the_tensorrt_flavour_serves_the_engine_file(tmp_path, onnx_file):
    parsed = parse(triton_config("reid", 64, 32, 64, TritonConfig(backend="tensorrt")))
    assert parsed.platform == "tensorrt_plan"
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine")
    publish_version(tmp_path / "repo", "reid", 1, plan, "cfg", backend="tensorrt")
    assert [p.name for p in (tmp_path / "repo" / "reid" / "1").iterdir()] == ["model.plan"]
