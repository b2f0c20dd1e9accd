"""Checkpoints: safetensors weights + the YAML that builds the model + JSON metadata.

No pickles anywhere: a checkpoint from an untrusted source cannot run code when loaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from reid_core.atomic import atomic_output
from reid_core.modeling import ReidModel, create_model
from reid_core.options import ModelConfig, validation_problems
from reid_core.redact import redact_values

WEIGHTS = "model.safetensors"
MODEL_YAML = "model.yaml"
META = "meta.json"


def save_checkpoint(dest: str | Path, model: ReidModel, meta: dict[str, Any]) -> None:
    """Write the checkpoint folder atomically. `meta` must hold `height` and `width`."""
    missing = {"height", "width"} - set(meta)
    if missing:
        raise ValueError(f"checkpoint metadata lacks {sorted(missing)}")
    # the model's config as a record: a token in its weights URL stays out of the file
    spec = {
        "model": redact_values(model.config.model_dump(mode="json")),
        "num_classes": model.num_classes,
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_output(dest, directory=True) as tmp:
        save_file(state, str(tmp / WEIGHTS))
        (tmp / MODEL_YAML).write_text(yaml.safe_dump(spec, sort_keys=False))
        full_meta = {**meta, "embedding_dim": model.embedding_dim}
        (tmp / META).write_text(json.dumps(full_meta, indent=2, sort_keys=True) + "\n")


def weights_digest(checkpoint: str | Path) -> str:
    """The SHA-256 of a checkpoint's weights file: the identity of a trained model.

    A checkpoint holds no run facts (run ids, commits, times), so the same training writes
    the same bytes; whoever tracks runs can find the one behind a model by this digest.
    """
    with open(Path(checkpoint) / WEIGHTS, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


MAX_CLASSES = 1_000_000  # far above any re-id training set; a bigger count is a corrupt file


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the file and the problem."""


def load_checkpoint(path: str | Path) -> tuple[ReidModel, dict[str, Any]]:
    """Rebuild the model from its YAML and load the weights (strictly: every key must match)."""
    path = Path(path)
    for name in (WEIGHTS, MODEL_YAML, META):
        if not (path / name).is_file():
            raise FileNotFoundError(f"not a reidflow checkpoint: {path} has no {name}")
    config, num_classes = _model_spec(path / MODEL_YAML)
    meta = _meta(path / META)
    model = create_model(config, num_classes, pretrained=False)  # the weights are here
    try:
        weights = load_file(str(path / WEIGHTS))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path / WEIGHTS}: not readable safetensors ({err})") from None
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1:2] or [str(err)]
        raise CheckpointError(
            f"{path / WEIGHTS}: the weights do not fit the model {MODEL_YAML} describes: "
            f"{first[0].strip()}"
        ) from None
    return model.eval(), meta


def _model_spec(file: Path) -> tuple[ModelConfig, int]:
    try:
        spec = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        problem = str(err).splitlines()[0]
        raise CheckpointError(f"{file}: not plain YAML ({problem})") from None
    if not isinstance(spec, dict) or not {"model", "num_classes"} <= set(spec):
        raise CheckpointError(f"{file}: expected a mapping with 'model' and 'num_classes'")
    num_classes = spec["num_classes"]
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise CheckpointError(f"{file}: num_classes must be an integer, got {num_classes!r}")
    if not 0 <= num_classes <= MAX_CLASSES:
        raise CheckpointError(f"{file}: num_classes {num_classes} is outside 0..{MAX_CLASSES}")
    try:
        return ModelConfig.model_validate(spec["model"]), num_classes
    except ValidationError as err:
        raise CheckpointError(f"{file}: model: {validation_problems(err)[0]}") from None


def _meta(file: Path) -> dict[str, Any]:
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: not JSON ({err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    for key in ("height", "width"):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
            raise CheckpointError(
                f"{file}: '{key}' must be an image size in 1..4096, got {value!r}"
            )
    return meta
