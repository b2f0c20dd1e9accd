import numpy as np
import onnx
import pytest
import torch

from reid_core.config import ModelConfig
from reid_core.export.onnx import ServingModel, export_onnx, parity_report
from reid_core.export.triton import publish_version, triton_config
from reid_core.modeling import create_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model(ModelConfig(base_width=8), 4).eval()
    serving = ServingModel(model, l2_normalize=True)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(serving, path, 64, 32, opset=18)
    return serving, path


def test_onnx_has_the_documented_interface(exported):
    _, path = exported
    graph = onnx.load(str(path)).graph
    (inp,), (out,) = graph.input, graph.output
    assert inp.name == "images" and out.name == "features"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param  # dynamic batch
    assert [d.dim_value for d in dims[1:]] == [3, 64, 32]


def test_onnx_runtime_matches_pytorch_at_several_batch_sizes(exported):
    serving, path = exported
    images = (torch.rand(5, 3, 64, 32) * 255).to(torch.uint8)
    report = parity_report(serving, path, images, [1, 7, 64])
    assert report["max_abs_diff"] < 1e-4
    assert report["min_cosine"] > 0.99999
    assert {"max_abs_diff_batch1", "max_abs_diff_batch7", "max_abs_diff_batch64"} <= set(report)


def test_l2_normalised_export_gives_unit_vectors(exported):
    serving, _ = exported
    feats = serving(torch.rand(3, 3, 64, 32) * 255)
    np.testing.assert_allclose(feats.norm(dim=1).detach().numpy(), 1.0, atol=1e-5)


def test_triton_config_declares_the_tensors_and_dynamic_batching():
    text = triton_config("reid", 64, 32, 128, max_batch_size=32)
    assert 'platform: "onnxruntime_onnx"' in text
    assert "dims: [ 3, 64, 32 ]" in text and "dims: [ 128 ]" in text
    assert "preferred_batch_size: [ 8, 16, 32 ]" in text
    assert "max_batch_size: 32" in text


def test_publishing_keeps_the_newest_versions_only(tmp_path, exported):
    _, path = exported
    for version in (1, 2, 3, 4):
        publish_version(tmp_path, "reid", version, path, "cfg", keep=2)
    names = sorted(p.name for p in (tmp_path / "reid").iterdir())
    assert names == ["3", "4", "config.pbtxt"]
    assert (tmp_path / "reid" / "4" / "model.onnx").read_bytes() == path.read_bytes()


def test_a_failed_publish_leaves_no_version_behind(tmp_path):
    with pytest.raises(FileNotFoundError):
        publish_version(tmp_path, "reid", 1, tmp_path / "missing.onnx", "cfg")
    assert [p.name for p in (tmp_path / "reid").iterdir()] == ["config.pbtxt"]


def test_ibn_resnet50_exports_with_parity(tmp_path):
    torch.manual_seed(1)
    model = create_model(ModelConfig(backbone="resnet50", base_width=8, ibn=True), 4).eval()
    serving = ServingModel(model, l2_normalize=False)
    export_onnx(serving, tmp_path / "m.onnx", 64, 32, opset=18)
    images = (torch.rand(7, 3, 64, 32) * 255).to(torch.uint8)
    report = parity_report(serving, tmp_path / "m.onnx", images, [1, 7])
    assert report["max_abs_diff"] < 1e-3 and report["min_cosine"] > 0.9999
