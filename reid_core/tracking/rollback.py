"""Rollback: make the champion's predecessor champion again and serve it.

The restored version is published as the repository's next Triton version (Triton serves the
newest number), then the aliases move; a failed publish leaves the registry as it was.
Each champion remembers the one it replaced (`reid.previous_champion`), so rolling back twice
walks back two promotions.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from reid_core.config import ReidConfig
from reid_core.export.onnx import onnx_interface
from reid_core.export.repositories import open_repository
from reid_core.export.triton import publish_next_version
from reid_core.tracking.registry import CHAMPION, PREVIOUS, PREVIOUS_TAG, set_champion_alias


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
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{name}/{target}", dst_path=tmp
                )
            )
            onnx_path = folder / "model.onnx"
            height, width, dim = onnx_interface(onnx_path)
            triton_version, path = publish_next_version(
                config.triton, name, onnx_path, height, width, dim
            )
        restored = client.get_model_version(name, target)
        client.set_registered_model_alias(name, CHAMPION, target)
        # It is its evaluation set's champion again too (the one rolled back may be of that set).
        set_hash = restored.tags.get("reid.eval_set_hash", "")
        if set_hash:
            client.set_registered_model_alias(name, set_champion_alias(set_hash), target)
        earlier = restored.tags.get(PREVIOUS_TAG, "")
        if earlier:
            client.set_registered_model_alias(name, PREVIOUS, earlier)
        else:
            client.delete_registered_model_alias(name, PREVIOUS)
        client.set_model_version_tag(
            name, champion.version, "reid.rolled_back", f"replaced by v{target} (rollback)"
        )
        client.set_model_version_tag(name, target, "reid.triton_version", str(triton_version))
    return Rollback(name, int(target), int(champion.version), triton_version, path)
