"""Bad files and values end in one `error:` line naming the file and the problem, with exit code
2 (bad input) or 1 (a failed run), never a traceback unless `--debug` asks for one."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from reid_core.cli import main
from reid_core.config import ModelConfig
from reid_core.data.errors import DatasetError
from reid_core.data.images import MAX_IMAGE_PIXELS, decode_resized, open_image
from reid_core.engine.checkpoint import (
    META,
    MODEL_YAML,
    WEIGHTS,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from reid_core.json_files import JsonFileError, Number, read_json_object
from reid_core.modeling import create_model
from reid_core.tracking.registry import checkpoint_folder


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "model"
    torch.manual_seed(0)
    model = create_model(ModelConfig(backbone="resnet18", base_width=8), 4)
    save_checkpoint(folder, model, {"height": 64, "width": 32})
    return folder


def _copy(checkpoint, tmp_path):
    import shutil

    target = tmp_path / "model"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(checkpoint, target)
    return target


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (WEIGHTS, b"\x00" * 7, "not readable safetensors"),
        (MODEL_YAML, b"model: !!python/object/apply:os.system [ls]\nnum_classes: 4\n",
         "not plain YAML"),
        (MODEL_YAML, b"model: {backbone: resnet18}\n", "'model' and 'num_classes'"),
        (MODEL_YAML, b"model: {backbone: nosuchnet}\nnum_classes: 4\n", "model: backbone"),
        (MODEL_YAML, b"model: {backbone: resnet18}\nnum_classes: 100000000000\n",
         "num_classes 100000000000 is outside"),
        (MODEL_YAML, b"model: {backbone: resnet18, base_width: 16}\nnum_classes: 4\n",
         "the weights do not fit the model"),
        (META, b"{\"width\": 32}", "'height' must be an image size"),
        (META, b"[1, 2]", "expected a JSON object"),
        (META, b"{not json", "not JSON"),
    ],
    ids=["truncated-weights", "yaml-tag", "missing-key", "unknown-backbone", "absurd-classes",
         "wrong-shape", "meta-key", "meta-type", "meta-json"],
)  # fmt: skip
def test_a_damaged_checkpoint_is_refused_naming_the_file(checkpoint, tmp_path, name, content,
                                                         message):  # fmt: skip
    folder = _copy(checkpoint, tmp_path)
    (folder / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as caught:
        load_checkpoint(folder)
    assert str(folder) in str(caught.value)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from([WEIGHTS, MODEL_YAML, META]),
    cut=st.floats(0, 1, allow_subnormal=False),
    noise=st.binary(max_size=16),
)
def test_any_corruption_of_a_checkpoint_file_is_a_checkpoint_error(checkpoint, tmp_path, name,
                                                                   cut, noise):  # fmt: skip
    folder = _copy(checkpoint, tmp_path)
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: int(len(data) * cut)] + noise)
    try:
        load_checkpoint(folder)
    except CheckpointError as err:
        assert name in str(err)


def test_the_cli_turns_a_damaged_checkpoint_into_exit_2_and_one_line(checkpoint, tmp_path,
                                                                     capsys):  # fmt: skip
    folder = _copy(checkpoint, tmp_path)
    (folder / WEIGHTS).write_bytes(b"garbage")
    code = main(["export", "--dataset", str(tmp_path), "--manifest", str(tmp_path / "m.parquet"),
                 "--model", str(folder), "--onnx", str(tmp_path / "onnx")])  # fmt: skip
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2
    assert not (tmp_path / "onnx").exists()
    assert "m.parquet" in line or WEIGHTS in line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "synth", "OUT", "--num-ids", "-3"], "num_ids"),
        (["data", "synth", "OUT", "--set", "evaluate.fars=[0.001, 1.5]"], "evaluate.fars.1"),
        (["data", "synth", "OUT", "--set", "evaluate.fars=[]"], "evaluate.fars"),
    ],
    ids=["negative-ids", "far-above-1", "no-fars"],
)
def test_bad_values_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback_instead(tmp_path):
    with pytest.raises(ValueError, match="num_ids"):
        main(["data", "synth", str(tmp_path / "out"), "--num-ids", "-3", "--debug"])


def test_summary_of_a_folder_without_reports_says_so(tmp_path, capsys):
    assert main(["summary", "--reports", str(tmp_path)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"{tmp_path}: no pipeline reports here" in line
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "teacher.json").write_text('{"mAP": 0.5}')
    assert main(["summary", "--reports", str(tmp_path)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "teacher.json: has no format_version: written by an older reidflow" in line
    (tmp_path / "eval" / "teacher.json").write_text('{"format_version": 1, "mAP": 0.5}')
    assert main(["summary", "--reports", str(tmp_path)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "teacher.json: lacks 'model_stage'" in line and "'rank1', 'mINP'; is it" in line


def test_a_failure_no_reidflow_code_raised_names_its_type_and_points_to_debug():
    from reid_core.cli import _message

    assert _message(ZeroDivisionError("division by zero")) == (
        "ZeroDivisionError: division by zero (rerun with --debug for the traceback)"
    )
    assert _message(ValueError("a.json: lacks 'x'")) == "a.json: lacks 'x'"
    assert _message(KeyError("x")).startswith("KeyError: 'x' (rerun with --debug")


def _bomb(path) -> None:
    """A small file that claims more pixels than reidflow decodes."""
    side = int(MAX_IMAGE_PIXELS**0.5) + 1
    Image.new("1", (side, side)).save(path, format="PNG")


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    _bomb(bomb)
    assert bomb.stat().st_size < 2_000_000
    with pytest.raises(DatasetError, match="bomb.png .* more than the"):
        decode_resized(bomb, 64, 32)
    with pytest.raises(DatasetError, match="bomb.png"), open_image(bomb):
        pass


def test_a_truncated_image_is_a_dataset_error_naming_it(tmp_path):
    image = tmp_path / "cut.jpg"
    Image.new("RGB", (64, 128), "red").save(image, format="JPEG")
    image.write_bytes(image.read_bytes()[:200])
    with pytest.raises(DatasetError, match="cut.jpg"):
        decode_resized(image, 64, 32)


EVALUATION = {"eval_set_hash": str, "mAP": Number, "rank1": Number, "mINP": Number}


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["eval_set_hash", "mAP", "rank1", "mINP", "other"]),
        st.one_of(st.none(), st.booleans(), st.integers(),
                  st.floats(allow_nan=False, allow_subnormal=False), st.text(max_size=5),
                  st.lists(st.integers(), max_size=2)),
    )
)  # fmt: skip
def test_an_evaluation_file_without_its_keys_and_types_is_refused_by_name(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("eval") / "evaluation.json"
    path.write_text(json.dumps(data))
    complete = all(
        key in data and not isinstance(data[key], bool) and isinstance(data[key], kind)
        for key, kind in EVALUATION.items()
    )
    if complete:
        assert read_json_object(path, EVALUATION, "reid evaluate") == data
    else:
        with pytest.raises(JsonFileError, match="evaluation.json"):
            read_json_object(path, EVALUATION, "reid evaluate")


def test_model_uris_with_parent_segments_are_refused():
    for uri in ("runs:/abc/../../etc/passwd", "models:/name/../1"):
        with pytest.raises(ValueError, match="'..' is not allowed"):
            checkpoint_folder(uri)


def test_a_base_that_is_not_a_config_file_is_refused_without_echoing_it(tmp_path, capsys):
    secret = tmp_path / "credentials"
    secret.write_text("[default]\naws_secret_access_key = s3cr3tvalue: x: y\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"_base_: {secret}\n")
    assert main(["data", "synth", str(tmp_path / "out"), "--config", str(config)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "credentials" in line and "s3cr3tvalue" not in line
    secret.write_text("just a line of text\n")
    assert main(["data", "synth", str(tmp_path / "out"), "--config", str(config)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "not a config file" in line and "just a line" not in line


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("export.parity_batch_sizes=[]", "export.parity_batch_sizes"),
        ("export.parity_batch_sizes=[0, 7]", "export.parity_batch_sizes.0"),
        ("export.parity_batch_sizes=[-3]", "export.parity_batch_sizes.0"),
        ("export.parity_batch_sizes=[7, 7]", "batch sizes repeat"),
        ("promote.model_name='reid\"student'", "promote.model_name"),
        ("promote.model_name=../escape", "promote.model_name"),
        ("export.max_abs_diff=.inf", "export.max_abs_diff"),
        ("export.min_cosine=0.5", "export.min_cosine"),
        ("promote.max_rank1_drop=.nan", "promote.max_rank1_drop"),
        ("triton.repository=''", "triton.repository"),
        ("triton.repository=s3://", "triton.repository"),
    ],
    ids=[
        "empty-gate",
        "zero-batch",
        "negative-batch",
        "repeated-batch",
        "quote",
        "traversal",
        "open-tolerance",
        "loose-cosine",
        "nan-policy",
        "no-repository",
        "no-bucket",
    ],
)
def test_values_that_reach_gates_and_files_are_refused_naming_the_key(tmp_path, capsys,
                                                                      override, key):  # fmt: skip
    assert main(["data", "synth", str(tmp_path / "out"), "--set", override]) == 2
    assert key in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_triton_refuses_a_model_name_that_could_break_its_config():
    from reid_core.config import TritonConfig
    from reid_core.serving.triton import triton_config

    with pytest.raises(ValueError, match="not a model name Triton can serve"):
        triton_config('a"b', 128, 64, 512, TritonConfig())


def test_a_parity_check_without_batches_is_refused():
    from reid_core.export.onnx import parity_figures

    with pytest.raises(ValueError, match="at least one batch"):
        parity_figures(lambda batch: batch, torch.nn.Identity(), [])


@pytest.mark.parametrize(
    "override",
    ["data.height=100000", "data.width=0", "synth.num_ids=10000000", "synth.images_per_id=5000",
     "train.model.embedding_dim=1000000", "train.model.base_width=100000"],
)  # fmt: skip
def test_sizes_that_would_allocate_absurd_memory_are_refused_up_front(tmp_path, capsys, override):
    assert main(["data", "synth", str(tmp_path / "out"), "--set", override]) == 2
    assert override.split("=")[0] in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_ctrl_c_ends_with_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import reid_core.data.synth

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(reid_core.data.synth, "generate", interrupted)
    assert main(["data", "synth", str(tmp_path / "out")]) == 130
    assert _one_error_line(capsys.readouterr().err) == "error: interrupted"
