"""What the three training stages (train, distill, adapt) share: data in, checkpoint out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from reid_core.config import ReidConfig
from reid_core.data.manifest import read_manifest
from reid_core.data.splits import Split, load_split
from reid_core.engine.checkpoint import save_checkpoint
from reid_core.modeling.model import ReidModel
from reid_core.tracking.lineage import git_commit


def load_train_split(
    config: ReidConfig, dataset: Path, manifest: Path
) -> tuple[Split, dict[str, str]]:
    df, meta = read_manifest(manifest)
    return load_split(dataset, df, "train", config.data.height, config.data.width), meta


def finish(
    stage: str,
    config: ReidConfig,
    model: ReidModel,
    data_meta: dict[str, str],
    checkpoint: Path,
    extra: dict[str, Any],
) -> None:
    """Save the checkpoint with its lineage and log it to the active MLflow run."""
    import mlflow

    meta = {
        "stage": stage,
        "height": config.data.height,
        "width": config.data.width,
        "domain": data_meta.get("domain", ""),
        "data_fingerprint": data_meta.get("fingerprint", ""),
        "dvc_md5": data_meta.get("dvc_md5", ""),
        "git_commit": git_commit(),
        "config_hash": config.digest(),
        "mlflow_run_id": mlflow.active_run().info.run_id,
        **extra,
    }
    save_checkpoint(checkpoint, model, meta)
    mlflow.log_artifacts(str(checkpoint), "checkpoint")


def count_ids(labels: np.ndarray) -> int:
    return int(len(np.unique(labels)))
