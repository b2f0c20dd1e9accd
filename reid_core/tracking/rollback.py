"""Rollback: make the champion's predecessor champion again and serve it.

The restored version is published as the repository's next Triton version (Triton serves the
newest number), then the aliases move, as one change: a failed publish leaves the registry as
it was, and a failure after it undoes the publish and puts the aliases back.
Each champion remembers the one it replaced (`reid.previous_champion`), so rolling back twice
walks back two promotions.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from reid_core.config import ReidConfig
from reid_core.export.onnx import onnx_interface
from reid_core.serving.repositories import open_repository
from reid_core.serving.triton import publication
from reid_core.tracking.registry import (
    CHAMPION,
    PREVIOUS,
    PREVIOUS_TAG,
    aliases_restored_on_failure,
    set_champion_alias,
)


class RollbackError(RuntimeError):
    """There is nothing to roll back to, or the model cannot be served as configured."""


@dataclass(frozen=True)
class Rollback:
    model_name: str
    restored: int  # the registry version that is champion again
    replaced: int  # the champion it replaces
    triton_version: int
    triton_location: str


def rollback(config: ReidConfig) -> Rollback:
    """Restore the champion's predecessor (registry `previous`) as champion and serve it."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    name = config.promote.model_name
    if config.triton.backend == "tensorrt":
        raise RollbackError(
            "triton.backend=tensorrt: the registry holds the ONNX model, not an engine; "
            "roll back with the onnxruntime or python flavour"
        )
    with open_repository(config.triton.repository).lock(name):
        client = mlflow.MlflowClient()
        try:
            champion = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            raise RollbackError(f"{name} has no champion: nothing to roll back") from None
        target = champion.tags.get(PREVIOUS_TAG, "")
        if not target:
            raise RollbackError(
                f"{name} v{champion.version} replaced no earlier champion: nothing to roll back to"
            )
        restored = client.get_model_version(name, target)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{name}/{target}", dst_path=tmp
                )
            )
            # the file MLflow's onnx flavour saved, as its MLmodel records it
            onnx_path = folder / Model.load(folder).flavors["onnx"]["data"]
            height, width, dim = onnx_interface(onnx_path)
            # one change: a failure after the publish undoes it and puts the aliases back
            with (
                publication(config.triton, name, onnx_path, height, width, dim) as (
                    triton_version,
                    path,
                ),
                aliases_restored_on_failure(name),
            ):
                _move_aliases(client, name, target, restored.tags)
                client.set_model_version_tag(
                    name, champion.version, "reid.rolled_back", f"replaced by v{target} (rollback)"
                )
                client.set_model_version_tag(
                    name, target, "reid.triton_version", str(triton_version)
                )
    return Rollback(name, int(target), int(champion.version), triton_version, path)


def _move_aliases(client, name: str, target: str, tags: dict[str, str]) -> None:
    """`target` champion again, of its evaluation set too; `previous` to its own predecessor."""
    client.set_registered_model_alias(name, CHAMPION, target)
    set_hash = tags.get("reid.eval_set_hash", "")
    if set_hash:  # the one rolled back may have been that set's champion
        client.set_registered_model_alias(name, set_champion_alias(set_hash), target)
    earlier = tags.get(PREVIOUS_TAG, "")
    if earlier:
        client.set_registered_model_alias(name, PREVIOUS, earlier)
    else:
        client.delete_registered_model_alias(name, PREVIOUS)
