"""Ablation of the bag-of-tricks and SBS tricks on one dataset (`reid ablate`).

Variants are cumulative, as in Luo et al.'s table: each adds one trick to the one before.
Every variant × seed is one MLflow run in the `<experiment>-ablation` experiment, so the
MLflow UI compares them side by side; the table of means is returned for reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reid_core.config import ReidConfig, with_overrides
from reid_core.data.manifest import read_manifest
from reid_core.data.splits import load_split
from reid_core.engine.device import resolve_device
from reid_core.engine.trainer import TrainData, fit
from reid_core.evaluation.protocol import evaluate_splits
from reid_core.modeling import create_model
from reid_core.modeling.losses import ReidLoss
from reid_core.tracking.runs import setup_mlflow

# (variant name, overrides it adds given the config so far and the number of train ids)
Step = tuple[str, Callable[[ReidConfig, int], list[str]]]


def _baseline(config: ReidConfig, num_ids: int) -> list[str]:
    epochs = config.train.solver.epochs
    steps = sorted({max(1, epochs // 2), max(2, epochs * 4 // 5)})
    return [
        "train.model.head=linear",
        "train.model.pooling=avg",
        "train.model.ibn=none",
        "train.model.classifier=linear",
        "train.model.neck_feat=before",
        "train.loss.label_smoothing=0",
        "train.loss.triplet_weight=0",
        "train.solver.freeze_iters=0",
        "train.solver.scheduler=multistep",
        f"train.solver.steps={steps}",
    ]


def _freeze(config: ReidConfig, num_ids: int) -> list[str]:
    """The backbone frozen for the first two epochs (identity epochs)."""
    per_epoch = max(1, num_ids // config.train.solver.ids_per_batch)
    return [f"train.solver.freeze_iters={2 * per_epoch}"]


ABLATION_STEPS: tuple[Step, ...] = (
    ("baseline", _baseline),
    ("+BNNeck", lambda c, n: ["train.model.head=bnneck", "train.model.neck_feat=after"]),
    ("+label smoothing", lambda c, n: ["train.loss.label_smoothing=0.1"]),
    ("+triplet", lambda c, n: ["train.loss.triplet_weight=1.0"]),
    ("+GeM", lambda c, n: ["train.model.pooling=gem"]),
    ("+IBN", lambda c, n: ["train.model.ibn=a"]),
    ("+circle", lambda c, n: ["train.model.classifier=circle"]),
    ("+freeze", _freeze),
    ("+cosine", lambda c, n: ["train.solver.scheduler=cosine"]),
)
"""The tricks in cumulative order."""


@dataclass(frozen=True)
class AblationRow:
    variant: str
    overrides: tuple[str, ...]
    rank1: float  # means over seeds
    mAP: float
    mINP: float
    seconds: float
    seeds: int


def run_ablation(
    base: ReidConfig,
    dataset: Path,
    manifest: Path,
    steps: Sequence[Step] = ABLATION_STEPS,
    seeds: Sequence[int] = (0,),
) -> list[AblationRow]:
    """Train and evaluate each cumulative variant on the manifest's splits, once per seed."""
    import mlflow

    df, _ = read_manifest(manifest)
    h, w = base.data.height, base.data.width
    train, query, gallery = (
        load_split(dataset, df, s, h, w) for s in ("train", "query", "gallery")
    )
    data = TrainData.from_split(train)
    device = resolve_device(base.runtime.device)
    tracking = base.tracking.model_copy(
        update={"experiment": f"{base.tracking.experiment}-ablation"}
    )
    experiment = setup_mlflow(base.model_copy(update={"tracking": tracking}))
    ablation_id = time.strftime("%Y%m%d-%H%M%S")
    overrides: list[str] = []
    rows = []
    for name, add in steps:
        overrides += add(with_overrides(base, overrides), int(data.labels.max()) + 1)
        config = with_overrides(base, overrides)
        results = []
        for seed in seeds:
            cfg = with_overrides(config, [f"train.solver.seed={seed}"]).train
            tags = {"reid.kind": "ablation", "reid.ablation": ablation_id, "reid.variant": name}
            with mlflow.start_run(experiment_id=experiment, run_name=f"{name} seed {seed}",
                                  tags=tags):  # fmt: skip
                mlflow.log_params({k: v for k, v in config.flat().items()
                                   if k.startswith("train.")})  # fmt: skip
                torch.manual_seed(seed)
                model = create_model(cfg.model, int(data.labels.max()) + 1).to(device)
                start = time.perf_counter()
                fit(model, data, cfg.solver, cfg.augment, ReidLoss(cfg.loss))
                seconds = time.perf_counter() - start
                result = evaluate_splits(model, query, gallery, base.evaluate, str(device))
                metrics = {**result.as_metrics(), "train_seconds": seconds}
                mlflow.log_metrics(metrics)
                results.append(metrics)
        mean = {k: float(np.mean([r[k] for r in results])) for k in results[0]}
        rows.append(AblationRow(name, tuple(overrides), mean["rank1"], mean["mAP"],
                                mean["mINP"], mean["train_seconds"], len(seeds)))  # fmt: skip
    return rows


def ablation_table(rows: Sequence[AblationRow]) -> str:
    """A Markdown table of the variants with the change in mAP each trick brought."""
    lines = [
        "| variant | rank-1 | mAP | mINP | Δ mAP | train s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    previous = None
    for row in rows:
        delta = "" if previous is None else f"{100 * (row.mAP - previous):+.1f}"
        lines.append(
            f"| {row.variant} | {100 * row.rank1:.1f} | {100 * row.mAP:.1f} | "
            f"{100 * row.mINP:.1f} | {delta} | {row.seconds:.0f} |"
        )
        previous = row.mAP
    return "\n".join(lines) + "\n"
