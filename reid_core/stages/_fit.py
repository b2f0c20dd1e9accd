"""What the three training stages (train, distill, adapt) share: data in, checkpoint out."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from reid_core.artifacts import ModelLineage
from reid_core.config import ReidConfig
from reid_core.data.manifest import read_manifest
from reid_core.data.splits import Split, load_split
from reid_core.engine.checkpoint import save_checkpoint, weights_digest
from reid_core.engine.hooks import Hook, PeriodicEvaluation
from reid_core.evaluation.protocol import evaluate_splits
from reid_core.modeling.model import ReidModel
from reid_core.tracking.metric_sink import MlflowSink
from reid_core.tracking.trained_by import WEIGHTS_TAG


def load_train_split(
    config: ReidConfig, dataset: Path, manifest: Path
) -> tuple[Split, dict[str, str]]:
    df, meta = read_manifest(manifest)
    return load_split(dataset, df, "train", config.data.height, config.data.width), meta


def evaluation_hook(
    config: ReidConfig, dataset: Path, manifest: Path, every: int, device: str
) -> list[Hook]:
    """Rank metrics on the manifest's query/gallery every `every` epochs ([] when 0), named
    as evaluate names them, after `val_` (`val_rank1`, `val_mAP`, ...)."""
    if every == 0:
        return []
    df, _ = read_manifest(manifest)
    h, w = config.data.height, config.data.width
    query, gallery = (load_split(dataset, df, s, h, w) for s in ("query", "gallery"))

    def evaluate(model: ReidModel) -> dict[str, float]:
        return evaluate_splits(model, query, gallery, config.evaluate, device).as_metrics("val_")

    return [PeriodicEvaluation(every, evaluate, [MlflowSink()])]


def state_dir(
    config: ReidConfig, stage: str, section: BaseModel, data_meta: dict, inputs: Sequence[str] = ()
) -> Path:
    """Where `stage` keeps its resumable state: keyed by its config section, its data and
    its other `inputs` (e.g. the teachers' runs), so a run resumes only the very run that
    was interrupted."""
    payload = json.dumps(
        [section.model_dump(mode="json"), data_meta.get("fingerprint", ""), list(inputs)],
        sort_keys=True,
    )
    key = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return Path(config.runtime.state_dir) / f"{stage}-{key}"


@contextlib.contextmanager
def main_process_only(
    is_main: bool, open_run: Callable[[], contextlib.AbstractContextManager]
) -> Iterator[None]:
    """Open the MLflow run on rank 0 only: other ranks of a distributed job train silently."""
    if not is_main:
        yield
        return
    with open_run():
        yield


def finish(
    stage: str,
    config: ReidConfig,
    model: ReidModel,
    data_meta: dict[str, str],
    checkpoint: Path,
    role: str,
    **facts: Any,
) -> None:
    """Save the checkpoint with its lineage (`ModelLineage`: the stage, its `role`, the
    training data, the config and the stage's own `facts`) and log it to the active MLflow run.

    The checkpoint holds only what the inputs determine (no run id, commit or time), so a
    re-run writes the same bytes; the run is tagged with the weights' digest instead.
    """
    import mlflow

    lineage = ModelLineage(
        stage=stage,
        role=role,
        domain=data_meta.get("domain", ""),
        data_fingerprint=data_meta.get("fingerprint", ""),
        dvc_md5=data_meta.get("dvc_md5", ""),
        data_lineage=data_meta.get("data_lineage", "{}"),
        config_hash=config.digest(),
        **facts,
    )
    meta = {"height": config.data.height, "width": config.data.width, **lineage.as_meta()}
    save_checkpoint(checkpoint, model, meta)
    mlflow.set_tag(WEIGHTS_TAG, weights_digest(checkpoint))  # how later stages find this run
    mlflow.log_artifacts(str(checkpoint), "checkpoint")


def count_ids(labels: np.ndarray) -> int:
    return int(len(np.unique(labels)))


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
