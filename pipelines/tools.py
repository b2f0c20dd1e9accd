"""Compile, run locally, or submit the training pipeline (`reid pipeline compile|run-local|submit`).

- compile: writes pipelines/training.yaml; the same code and params.yaml give identical bytes,
  so a test can tell when the checked-in file is stale.
- run-local: executes every task with `kfp.local`, as a subprocess of this interpreter or, with
  the docker runner, in a container of the project image (as in a pod); outputs go under
  `<workdir>/kfp_local/`.
- submit: compiles afresh (honouring REID_IMAGE) and starts a run on a Kubeflow Pipelines API.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from reid_core.atomic import atomic_output
from reid_core.config import DatasetsConfig, ReidConfig
from reid_core.stages.kfp_glue import parse_config_yaml
from reid_core.tracking.runs import configured_tracking_uri

PIPELINE_FILE = Path(__file__).resolve().parent / "training.yaml"
_REACH_TIMEOUT_S = 10.0


def compile_pipeline(out: Path = PIPELINE_FILE, config: ReidConfig | None = None) -> Path:
    """Compile the training pipeline to `out` (YAML) from `config` (default: params.yaml): its
    parameters' defaults, and its `kubeflow` section's resources, accelerators and Secret."""
    from kfp import compiler

    from pipelines.training import build_pipeline, default_config_yaml

    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        # KFP picks the format from the suffix, so compile to a .yaml name, then move in.
        staged = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(
            build_pipeline(config),
            str(staged),
            pipeline_parameters={"config_yaml": default_config_yaml(config)},
        )
        with atomic_output(out) as dest:
            dest.write_bytes(staged.read_bytes())
    return out


def _config_text(config_yaml: str | None) -> str:
    """The config to run with, validated here so a bad key (or a secret) fails before any task
    starts."""
    from pipelines.training import default_config_yaml, refuse_secrets

    if config_yaml is None:
        return default_config_yaml()
    refuse_secrets(parse_config_yaml(config_yaml))
    return config_yaml


def pipeline_arguments(config_yaml: str, parameters: Mapping[str, str] = {}) -> dict[str, Any]:  # noqa: B006
    """The run's arguments: the config, the parameters whose defaults follow it (adaptation
    rounds, datasets) and `parameters` (`--param name=value` strings), typed as the pipeline
    declares them. Raises ValueError naming an unknown parameter or a bad value."""
    from pipelines.training import reid_training_pipeline

    config = parse_config_yaml(config_yaml)
    arguments: dict[str, Any] = {
        "config_yaml": config_yaml,
        "adapt_rounds": config.adapt.rounds,
        "source_dataset": config.datasets.source,
        "target_dataset": config.datasets.target,
    }
    declared = reid_training_pipeline.component_spec.inputs or {}
    for name, text in parameters.items():
        if name not in declared or name == "config_yaml":
            known = ", ".join(sorted(set(declared) - {"config_yaml"}))
            raise ValueError(
                f"unknown pipeline parameter {name!r} (known: {known}; the config goes in "
                "with --config/--set)"
            )
        arguments[name] = _typed(name, declared[name].type, text)
    # Dataset references are checked (as the config checks them) and put in their canonical
    # spelling here, so a bad one fails before any task starts.
    try:
        datasets = DatasetsConfig(
            source=arguments["source_dataset"], target=arguments["target_dataset"]
        )
    except ValidationError as err:
        first = err.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ValueError(f"pipeline parameter {first['loc'][0]}_dataset: {message}") from None
    arguments["source_dataset"], arguments["target_dataset"] = datasets.source, datasets.target
    return arguments


def _typed(name: str, kind: str, text: str) -> Any:
    try:
        if kind == "Integer":
            return int(text)
        if kind == "Float":
            return float(text)
        if kind == "Boolean":
            return {"true": True, "false": False}[text.lower()]
        if kind in ("List", "Dict"):
            value = json.loads(text)
            if not isinstance(value, list if kind == "List" else dict):
                raise ValueError(kind)
            return value
    except (ValueError, KeyError):
        raise ValueError(f"pipeline parameter {name}: {text!r} is not a {kind}") from None
    return text


RUNNERS = ("subprocess", "docker")
# Where a task container finds S3, besides what the credentials Secret gives a pod on a cluster
# (`kubeflow.credentials_keys`): both are passed on from this environment when set, the values
# to the container engine only, never to a log.
CONTAINER_LOCATIONS = ("AWS_REGION", "AWS_ENDPOINT_URL_S3")


def run_local(
    config_yaml: str | None,
    workdir: Path,
    *,
    mlflow_tracking_uri: str = "",
    parameters: Mapping[str, str] = {},  # noqa: B006
    progress: bool = False,
    runner: str = "subprocess",
) -> dict[str, Any]:
    """Run the whole pipeline with kfp.local.

    `runner` "subprocess" runs each task in this interpreter's environment; "docker" runs it in
    a container of the components' image (REID_IMAGE) through the Docker API (DOCKER_HOST: a
    Docker daemon or podman's `podman system service`), on the host's network, given the
    tracking URI and those of CONTAINER_LOCATIONS and `kubeflow.credentials_keys` set here.
    Containers see only the pipeline root, so the docker runner needs an MLflow server and an
    s3:// Triton repository (checked first).

    `config_yaml` None means params.yaml (or the defaults); `parameters` are pipeline parameters
    as `--param` gives them (see `pipeline_arguments`). Relative paths in the config (MLflow
    workspace, Triton repository) resolve against the current directory, as with the CLI and
    dvc. The tasks' own output goes to `kfp_local/run-<time>.log`; with `progress`, a line on the
    terminal tells when each task starts and ends. Returns {"status": "SUCCEEDED"|"FAILED",
    "run_dir", "log", "tasks": {task name: {"display_name", "state", "outputs"}}, "outputs":
    {name: {"uri", "metadata"}}}: a task's state is SUCCEEDED, FAILED, NOT_RUN or SKIPPED (in a
    branch the run did not take) and its outputs {port: {"uri", "metadata"}}. A failed task
    does not raise, the caller decides from "status".
    """
    from kfp import local

    from pipelines.training import reid_training_pipeline

    config_text = _config_text(config_yaml)
    arguments = pipeline_arguments(config_text, parameters)
    if runner == "docker":
        task_runner = _docker_runner(config_text, mlflow_tracking_uri)
        containers = _containers_removed_after_exit()
    elif runner == "subprocess":
        task_runner = local.SubprocessRunner(use_venv=False)
        containers = contextlib.nullcontext()
    else:
        raise ValueError(f"unknown runner {runner!r}: one of {', '.join(RUNNERS)}")
    root = Path(workdir).resolve() / "kfp_local"
    root.mkdir(parents=True, exist_ok=True)
    if runner == "docker":
        root.chmod(0o1777)  # the image's unprivileged user writes each run's folder here
    before = set(root.iterdir())
    log = root / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"
    local.init(runner=task_runner, pipeline_root=str(root), raise_on_error=False)
    executors = _executor_tasks(reid_training_pipeline.pipeline_spec)
    display = {name: shown for name, (shown, _) in executors.items()}
    with _output_to(log) as terminal, containers:
        watcher = _TaskWatcher(root, before, display, terminal if progress else None)
        watcher.start()
        try:
            with warnings.catch_warnings():
                # Expected locally: the image name has no "python" in it, display names unused.
                warnings.filterwarnings("ignore", message=".*non-Python base image.*")
                warnings.filterwarnings(
                    "ignore", message=".*have no effect in the current local runner"
                )
                run = reid_training_pipeline(mlflow_tracking_uri=mlflow_tracking_uri, **arguments)
        finally:
            watcher.stop()
    created = sorted(p for p in set(root.iterdir()) - before if p.is_dir())
    if len(created) != 1:
        raise RuntimeError(f"expected one new run folder under {root}, found {created}")
    run_dir = created[0]

    states = {name: _task_state(run_dir / name) for name in executors}
    failed = "FAILED" in states.values()
    tasks = {}
    for name, (shown, branch) in sorted(executors.items()):
        state = states[name]
        if state == "NOT_RUN" and branch and not failed:
            state = "SKIPPED"
        tasks[name] = {
            "display_name": shown,
            "state": state,
            "outputs": _task_outputs(run_dir / name),
        }
    ok = all(t["state"] in ("SUCCEEDED", "SKIPPED") for t in tasks.values())
    outputs = {
        name: {"uri": artifact.uri, "metadata": dict(artifact.metadata)}
        for name, artifact in sorted(run.outputs.items())
    }
    return {
        "status": "SUCCEEDED" if ok else "FAILED",
        "run_dir": str(run_dir),
        "log": str(log),
        "tasks": tasks,
        "outputs": outputs if ok else {},
    }


def _docker_runner(config_yaml: str, mlflow_tracking_uri: str) -> Any:
    """kfp.local's DockerRunner for the project image, after checking what containers need."""
    import docker
    from kfp import local

    from components import IMAGE

    config = parse_config_yaml(config_yaml)
    tracking = mlflow_tracking_uri or configured_tracking_uri(config)
    if not tracking.startswith(("http://", "https://")):
        raise ValueError(
            "the docker runner needs an MLflow server (tasks run in separate containers): set "
            "tracking.tracking_uri or MLFLOW_TRACKING_URI to its http(s) URL"
        )
    if not config.triton.repository.startswith("s3://"):
        raise ValueError(
            "the docker runner needs an s3:// Triton repository (triton.repository): a folder "
            f"like {config.triton.repository!r} would be written inside the promote container"
        )
    try:
        client = docker.from_env()
        try:
            tags = {tag for image in client.images.list() for tag in image.tags}
        finally:
            client.close()
    except docker.errors.DockerException as err:
        raise ConnectionError(
            f"no container engine answers ({err}): start one (podman system service --time=0 "
            "unix:///PATH/podman.sock, then DOCKER_HOST=unix:///PATH/podman.sock)"
        ) from None
    if IMAGE not in tags:
        local_name = f"localhost/{IMAGE}"
        hint = (
            f"; podman names it {local_name}: set REID_IMAGE={local_name}"
            if (local_name in tags)
            else ": build it with `make image`"
        )
        raise ValueError(f"image {IMAGE} is not in the container engine{hint}")
    passed_on = (*CONTAINER_LOCATIONS, *config.kubeflow.credentials_keys)
    environment = {key: os.environ[key] for key in passed_on if key in os.environ}
    environment["MLFLOW_TRACKING_URI"] = tracking
    # kfp.local hands a task's command to the container as its arguments, after the image's
    # entrypoint (`reid`); Kubernetes replaces the entrypoint with it. env runs it as given.
    return local.DockerRunner(
        entrypoint=["/usr/bin/env"], network_mode="host", environment=environment
    )


