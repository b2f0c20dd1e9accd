"""Compile, run locally, or submit the training pipeline (`reid pipeline compile|run-local|submit`).

- compile: writes pipelines/training.yaml; the same code and params.yaml give identical bytes,
  so a test can tell when the checked-in file is stale.
- run-local: executes every task as a subprocess of this interpreter with `kfp.local` (no
  cluster, no containers); outputs go under `<workdir>/kfp_local/`.
- submit: compiles afresh (honouring REID_IMAGE) and starts a run on a Kubeflow Pipelines API.
"""

from __future__ import annotations

import json
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from reid_core.atomic import atomic_output
from reid_core.stages.kfp_glue import parse_config_yaml

PIPELINE_FILE = Path(__file__).resolve().parent / "training.yaml"
_REACH_TIMEOUT_S = 10.0


def compile_pipeline(out: Path = PIPELINE_FILE) -> Path:
    """Compile the training pipeline to `out` (YAML); its config default is params.yaml now."""
    from kfp import compiler

    from pipelines.training import default_config_yaml, reid_training_pipeline

    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        # KFP picks the format from the suffix, so compile to a .yaml name, then move in.
        staged = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(
            reid_training_pipeline,
            str(staged),
            pipeline_parameters={"config_yaml": default_config_yaml()},
        )
        with atomic_output(out) as dest:
            dest.write_bytes(staged.read_bytes())
    return out


def _config_text(config_yaml: str | None) -> str:
    """The config to run with, validated here so a bad key fails before any task starts."""
    from pipelines.training import default_config_yaml

    text = default_config_yaml() if config_yaml is None else config_yaml
    parse_config_yaml(text)
    return text


def run_local(
    config_yaml: str | None,
    workdir: Path,
    *,
    mlflow_tracking_uri: str = "",
    source_dataset: str | None = None,
    target_dataset: str | None = None,
    adapt_rounds: int | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline with kfp.local's SubprocessRunner (current interpreter, no venv).

    `adapt_rounds` and the datasets, None, keep the pipeline's defaults (params.yaml's
    `adapt.rounds` and `datasets`).
    `config_yaml` None means params.yaml (or the defaults). Relative paths in the config
    (MLflow workspace, Triton repository) resolve against the current directory, as with the
    CLI and dvc. Returns {"status": "SUCCEEDED"|"FAILED", "run_dir", "tasks": {task name:
    {"display_name", "state": SUCCEEDED|FAILED|NOT_RUN}}, "outputs": {name: {"uri",
    "metadata"}}}; a failed task does not raise, the caller decides from "status".
    """
    from kfp import local

    from pipelines.training import reid_training_pipeline

    text = _config_text(config_yaml)
    root = Path(workdir).resolve() / "kfp_local"
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=False
    )
    with warnings.catch_warnings():
        # Expected locally: the image name has no "python" in it, display names are unused.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
        given = {
            "adapt_rounds": adapt_rounds,
            "source_dataset": source_dataset,
            "target_dataset": target_dataset,
        }
        run = reid_training_pipeline(
            config_yaml=text,
            mlflow_tracking_uri=mlflow_tracking_uri,
            **{key: value for key, value in given.items() if value is not None},
        )
    created = sorted(p for p in set(root.iterdir()) - before if p.is_dir())
    if len(created) != 1:
        raise RuntimeError(f"expected one new run folder under {root}, found {created}")
    run_dir = created[0]

    tasks: dict[str, dict[str, str]] = {}
    for name, spec in sorted(reid_training_pipeline.pipeline_spec.root.dag.tasks.items()):
        # kfp.local writes executor_output.json only when the task's function returned.
        if (run_dir / name / "executor_output.json").is_file():
            state = "SUCCEEDED"
        elif (run_dir / name).exists():
            state = "FAILED"
        else:
            state = "NOT_RUN"
        tasks[name] = {"display_name": spec.task_info.name, "state": state}
    ok = all(t["state"] == "SUCCEEDED" for t in tasks.values())
    outputs = {
        name: {"uri": artifact.uri, "metadata": dict(artifact.metadata)}
        for name, artifact in sorted(run.outputs.items())
    }
    return {
        "status": "SUCCEEDED" if ok else "FAILED",
        "run_dir": str(run_dir),
        "tasks": tasks,
        "outputs": outputs if ok else {},
    }


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
) -> str:
    """Start a pipeline run on the KFP API at `host`; return its run id.

    Submits `package` if given, else a fresh compile of the current code (with REID_IMAGE).
    On a cluster, pass an MLflow server as `mlflow_tracking_uri` (or set tracking.tracking_uri):
    the default SQLite store would live and die inside each task's container.
    """
    text = _config_text(config_yaml)
    _check_reachable(host)
    import kfp
    import kfp_server_api
    import urllib3

    arguments = {"config_yaml": text, "mlflow_tracking_uri": mlflow_tracking_uri}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(package) if package else compile_pipeline(Path(tmp) / "training.yaml")
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
