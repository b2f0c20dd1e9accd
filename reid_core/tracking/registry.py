"""The MLflow model registry: versions with lineage tags, and the champion alias."""

from __future__ import annotations

from pathlib import Path

from reid_core.tracking.promotion import Candidate

CHAMPION = "champion"
PREVIOUS = "previous"


def register_onnx(onnx_path: Path, model_name: str, tags: dict[str, str]) -> int:
    """Log the ONNX model in the active run (with its signature and an input example, so
    `mlflow.pyfunc.load_model("models:/<name>@champion").predict({"images": x})` embeds),
    register it, tag the version; return its number."""
    import mlflow
    import numpy as np
    import onnx
    import onnxruntime as ort
    from mlflow.models import infer_signature

    from reid_core.export.onnx import INPUT_NAME, OUTPUT_NAME, onnx_interface

    height, width, _ = onnx_interface(onnx_path)
    example = np.random.default_rng(0).uniform(0, 255, (1, 3, height, width)).astype(np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (features,) = session.run([OUTPUT_NAME], {INPUT_NAME: example})
    info = mlflow.onnx.log_model(
        onnx.load(str(onnx_path)),
        name="model",
        registered_model_name=model_name,
        pip_requirements=["onnxruntime", "numpy"],
        save_as_external_data=False,
        signature=infer_signature({INPUT_NAME: example}, {OUTPUT_NAME: features}),
        input_example={INPUT_NAME: example},
        onnx_execution_providers=["CPUExecutionProvider"],
    )
    version = int(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(model_name, str(version), key, str(value))
    return version


def candidate(model_name: str, version: int) -> Candidate:
    """Read back the figures the policy compares, from the version's tags."""
    import mlflow

    mv = mlflow.MlflowClient().get_model_version(model_name, str(version))
    t = mv.tags
    return Candidate(
        version=version,
        mAP=float(t["reid.mAP"]),
        rank1=float(t["reid.rank1"]),
        eval_set_hash=t["reid.eval_set_hash"],
        parity_passed=t.get("reid.parity_passed") == "true",
        latency_ms=float(t["reid.latency_ms"]) if t.get("reid.latency_ms") else None,
    )


def champion(model_name: str) -> Candidate | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mv = mlflow.MlflowClient().get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None
    return candidate(model_name, int(mv.version))


PREVIOUS_TAG = "reid.previous_champion"


def set_champion(model_name: str, version: int, old: Candidate | None) -> None:
    """Move `champion` to `version`; the replaced one keeps the `previous` alias.

    The new champion's `reid.previous_champion` tag remembers the one it replaced, so
    rollbacks can walk back more than one step.
    """
    import mlflow

    client = mlflow.MlflowClient()
    if old is not None:
        client.set_model_version_tag(model_name, str(version), PREVIOUS_TAG, str(old.version))
        client.set_registered_model_alias(model_name, PREVIOUS, str(old.version))
    client.set_registered_model_alias(model_name, CHAMPION, str(version))


MODEL_URI_SCHEMES = ("models:/", "runs:/")


def is_model_uri(source: str) -> bool:
    """True for MLflow URIs (`models:/…`, `runs:/…`), False for local paths."""
    return str(source).startswith(MODEL_URI_SCHEMES)


def checkpoint_folder(source: str | Path) -> Path:
    """The local checkpoint folder behind `source`, downloading it when it is an MLflow URI.

    `models:/<name>@<alias>` and `models:/<name>/<version>` resolve to the checkpoint that the
    version's training run logged (its `reid.train_run_id` tag, set by `reid promote`);
    `runs:/<run id>/<path>` names a logged checkpoint directly; anything else is a path.
    MLflow must already point at the store (`setup_mlflow`).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    source = str(source)
    if not is_model_uri(source):
        return Path(source)
    try:
        if source.startswith("runs:/"):
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=source))
        name, sep, alias = source.removeprefix("models:/").partition("@")
        client = mlflow.MlflowClient()
        if sep:
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = name.partition("/")
            version = client.get_model_version(name, number)
        run_id = version.tags.get("reid.train_run_id", "")
        if not run_id:
            raise ValueError(
                f"{source}: version {version.version} has no reid.train_run_id tag, so its "
                "checkpoint is unknown (register models with `reid promote`)"
            )
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint"))
    except MlflowException as err:
        raise ValueError(f"cannot resolve {source} in the MLflow registry: {err.message}") from err
