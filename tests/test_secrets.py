"""Secrets never leave the environment: credentials in a tracking URI work (as MLflow's user
and password) and appear nowhere else; tokens in any config URL are redacted wherever shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, _wait_healthy
from hypothesis import given
from hypothesis import strategies as st

from reid_core.config import load_config
from reid_core.redact import redact, split_credentials
from reid_core.tracking.runs import PASSWORD_ENV, USERNAME_ENV, configured_tracking_uri

TINY = ROOT / "configs" / "tiny.yaml"
PASSWORD = "Pw-" + os.urandom(6).hex()


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://admin:pw@host:5000/x", "http://host:5000/x"),
        ("see https://user@github.com/o/r.git and s3://b/p", "see https://github.com/o/r.git and s3://b/p"),
        ("https://h/w.pth?token=abc&x=1", "https://h/w.pth?token=***&x=1"),
        ("https://b.s3/k?X-Amz-Signature=ff00&X-Amz-Credential=AK%2F", "https://b.s3/k?X-Amz-Signature=***&X-Amz-Credential=***"),
        ("dvc:https://tok@git.example/r.git?path=d&rev=v1", "dvc:https://git.example/r.git?path=d&rev=v1"),
        ("no url here", "no url here"),
    ],
)  # fmt: skip
def test_redact_takes_credentials_out_of_urls_wherever_they_sit(text, shown):
    assert redact(text) == shown


@given(
    user=st.text("abcdefgh0123456789._-", min_size=1, max_size=10),
    password=st.text("ABCDEFGHabcdef0123456789!$()*+,;=._~-", min_size=6, max_size=16),
)
def test_no_password_survives_redaction(user, password):
    url = f"https://{user}:{password}@mlflow.example:443/path?access_token={password}"
    assert password not in redact(url)
    assert split_credentials(url) == ("https://mlflow.example:443/path?access_token=" + password,
                                      user, password)  # fmt: skip


def test_the_config_keeps_the_tracking_password_out_of_every_dump():
    tracking = f"tracking.tracking_uri=http://admin:{PASSWORD}@127.0.0.1:5000"
    config = load_config([], [tracking, f"train.model.pretrained=https://h/w.pth?token={PASSWORD}"])
    assert config.tracking.tracking_uri == "http://127.0.0.1:5000"
    assert config.tracking.credentials() == ("admin", PASSWORD)
    assert PASSWORD not in str(config.flat())  # what MLflow params get
    assert PASSWORD not in config.model_dump_json(include={"tracking"})
    assert config.train.model.pretrained.endswith(PASSWORD)  # still usable for the download


def test_a_tracking_uri_with_credentials_from_the_environment_is_cleaned(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://bob:{PASSWORD}@mlflow.example")
    monkeypatch.delenv(USERNAME_ENV, raising=False)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    assert configured_tracking_uri(load_config()) == "https://mlflow.example"
    assert os.environ["MLFLOW_TRACKING_URI"] == "https://mlflow.example"
    assert (os.environ[USERNAME_ENV], os.environ[PASSWORD_ENV]) == ("bob", PASSWORD)


def test_pipeline_parameters_never_hold_a_credential():
    from pipelines.training import default_config_yaml

    config = load_config([], ["train.model.pretrained=https://h/w.pth?token=" + PASSWORD])
    with pytest.raises(
        ValueError, match=r"train.model.pretrained holds a credential .*token=\*\*\*"
    ):
        default_config_yaml(config)
    clean = load_config([], [f"tracking.tracking_uri=http://admin:{PASSWORD}@h:5000"])
    assert PASSWORD not in default_config_yaml(clean)


@pytest.fixture
def auth_server(tmp_path, free_port, start_process, venv_env) -> str:
    """A real `mlflow server` with MLflow's basic-auth app on 127.0.0.1; admin / PASSWORD."""
    ini = tmp_path / "auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp_path / 'auth.db'}\n"
        f"admin_username = admin\nadmin_password = {PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--app-name", "basic-auth",
           "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
           "--artifacts-destination", (tmp_path / "artifacts").as_uri(),
           "--host", "127.0.0.1", "--port", str(free_port), "--workers", "1"]  # fmt: skip
    log = tmp_path / "auth-server.log"
    env = venv_env(
        MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_FLASK_SERVER_SECRET_KEY=os.urandom(16).hex()
    )
    proc = start_process(cmd, log, env=env)
    url = f"http://127.0.0.1:{free_port}"
    _wait_healthy(url, proc, log)
    return url


def test_credentials_in_the_tracking_uri_log_in_and_are_shown_nowhere(tmp_path, auth_server,
                                                                       venv_env):  # fmt: skip
    import mlflow

    env = venv_env(GX_ANALYTICS_ENABLED="false", REID_PIPELINE_RUN_ID="secret-test")
    env.pop(USERNAME_ENV, None)
    env.pop(PASSWORD_ENV, None)
    host = auth_server.removeprefix("http://")

    def reid(*args: str, password: str = PASSWORD) -> subprocess.CompletedProcess:
        uri = f"tracking.tracking_uri=http://admin:{password}@{host}"
        return subprocess.run([sys.executable, "-m", "reid_core.cli", *args, "--config", str(TINY),
                               "--set", uri], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip

    assert reid("data", "synth", "ds").returncode == 0
    done = reid("preprocess", "--dataset", "ds", "--manifest", "m.parquet", "--report", "r.json")
    assert done.returncode == 0, done.stderr
    summary = reid("summary", "--reports", str(tmp_path))  # no reports: a one-line error
    wrong = reid("preprocess", "--dataset", "ds", "--manifest", "m.parquet", "--report",
                 "r.json", password="wrong-" + PASSWORD)  # fmt: skip
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
    for proc in (done, summary, wrong):
        assert PASSWORD not in proc.stdout + proc.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".html", ".yaml", ".txt", ".md"):
            assert PASSWORD not in path.read_text(errors="replace"), path

    os.environ[USERNAME_ENV], os.environ[PASSWORD_ENV] = "admin", PASSWORD
    try:
        client = mlflow.MlflowClient(tracking_uri=auth_server)
        runs = client.search_runs([client.get_experiment_by_name("reidflow").experiment_id])
        assert runs, "the stage logged in with the URI's credentials and logged its run"
        for run in runs:
            logged = str(run.data.params) + str(run.data.tags)
            assert PASSWORD not in logged
            if "tracking.tracking_uri" in run.data.params:
                assert run.data.params["tracking.tracking_uri"] == auth_server
    finally:
        del os.environ[USERNAME_ENV], os.environ[PASSWORD_ENV]


def test_a_checkpoint_records_its_weights_url_without_the_token(tmp_path):
    import torch

    from reid_core.config import ModelConfig
    from reid_core.engine.checkpoint import MODEL_YAML, load_checkpoint, save_checkpoint
    from reid_core.modeling import create_model

    url = "https://weights.example/resnet18.pt?token=s3cr3t-weights-token"
    torch.manual_seed(0)
    model = create_model(
        ModelConfig(backbone="resnet18", base_width=8, pretrained=url), 4, pretrained=False
    )
    save_checkpoint(tmp_path / "ckpt", model, {"height": 64, "width": 32})
    assert "s3cr3t" not in (tmp_path / "ckpt" / MODEL_YAML).read_text()
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config.pretrained == "https://weights.example/resnet18.pt?token=***"
