"""Changing the champion by hand: rollback (the champion's predecessor is champion again) and
making a chosen registered version champion (the search page's promote, policy overruled).

Either way the version is published as the repository's next Triton version (Triton serves the
newest number), then the aliases move, as one change: a failed publish leaves the registry as
it was, and a failure after it undoes the publish and puts the aliases back.
Each champion remembers the one it replaced (`reid.previous_champion`), so rolling back twice
walks back two promotions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from reid_core.config import ReidConfig
from reid_core.export.onnx import onnx_interface
from reid_core.serving.repositories import open_repository
from reid_core.serving.triton import publication
from reid_core.tracking.registry import (
    CHAMPION,
    PREVIOUS,
    PREVIOUS_TAG,
    PROMOTION_TAG,
    aliases_restored_on_failure,
    candidate,
    registered_onnx,
    set_champion,
    set_champion_alias,
)


class RollbackError(RuntimeError):
    """There is nothing to roll back to, or the model cannot be served as configured."""


@dataclass(frozen=True)
class Rollback:
    model_name: str
    restored: int  # the registry version that is champion now
    replaced: int  # the champion it replaces (0: there was none)
    triton_version: int
    triton_location: str


def rollback(config: ReidConfig) -> Rollback:
    """Restore the champion's predecessor (registry `previous`) as champion and serve it."""

    def predecessor(client, name: str, champion) -> str:
        if champion is None:
            raise RollbackError(f"{name} has no champion: nothing to roll back")
        target = champion.tags.get(PREVIOUS_TAG, "")
        if not target:
            raise RollbackError(
                f"{name} v{champion.version} replaced no earlier champion: nothing to roll back to"
            )
        return target

    def move(client, name: str, target: str, champion) -> None:
        _move_aliases(client, name, target, client.get_model_version(name, target).tags)
        client.set_model_version_tag(
            name, champion.version, "reid.rolled_back", f"replaced by v{target} (rollback)"
        )

    return _serve_as_champion(config, predecessor, move)


def make_champion(config: ReidConfig, version: int) -> Rollback:
    """Make registered `version` champion and serve it, whatever the promotion policy said
    of it (an operator's decision); a version whose export failed its parity gate is refused."""

    def chosen(client, name: str, champion) -> str:
        from mlflow.exceptions import MlflowException

        try:
            tags = client.get_model_version(name, str(version)).tags
        except MlflowException:
            raise RollbackError(f"{name} has no version {version}") from None
        if champion is not None and int(champion.version) == version:
            raise RollbackError(f"{name} v{version} is the champion already")
        if tags.get("reid.parity_passed") != "true":
            raise RollbackError(
                f"{name} v{version} failed its export parity gate: it cannot be served"
            )
        return str(version)

    def move(client, name: str, target: str, champion) -> None:
        old = candidate(name, int(champion.version)) if champion is not None else None
        set_champion(name, version, old)
        client.set_model_version_tag(
            name, target, PROMOTION_TAG, "made champion by hand (the search page)"
        )

    return _serve_as_champion(config, chosen, move)


def _serve_as_champion(
    config: ReidConfig,
    choose: Callable[..., str],
    move: Callable[..., None],
) -> Rollback:
    """Under the repository's lock: `choose(client, name, champion)` names the version to
    serve, which is published; then `move(client, name, target, champion)` moves the aliases,
    undone with the publish if it fails."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name = config.promote.model_name
    if config.triton.backend == "tensorrt":
        raise RollbackError(
            "triton.backend=tensorrt: the registry holds the ONNX model, not an engine; "
            "change the champion with the onnxruntime or python flavour"
        )
    with open_repository(config.triton.repository).lock(name):
        client = mlflow.MlflowClient()
        try:
            champion = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            champion = None
        target = choose(client, name, champion)
        with registered_onnx(name, target) as onnx_path:
            height, width, dim = onnx_interface(onnx_path)
            # one change: a failure after the publish undoes it and puts the aliases back
            with (
                publication(config.triton, name, onnx_path, height, width, dim) as (
                    triton_version,
                    path,
                ),
                aliases_restored_on_failure(name),
            ):
                move(client, name, target, champion)
                client.set_model_version_tag(
                    name, target, "reid.triton_version", str(triton_version)
                )
    replaced = int(champion.version) if champion is not None else 0
    return Rollback(name, int(target), replaced, triton_version, path)


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
