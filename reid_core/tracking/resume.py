"""Resuming a training stage's MLflow run: a re-run of an interrupted stage logs into the run
it had opened, at the steps it had not logged yet."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from reid_core.atomic import write_json
from reid_core.config import ReidConfig

if TYPE_CHECKING:
    import mlflow

# A training stage's MLflow run, recorded in its state folder when the run starts, so that a
# re-run of the interrupted stage (which resumes training from that folder) logs into the same
# run. The folder goes when the stage completes, and the file with it.
RUN_FILE = "mlflow_run.json"
RESUMED_TAG = "reid.resumed"  # how many times the run was reopened by a re-run
# run id -> metric -> last step the reopened run already has (see `log_step_metrics`)
_resumed_steps: dict[str, dict[str, int]] = {}


def open_run(
    stage: str,
    config: ReidConfig,
    experiment_id: str,
    tags: dict[str, str],
    resume_dir: Path | None,
    identity: tuple[str, ...],
) -> mlflow.ActiveRun:
    """Reopen the run recorded in `resume_dir` when it can be (same experiment, and the same
    values of the `identity` tags), else start a new one and record it there."""
    import mlflow

    recorded = _read_run_file(resume_dir)
    if recorded:
        run, why_not = _resumable_run(recorded, experiment_id, tags, identity)
        if run is not None:
            return _reopen(stage, config, run, resume_dir)
        print(f"{stage}: not resuming MLflow run {recorded} ({why_not}); logging to a new run",
              file=sys.stderr)  # fmt: skip
    active = mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=tags)
    mlflow.log_params(config.flat())
    if resume_dir is not None:
        payload = {"run_id": active.info.run_id, "experiment_id": experiment_id,
                   "tracking_uri": mlflow.get_tracking_uri()}  # fmt: skip
        write_json(resume_dir / RUN_FILE, payload)
    return active


def _read_run_file(resume_dir: Path | None) -> str:
    """The run id recorded in `resume_dir`, or '' (no folder, no file, unreadable file)."""
    if resume_dir is None or not (resume_dir / RUN_FILE).is_file():
        return ""
    try:
        return str(json.loads((resume_dir / RUN_FILE).read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _resumable_run(
    run_id: str, experiment_id: str, tags: dict[str, str], identity: tuple[str, ...]
) -> tuple[mlflow.entities.Run | None, str]:
    """The recorded run when this stage may continue it, else None and the reason."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None, f"it is not in the tracking store {mlflow.get_tracking_uri()}"
    if run.info.lifecycle_stage != "active":
        return None, "it was deleted"
    if run.info.experiment_id != experiment_id:
        return None, f"it belongs to experiment {run.info.experiment_id}, not {experiment_id}"
    for key in identity:
        if run.data.tags.get(key) != tags[key]:
            return None, f"its {key} is {run.data.tags.get(key)!r}, not {tags[key]!r}"
    return run, ""


def _reopen(
    stage: str, config: ReidConfig, run: mlflow.entities.Run, resume_dir: Path | None
) -> mlflow.ActiveRun:
    """Continue `run`: count the resume, add params it lacks, note which steps it has."""
    import mlflow

    run_id = run.info.run_id
    resumes = int(run.data.tags.get(RESUMED_TAG, "0")) + 1
    active = mlflow.start_run(run_id=run_id, tags={RESUMED_TAG: str(resumes)})
    print(f"{stage}: resuming MLflow run {run_id} (resume {resumes}, recorded in {resume_dir})")
    params = {k: str(v) for k, v in config.flat().items()}
    missing = {k: v for k, v in params.items() if k not in run.data.params}
    if missing:
        mlflow.log_params(missing)
    changed = sorted(k for k, v in params.items() if run.data.params.get(k, v) != v)
    if changed:  # MLflow params cannot change: say which differ in this re-run
        mlflow.set_tag("reid.resumed_with_changed_params", ", ".join(changed))
    history = mlflow.MlflowClient().get_metric_history
    _resumed_steps[run_id] = {k: max(m.step for m in history(run_id, k)) for k in run.data.metrics}
    return active


def log_step_metrics(metrics: dict[str, float], step: int) -> None:
    """`mlflow.log_metrics` at `step`, less what a reopened run already has at that step.

    Training resumes from its last saved state, before the crash, so a re-run repeats steps
    that were logged already; resume is exact, so the values are the same and the run keeps
    the first ones: each step appears once in the metric history.
    """
    import mlflow

    active = mlflow.active_run()
    done = _resumed_steps.get(active.info.run_id, {}) if active is not None else {}
    fresh = {k: v for k, v in metrics.items() if step > done.get(k, -1)}
    if fresh:
        mlflow.log_metrics(fresh, step=step)


def forget_run(run_id: str) -> None:
    """Drop what `log_step_metrics` remembers of a run once it is closed."""
    _resumed_steps.pop(run_id, None)
