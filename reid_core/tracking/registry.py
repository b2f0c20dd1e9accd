"""The MLflow model registry: versions with lineage tags, and the champion alias."""

from __future__ import annotations

from pathlib import Path

from reid_core.tracking.promotion import Candidate

CHAMPION = "champion"
PREVIOUS = "previous"


def register_onnx(onnx_path: Path, model_name: str, tags: dict[str, str]) -> int:
    """Log the ONNX model in the active run, register it, tag the version; return its number."""
    import mlflow
    import onnx

    info = mlflow.onnx.log_model(
        onnx.load(str(onnx_path)),
        name="model",
        registered_model_name=model_name,
        pip_requirements=["onnxruntime", "numpy"],
        save_as_external_data=False,
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
    )


def champion(model_name: str) -> Candidate | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mv = mlflow.MlflowClient().get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None
    return candidate(model_name, int(mv.version))


def set_champion(model_name: str, version: int, old: Candidate | None) -> None:
    """Move `champion` to `version`; the replaced one keeps the `previous` alias."""
    import mlflow

    client = mlflow.MlflowClient()
    if old is not None:
        client.set_registered_model_alias(model_name, PREVIOUS, str(old.version))
    client.set_registered_model_alias(model_name, CHAMPION, str(version))
