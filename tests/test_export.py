import contextlib
import io
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

import reid_core
from reid_core.artifacts import ExportRecord
from reid_core.config import ModelConfig, load_config
from reid_core.data.manifest import build_manifest, write_manifest
from reid_core.engine.checkpoint import save_checkpoint
from reid_core.export import tensorrt
from reid_core.export.onnx import ServingModel, export_onnx, parity_report
from reid_core.modeling import create_model
from reid_core.stages import export as export_stage
from reid_core.stages import run_stage
from tests.fixtures_data import make_market_like


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


def test_onnx_file_names_no_source_path_so_a_checkout_anywhere_writes_the_same_bytes(exported):
    _, path = exported
    source = Path(reid_core.__file__).resolve().parent
    assert str(source).encode() not in path.read_bytes()
    for node in onnx.load(str(path)).graph.node:
        assert "pkg.torch.onnx.stack_trace" not in {p.key for p in node.metadata_props}


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


def test_ibn_resnet50_exports_with_parity(tmp_path):
    torch.manual_seed(1)
    model = create_model(ModelConfig(backbone="resnet50", base_width=8, ibn=True), 4).eval()
    serving = ServingModel(model, l2_normalize=False)
    export_onnx(serving, tmp_path / "m.onnx", 64, 32, opset=18)
    images = (torch.rand(7, 3, 64, 32) * 255).to(torch.uint8)
    report = parity_report(serving, tmp_path / "m.onnx", images, [1, 7])
    assert report["max_abs_diff"] < 1e-3 and report["min_cosine"] > 0.9999


def test_fp16_graph_keeps_a_float32_interface_at_half_the_size(exported, tmp_path):
    serving, fp32_path = exported
    path = tmp_path / "fp16.onnx"
    export_onnx(ServingModel(serving.model, l2_normalize=True, fp16=True), path, 64, 32, 18)
    graph = onnx.load(str(path)).graph
    (inp,), (out,) = graph.input, graph.output
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == TensorProto.FLOAT
    sizes = [(t.data_type, numpy_helper.to_array(t).size) for t in graph.initializer]
    half = sum(n for dtype, n in sizes if dtype == TensorProto.FLOAT16)
    assert half > 0.95 * sum(n for _, n in sizes)  # the backbone's weights: nearly all
    assert path.stat().st_size < 0.6 * fp32_path.stat().st_size
    # images in 0–255; the reference is the fp32 PyTorch model
    images = (torch.rand(5, 3, 64, 32) * 255).to(torch.uint8)
    fp16 = parity_report(serving, path, images, [1, 7, 64])
    fp32 = parity_report(serving, fp32_path, images, [1, 7, 64])
    assert fp16["max_abs_diff"] < 5e-2 and fp16["min_cosine"] > 0.999
    assert fp16["max_abs_diff"] > 10 * fp32["max_abs_diff"]  # its weights really are fp16


def test_the_fp16_copy_leaves_the_reference_model_in_fp32(exported):
    serving, _ = exported
    ServingModel(serving.model, l2_normalize=True, fp16=True)
    assert {p.dtype for p in serving.model.parameters()} == {torch.float32}


def test_tensorrt_is_unavailable_without_a_cuda_gpu_or_the_package(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tensorrt.available() == "no CUDA GPU"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as when not installed
    assert tensorrt.available() == "tensorrt not installed"


# The export stage itself, as the CLI runs it, on a tiny Market-1501-like dataset (3 query
# images: the parity batches of 7 and 64 repeat them) and an untrained tiny checkpoint.


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_stage")
    dataset = make_market_like(root / "ds")
    write_manifest(build_manifest(dataset, "market1501"), root / "m.parquet", {})
    torch.manual_seed(0)
    model = create_model(ModelConfig(base_width=8), 4)
    save_checkpoint(root / "model", model, {"height": 64, "width": 32})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        # registered so that undoing restores it: mlflow.set_registry_uri writes it
        mp.setenv("MLFLOW_REGISTRY_URI", os.environ.get("MLFLOW_REGISTRY_URI", ""))
        mp.delenv("MLFLOW_REGISTRY_URI")
        mp.setenv("REID_PIPELINE_RUN_ID", "export-test")
        mp.setenv("GX_ANALYTICS_ENABLED", "false")
        inputs = {"dataset": dataset, "manifest": root / "m.parquet", "model": root / "model"}
        try:
            yield root, inputs
        finally:  # the stage ran in this process and set mlflow's global URIs: later tests
            import mlflow  # would otherwise reach this module's store

            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)


