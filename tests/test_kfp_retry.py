"""A training task killed in the middle of an epoch under kfp.local is retried, as the compiled
pipeline's retry policy says, and the retry resumes from the saved state to the weights of a run
that was never interrupted."""

# No `from __future__ import annotations`: KFP reads the pipeline's annotations as types.

import signal
import threading
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from kfp import dsl, local
from safetensors.torch import load_file

from components import stages as c
from pipelines.placement import place
from reid_core.config import KubeflowConfig
from reid_core.engine.training_state import STATE_FILE, load_state

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
KILL_AT_ITERATION = 5  # of 24: mid-run, and mid-epoch (an epoch of the tiny dataset is 2)


def _fit_pipeline(settings: KubeflowConfig):
    """fetch → preprocess → train, each task placed as the training pipeline places it."""

    @dsl.pipeline(name="reid-fit")
    def fit(config_yaml: str) -> dsl.Model:
        run = {
            "config_yaml": config_yaml,
            "pipeline_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            "mlflow_tracking_uri": "",
            "config_overrides": [],
        }
        fetched = place(
            c.fetch(**run, name="source", reference="synth:day?seed=0"), "fetch", settings
        )
        prepared = place(
            c.preprocess(
                **{**run, "config_overrides": ["data.domain=source"]},
                dataset=fetched.outputs["dataset"],
            ),
            "preprocess",
            settings,
        )
        trained = place(
            c.train(
                **run,
                dataset=fetched.outputs["dataset"],
                manifest=prepared.outputs["manifest"],
            ),
            "train",
            settings,
        )
        return trained.outputs["checkpoint"]

    return fit


def _runs_train(process: psutil.Process) -> bool:
    try:
        args = process.cmdline()
    except psutil.Error:
        return False
    flag = "--function_to_execute"  # the task's shell has it too, as its own arguments
    return (
        "kfp.dsl.executor_main" in args
        and flag in args
        and args[args.index(flag) + 1 : args.index(flag) + 2] == ["train"]
    )


def _train_task_process() -> psutil.Process | None:
    """The running train task's interpreter among this test's child processes (not the shell
    that starts it, nor a data loader worker forked from it with the same command line)."""
    for process in psutil.Process().children(recursive=True):
        if _runs_train(process) and not _runs_train(process.parent()):
            return process
    return None


def _kill_train_mid_epoch(state_root: Path, done: threading.Event, killed: list[int]) -> None:
    while not done.wait(0.05):
        for state_file in state_root.glob(f"*/train-*/{STATE_FILE}"):
            try:
                iteration = load_state(state_file.parent)["iter"]
            except Exception:  # written as we read: look again
                continue
            process = _train_task_process()
            if iteration >= KILL_AT_ITERATION and process is not None:
                process.send_signal(signal.SIGKILL)
                killed.append(iteration)
                return


def test_a_killed_training_task_is_retried_and_resumes_to_the_uninterrupted_weights(
    tmp_path, monkeypatch, capfd
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    config["train"]["solver"].update(epochs=12, checkpoint_every=1)
    config_yaml = yaml.safe_dump(config)
    fit = _fit_pipeline(KubeflowConfig(retries=1, retry_backoff_s=0))
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "kfp"),
        raise_on_error=True,
    )

    uninterrupted = fit(config_yaml=config_yaml).output
    assert "resuming from iteration" not in capfd.readouterr().out
    killed: list[int] = []
    done = threading.Event()
    watcher = threading.Thread(
        target=_kill_train_mid_epoch, args=(tmp_path / ".reidflow" / "state", done, killed)
    )
    watcher.start()
    try:
        retried = fit(config_yaml=config_yaml).output
    finally:
        done.set()
        watcher.join()

    assert killed and killed[0] >= KILL_AT_ITERATION, "the train task was killed mid-run"
    assert "resuming from iteration" in capfd.readouterr().out, "the retry resumed"
    expected = load_file(str(Path(uninterrupted.path) / "model.safetensors"))
    got = load_file(str(Path(retried.path) / "model.safetensors"))
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=0.0, rtol=0.0, msg=key)
