"""A registered version carries the `onnx`, `pytorch` (torch.export, no pickles) and
`python_function` (ONNX Runtime) flavours, and each computes the served embedding."""

import json
import os
import zipfile

import mlflow
import numpy as np
import onnxruntime as ort
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from reid_core.config import ModelConfig
from reid_core.engine.checkpoint import load_checkpoint, save_checkpoint
from reid_core.export.onnx import ServingModel, export_onnx
from reid_core.modeling import create_model
from reid_core.tracking import registry

HEIGHT, WIDTH = 64, 32
NAME = "reid-flavours"
URI = f"models:/{NAME}/1"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tiny checkpoint and its ONNX export, registered once as version 1 in a sqlite store
    under tmp; MLflow's global URIs and the registry env var are restored afterwards."""
    root = tmp_path_factory.mktemp("registry")
    torch.manual_seed(0)
    model = create_model(ModelConfig(base_width=8), 4).eval()
    save_checkpoint(root / "model", model, {"height": HEIGHT, "width": WIDTH})
    export_onnx(ServingModel(model, l2_normalize=True), root / "model.onnx", HEIGHT, WIDTH, 18)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        # registered so that undoing restores it: mlflow.set_registry_uri writes it
        mp.setenv("MLFLOW_REGISTRY_URI", os.environ.get("MLFLOW_REGISTRY_URI", ""))
        mp.delenv("MLFLOW_REGISTRY_URI")
        mp.chdir(root)  # anything MLflow writes relative to the cwd stays under tmp
        try:
            experiment = mlflow.create_experiment(
                "registry-test", artifact_location=(root / "artifacts").as_uri()
            )
            with mlflow.start_run(experiment_id=experiment):
                version = registry.register_model(
                    root / "model.onnx",
                    load_checkpoint(root / "model")[0],
                    NAME,
                    {"reid.x": "1"},
                    l2_normalize=True,
                )
            assert version == 1
            yield root
        finally:  # loading `models:/` URIs sets mlflow's global URIs: later tests would
            mlflow.set_tracking_uri(None)  # otherwise reach this module's store
            mlflow.set_registry_uri(None)


def onnx_features(root, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["features"], {"images": images})[0]


def batch(n: int) -> np.ndarray:
    return np.random.default_rng(n).uniform(0, 255, (n, 3, HEIGHT, WIDTH)).astype(np.float32)


def test_one_model_lists_all_three_flavours_with_signature_and_example(store):
    local = mlflow.artifacts.download_artifacts(URI, dst_path=str(store / "downloaded"))
    mlmodel = Model.load(local)
    assert {"onnx", "pytorch", "python_function"} <= set(mlmodel.flavors)
    assert mlmodel.flavors["python_function"]["loader_module"] == "mlflow.onnx"
    (inp,) = mlmodel.signature.inputs.inputs
    assert inp.name == "images" and inp.shape == (-1, 3, HEIGHT, WIDTH)
    assert inp.type == np.dtype(np.float32)
    (out,) = mlmodel.signature.outputs.inputs
    assert out.name == "features" and out.shape == (-1, 64)
    example = mlmodel.load_input_example(local)
    assert example["images"].shape == (2, 3, HEIGHT, WIDTH)
    assert mlflow.onnx.load_model(URI).graph.input[0].name == "images"
    tags = mlflow.MlflowClient().get_model_version(NAME, "1").tags
    assert tags["reid.x"] == "1"


def test_pt2_archive_holds_no_pickled_weights_or_constants(store):
    local = mlflow.artifacts.download_artifacts(URI, dst_path=str(store / "archive"))
    with zipfile.ZipFile(os.path.join(local, "data", "model.pt2")) as archive:
        configs = [n for n in archive.namelist() if n.endswith("_config.json")]
        assert configs
        for name in configs:
            entries = json.loads(archive.read(name))["config"].values()
            assert not any(entry["use_pickle"] for entry in entries), name
    assert not os.path.exists(os.path.join(local, "data", "model.pth"))


@pytest.mark.parametrize("n", [1, 5])
def test_pytorch_flavour_matches_onnx_runtime(store, n):
    images = batch(n)
    expected = onnx_features(store, images)
    previous = os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
    safe = registry.load_pytorch_model(URI)
    assert os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION") == previous
    with torch.inference_mode():
        got = safe(torch.from_numpy(images)).numpy()
        plain = mlflow.pytorch.load_model(URI)(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(plain, expected, atol=1e-4)


def test_pyfunc_is_onnx_runtime(store):
    images = batch(3)
    got = mlflow.pyfunc.load_model(URI).predict({"images": images})["features"]
    np.testing.assert_allclose(got, onnx_features(store, images), atol=1e-6)


def test_safe_loader_refuses_pickled_pytorch_models(tmp_path):
    path = tmp_path / "pickled"
    mlflow.pytorch.save_model(
        torch.nn.Linear(2, 2), str(path), serialization_format="pickle", pip_requirements=[]
    )
    with pytest.raises(MlflowException, match="pickle is disallowed"):
        registry.load_pytorch_model(str(path))


def test_checkpoint_that_computes_another_function_is_refused(store):
    with pytest.raises(ValueError, match="differs from the ONNX model"):
        model, _ = load_checkpoint(store / "model")
        registry.register_model(store / "model.onnx", model, NAME, {}, l2_normalize=False)
    assert len(mlflow.MlflowClient().search_model_versions(f"name='{NAME}'")) == 1
