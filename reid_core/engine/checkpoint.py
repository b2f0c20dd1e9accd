"""Checkpoints: safetensors weights + the YAML that builds the model + JSON metadata.

No pickles anywhere: a checkpoint from an untrusted source cannot run code when loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_file, save_file

from reid_core.atomic import atomic_output
from reid_core.config import ModelConfig
from reid_core.modeling import ReidModel, create_model

WEIGHTS = "model.safetensors"
MODEL_YAML = "model.yaml"
META = "meta.json"


def save_checkpoint(dest: str | Path, model: ReidModel, meta: dict[str, Any]) -> None:
    """Write the checkpoint folder atomically. `meta` must hold `height` and `width`."""
    missing = {"height", "width"} - set(meta)
    if missing:
        raise ValueError(f"checkpoint metadata lacks {sorted(missing)}")
    spec = {"model": model.config.model_dump(mode="json"), "num_classes": model.num_classes}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_output(dest, directory=True) as tmp:
        save_file(state, str(tmp / WEIGHTS))
        (tmp / MODEL_YAML).write_text(yaml.safe_dump(spec, sort_keys=False))
        full_meta = {**meta, "embedding_dim": model.embedding_dim}
        (tmp / META).write_text(json.dumps(full_meta, indent=2, sort_keys=True) + "\n")


def load_checkpoint(path: str | Path) -> tuple[ReidModel, dict[str, Any]]:
    """Rebuild the model from its YAML and load the weights (strictly: every key must match)."""
    path = Path(path)
    for name in (WEIGHTS, MODEL_YAML, META):
        if not (path / name).is_file():
            raise FileNotFoundError(f"not a reidflow checkpoint: {path} has no {name}")
    spec = yaml.safe_load((path / MODEL_YAML).read_text())
    model = create_model(ModelConfig.model_validate(spec["model"]), spec["num_classes"])
    model.load_state_dict(load_file(str(path / WEIGHTS)), strict=True)
    meta = json.loads((path / META).read_text())
    return model.eval(), meta