@contextlib.contextmanager
def _containers_removed_after_exit() -> Iterator[None]:
    """Run kfp.local's task containers without auto-remove, removing each once its exit status
    is read. kfp.local (2.17) starts them with auto-remove, then reads their logs and status:
    a task that ends within moments is gone by then, which podman answers with an error (500)
    and Docker with NotFound, which kfp.local counts as success even for a failed task."""
    from kfp.local import docker_task_handler

    def run_container(client, image, command, volumes, **run_args) -> int:
        container = client.containers.run(
            image=image, command=command, volumes=volumes, detach=True, **run_args
        )
        try:
            for chunk in container.logs(stream=True, follow=True):
                print(chunk.decode(errors="replace"), end="")
            return int(container.wait()["StatusCode"])
        finally:
            container.remove(force=True)

    original = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = run_container
    try:
        yield
    finally:
        docker_task_handler.run_docker_container = original


def _executor_tasks(pipeline_spec: Any) -> dict[str, tuple[str, bool]]:
    """Every task that runs a component, in the DAG and its condition branches: {task name:
    (display name, whether it is inside a branch)}. kfp.local names task folders so."""
    found: dict[str, tuple[str, bool]] = {}

    def walk(dag: Any, in_branch: bool) -> None:
        for name, task in dag.tasks.items():
            component = pipeline_spec.components[task.component_ref.name]
            branch = in_branch or bool(task.trigger_policy.condition)
            if component.HasField("dag"):
                walk(component.dag, branch)
            else:
                found[name] = (task.task_info.name, branch)

    walk(pipeline_spec.root.dag, False)
    return found


