import subprocess
import sys

import pytest

from reid_core.cli import main
from reid_core.config import ReidConfig
from reid_core.stages import STAGES, PortError, run_stage


def test_every_stage_is_a_subcommand_taking_its_declared_ports(capsys):
    for spec in STAGES.values():
        try:
            main([spec.name, "--help"])
        except SystemExit as stop:
            assert stop.code == 0
        text = capsys.readouterr().out
        for port in spec.inputs + spec.outputs:
            assert f"--{port.name}" in text


def test_a_bad_config_key_exits_2_naming_the_key(tmp_path, capsys):
    code = main(["data", "synth", str(tmp_path / "ds"), "--config", str(tmp_path / "missing.yaml")])
    assert code == 2 and "missing.yaml" in capsys.readouterr().err
    code = main(["data", "synth", str(tmp_path / "ds"), "--set", "synth.num_idz=3"])
    assert code == 2 and "synth.num_idz: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()


def test_an_unreachable_kubeflow_host_is_a_one_line_error(capsys):
    code = main(["pipeline", "submit", "--host", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and "unreachable" in err


def test_help_does_not_import_the_heavy_stack():
    probe = (
        "import sys; from reid_core.cli import main\n"
        "try: main(['--help'])\n"
        "except SystemExit: pass\n"
        "heavy = {'torch', 'mlflow', 'great_expectations', 'kfp'} & set(sys.modules)\n"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("[]")


def test_repeatable_ports_take_several_paths_in_either_spelling(capsys):
    for spec in STAGES.values():
        for port in spec.inputs + spec.outputs:
            if port.multiple:
                assert "repeatable" in port.help, f"{spec.name} --{port.name} must say so"
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "--dataset DATASET [DATASET ...]" in capsys.readouterr().out


def test_unequal_datasets_and_manifests_exit_2_and_write_nothing(tmp_path, capsys):
    outputs = ["--metrics", tmp_path / "m.json", "--features", tmp_path / "f"]
    outputs += ["--report", tmp_path / "r"]
    for given in (
        ["--dataset", "a", "--dataset", "b", "--manifest", "a.parquet"],
        ["--dataset", "a", "b", "--manifest", "a.parquet"],  # dvc.yaml's list expansion
    ):
        args = ["evaluate", *given, "--model", "ckpt", *map(str, outputs)]
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2 and "2 --dataset, 1 --manifest" in err and "pair up" in err
    assert list(tmp_path.iterdir()) == []


def test_a_single_port_refuses_several_paths():
    inputs = {"dataset": "a", "manifest": "m", "model": ["x", "y"]}
    outputs = {"metrics": "m.json", "features": "f", "report": "r"}
    with pytest.raises(PortError, match="'model' takes one path, got 2"):
        run_stage("evaluate", ReidConfig(), inputs, outputs)