def run_export(stage_inputs, dest: str, *overrides: str) -> dict:
    root, inputs = stage_inputs
    config = load_config([], [f"tracking.workspace={root}", *overrides])
    return run_stage("export", config, inputs, {"onnx": root / dest})


@pytest.fixture(scope="module")
def fp16_export(stage_inputs):
    """The stage with `export.fp16` on (and TensorRT asked for, as by default): its folder,
    what it printed on stderr, and the MLflow store it logged to."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        run_export(stage_inputs, "onnx16", "export.fp16=true")
    return stage_inputs[0] / "onnx16", stderr.getvalue()


def test_fp16_export_stage_records_precision_tolerances_and_each_batch(fp16_export):
    folder, _ = fp16_export
    parity = ExportRecord.load(folder)
    assert parity.fp16 is True and parity.parity_passed is True
    assert parity.tolerance_max_abs_diff == 5e-2 and parity.tolerance_min_cosine == 0.999
    for size in (1, 7, 64):
        assert parity.figures[f"max_abs_diff_batch{size}"] <= parity.max_abs_diff < 5e-2
        assert parity.figures[f"min_cosine_batch{size}"] >= parity.min_cosine > 0.999
    assert parity.onnx_bytes == (folder / "model.onnx").stat().st_size
    (inp,) = onnx.load(str(folder / "model.onnx")).graph.input
    assert inp.name == "images" and inp.type.tensor_type.elem_type == TensorProto.FLOAT


@pytest.mark.skipif(tensorrt.available() is None, reason="TensorRT can run here")
def test_tensorrt_skip_is_said_on_stderr_and_recorded(fp16_export, stage_inputs):
    import mlflow

    folder, stderr = fp16_export
    reason = tensorrt.available()
    assert f"TensorRT engine skipped: {reason}" in stderr
    assert ExportRecord.load(folder).tensorrt == f"skipped: {reason}"
    assert not (folder / "model.plan").exists()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{stage_inputs[0] / 'mlflow.db'}")
    (run,) = client.search_runs(
        [client.get_experiment_by_name("reidflow").experiment_id],
        filter_string="tags.`reid.stage` = 'export'",
    )
    assert run.data.tags["reid.tensorrt"] == f"skipped: {reason}"


def _perturbed_export(serving, dest, height, width, opset):
    """Export, then change one weight of the graph: ONNX no longer computes the model."""
    export_onnx(serving, dest, height, width, opset)
    model = onnx.load(str(dest))
    weight = next(t for t in model.graph.initializer if len(t.dims) == 4)
    array = numpy_helper.to_array(weight).copy()
    array.flat[0] += 5.0
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    onnx.save(model, str(dest))


def _assert_nothing_written(root, dest):
    assert not (root / dest).exists()
    assert not [p for p in root.iterdir() if p.name.startswith(f".{dest}.")]  # no temporaries


def test_a_graph_that_differs_fails_the_gate_and_leaves_no_output(stage_inputs, monkeypatch):
    root, _ = stage_inputs
    (root / "bad").mkdir()
    (root / "bad" / "model.onnx").write_text("stale")  # a previous run's output goes too
    monkeypatch.setattr(export_stage, "export_onnx", _perturbed_export)
    with pytest.raises(export_stage.ParityError, match="ONNX Runtime differs from PyTorch"):
        run_export(stage_inputs, "bad", "export.tensorrt=false")
    _assert_nothing_written(root, "bad")


def test_the_fp16_gate_applies_the_fp16_tolerances(stage_inputs):
    root, _ = stage_inputs
    with pytest.raises(export_stage.ParityError, match=r"fp16 graph.*allowed 1e-09"):
        run_export(
            stage_inputs, "tight", "export.fp16=true", "export.fp16_max_abs_diff=1e-9",
            "export.tensorrt=false",
        )  # fmt: skip
    _assert_nothing_written(root, "tight")