def _task_outputs(task_dir: Path) -> dict[str, dict[str, Any]]:
    """A finished task's output artifacts, from the executor output kfp.local keeps."""
    path = task_dir / "executor_output.json"
    if not path.is_file():
        return {}
    artifacts = json.loads(path.read_text()).get("artifacts", {})
    return {
        port: {
            "uri": listing["artifacts"][0]["uri"],
            "metadata": listing["artifacts"][0].get("metadata", {}),
        }
        for port, listing in artifacts.items()
        if listing.get("artifacts")
    }


def _task_state(task_dir: Path) -> str:
    # kfp.local writes executor_output.json only when the task's function returned.
    if (task_dir / "executor_output.json").is_file():
        return "SUCCEEDED"
    return "FAILED" if task_dir.exists() else "NOT_RUN"


@contextlib.contextmanager
def _output_to(log: Path) -> Iterator[TextIO]:
    """Send this process's and its children's stdout and stderr to `log`; yield the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    with open(log, "a", buffering=1) as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, original in zip((1, 2), saved, strict=True):
                os.dup2(original, fd)
                os.close(original)
            terminal.close()


class _TaskWatcher(threading.Thread):
    """Reports tasks starting and ending, from the folders kfp.local writes for them."""

    def __init__(
        self, root: Path, before: set[Path], display: dict[str, str], terminal: TextIO | None
    ):
        super().__init__(daemon=True)
        self.root, self.before, self.display, self.terminal = root, before, display, terminal
        self.seen: dict[str, str] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            self.poll()
        self.poll()

    def stop(self) -> None:
        self.done.set()
        self.join()

    def poll(self) -> None:
        runs = [p for p in self.root.iterdir() if p.is_dir() and p not in self.before]
        if len(runs) != 1:
            return
        for name in sorted(self.display):
            state = _task_state(runs[0] / name)
            state = "RUNNING" if state == "FAILED" and not self.done.is_set() else state
            if state != "NOT_RUN" and self.seen.get(name) != state:
                self.seen[name] = state
                if self.terminal is not None:
                    print(f"{state.lower():<9} {self.display[name]}", file=self.terminal)


def _check_reachable(host: str) -> None:
    """Fail fast and clearly when nothing answers at `host` (kfp.Client would retry)."""
    if not host.startswith(("http://", "https://")):
        raise ValueError(f"KFP host must be an http(s) URL, got {host!r}")
    url = host.rstrip("/") + "/apis/v2beta1/healthz"
    try:
        with urllib.request.urlopen(url, timeout=_REACH_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        pass  # something answered (maybe an auth proxy): let the client handle it
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ConnectionError(
            f"Kubeflow Pipelines API at {host} is unreachable ({reason}); check the URL, "
            "e.g. `kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80` and "
            "--host http://localhost:8080"
        ) from None


def submit(
    host: str,
    config_yaml: str | None,
    experiment: str = "reidflow",
    run_name: str | None = None,
    *,
    mlflow_tracking_uri: str = "",
    package: Path | None = None,
    parameters: Mapping[str, str] = {},  # noqa: B006
) -> str:
    """Start a pipeline run on the KFP API at `host`; return its run id.

    Submits `package` if given, else a fresh compile of the current code with this config
    (REID_IMAGE names the image). `mlflow_tracking_uri`, when given, wins over the parameter.
    On a cluster, pass an MLflow server as `mlflow_tracking_uri` (or set tracking.tracking_uri):
    the default SQLite store would live and die inside each task's container.
    """
    config_text = _config_text(config_yaml)
    arguments = pipeline_arguments(config_text, parameters)
    _check_reachable(host)
    import kfp
    import kfp_server_api
    import urllib3

    if mlflow_tracking_uri:
        arguments["mlflow_tracking_uri"] = mlflow_tracking_uri
    with tempfile.TemporaryDirectory() as tmp:
        # compiled with this config, so its `kubeflow` section places the tasks
        config = parse_config_yaml(config_text)
        path = Path(package) if package else compile_pipeline(Path(tmp) / "training.yaml", config)
        if not path.is_file():
            raise FileNotFoundError(f"pipeline package not found: {path}")
        try:
            client = kfp.Client(host=host)
            result = client.create_run_from_pipeline_package(
                str(path), arguments=arguments, run_name=run_name, experiment_name=experiment
            )
        except urllib3.exceptions.HTTPError as err:
            raise ConnectionError(
                f"Kubeflow Pipelines API at {host} is unreachable: {err}"
            ) from None
        except kfp_server_api.ApiException as err:
            raise RuntimeError(
                f"Kubeflow Pipelines API at {host} refused the run: {err.status} {err.reason}: "
                f"{err.body}"
            ) from None
    return str(result.run_id)


def _main() -> None:
    """`python -m pipelines.tools` recompiles pipelines/training.yaml (same as the CLI)."""
    print(json.dumps({"compiled": str(compile_pipeline())}))


if __name__ == "__main__":
    _main()
