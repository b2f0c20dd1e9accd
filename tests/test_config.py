from pathlib import Path

import pytest

from reid_core.config import ConfigError, ReidConfig, config_from_dict, load_config, parse_override


def test_defaults_validate_and_flatten_to_dotted_keys():
    config = ReidConfig()
    flat = config.flat()
    assert flat["train.solver.lr"] == config.train.solver.lr
    assert "promote.model_name" in flat


def test_every_bad_key_is_reported_by_its_dotted_name():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"train": {"solver": {"lrr": 1, "epochs": "many"}}, "nope": 1})
    message = str(err.value)
    assert "train.solver.lrr: unknown key" in message
    assert "train.solver.epochs" in message
    assert "nope: unknown key" in message


def test_files_merge_in_order_and_overrides_win(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("train:\n  solver:\n    lr: 0.1\n    epochs: 3\n")
    b.write_text("train:\n  solver:\n    lr: 0.2\n")
    config = load_config([a, b], ["train.solver.epochs=5", "evaluate.metric=euclidean"])
    assert config.train.solver.lr == 0.2
    assert config.train.solver.epochs == 5
    assert config.evaluate.metric == "euclidean"


def test_override_values_are_parsed_as_yaml():
    assert parse_override("export.parity_batch_sizes=[1, 2]") == (
        "export.parity_batch_sizes",
        [1, 2],
    )
    assert parse_override("train.model.ibn=true") == ("train.model.ibn", True)
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("train.model.ibn")


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "absent.yaml"])


def test_digest_changes_with_any_value_and_only_then():
    assert ReidConfig().digest() == ReidConfig().digest()
    changed = load_config([], ["train.solver.lr=0.001"])
    assert changed.digest() != ReidConfig().digest()


def test_params_yaml_and_presets_are_valid():
    root = Path(__file__).parents[1]
    load_config([root / "params.yaml"])
    load_config([root / "params.yaml", root / "configs" / "tiny.yaml"])


def test_map_keys_with_dots_in_a_config_file_stay_whole(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(
        "kubeflow:\n  accelerator:\n    type: nvidia.com/gpu\n"
        "    node_selector: {nvidia.com/gpu.product: NVIDIA-H200}\n"
    )
    later = tmp_path / "later.yaml"
    later.write_text("kubeflow: {accelerator: {node_selector: {pool.example/tier: gpu}}}\n")
    config = load_config([path, later], ["kubeflow.accelerator.count=2"])
    assert config.kubeflow.accelerator.node_selector == {
        "nvidia.com/gpu.product": "NVIDIA-H200",
        "pool.example/tier": "gpu",
    }
    assert config.kubeflow.accelerator.count == 2


@pytest.mark.parametrize(
    ("evaluate", "message"),
    [
        ({"dsr": True}, "evaluate.dsr needs exactly one of evaluate.dsr_weight"),
        ({"dsr": True, "dsr_weight": 0.3, "dsr_validation": "val"}, "needs exactly one of"),
        ({"dsr_weight": 0.3}, "set evaluate.dsr: true as well"),
        ({"dsr_validation": "val"}, "set evaluate.dsr: true as well"),
    ],
    ids=["no-weight", "both", "weight-without-dsr", "validation-without-dsr"],
)
def test_dsr_takes_its_weight_from_exactly_one_place(evaluate, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"evaluate": evaluate})
    assert config_from_dict({"evaluate": {"dsr": True, "dsr_weight": 0.3}}).evaluate.dsr
