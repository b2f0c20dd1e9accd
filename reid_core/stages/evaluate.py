"""Stage: one model on one or more test sets → CMC, mAP, mINP, TAR@FAR (Market-1501 protocol).

Each test set is a dataset folder with its manifest; its name is the manifest's domain (or, if
that is empty, the dataset folder's name), followed by `-<test set>` for a layout with several
(VehicleID's `-800`), and must be unique. A set without a fixed query and gallery (VehicleID)
is scored on `evaluate.gallery_draws` seeded draws: its metrics are the means, with each
spread as `<metric>_std`.

The first test set is the primary one: its metrics are the flat keys of the metrics JSON
(`EvaluationRecord`; what promote judges) and are logged to MLflow unprefixed; every set's
metrics also go in the JSON's `test_sets` table and to MLflow as `<set>/<metric>`. The report
folder holds the table (Markdown, HTML) and each set's PNGs (see
`reid_core.evaluation.reports`); features go to `<features>/<set>.npz`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from reid_core.artifacts import (
    EvaluatedSet,
    EvaluationRecord,
    FeatureSet,
    ModelLineage,
    SplitFeatures,
)
from reid_core.atomic import atomic_output, remove_outputs
from reid_core.config import EvaluateConfig, ReidConfig
from reid_core.data.gallery_draws import Trial, gallery_draws
from reid_core.data.manifest import read_manifest
from reid_core.data.readers import GALLERY_DRAWS
from reid_core.data.splits import load_split
from reid_core.engine.checkpoint import META, load_checkpoint
from reid_core.engine.device import resolve_device
from reid_core.evaluation import extract_features
from reid_core.evaluation.protocol import evaluate_distances, evaluation_distances
from reid_core.evaluation.repeated import RepeatedResult
from reid_core.evaluation.reports import SetReport, curves, rank_list_image, write_report
from reid_core.evaluation.verification import VerificationResult
from reid_core.stages import PortError
from reid_core.tracking.runs import stage_run
from reid_core.tracking.trained_by import training_run_id

if TYPE_CHECKING:
    from reid_core.modeling.model import ReidModel

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class EvaluationSet:
    """One test set: a dataset folder and its manifest (path, rows, metadata), and its name."""

    name: str
    dataset: Path
    manifest: Path
    rows: pd.DataFrame
    meta: dict[str, str]


def load_test_sets(datasets: Sequence[Path], manifests: Sequence[Path]) -> list[EvaluationSet]:
    """Pair datasets with manifests in order and name them; bad or duplicate names fail."""
    if len(datasets) != len(manifests) or not datasets:
        raise PortError(
            f"evaluate: {len(datasets)} datasets and {len(manifests)} manifests: "
            "give one manifest per dataset, in the same order"
        )
    sets: list[EvaluationSet] = []
    for dataset, manifest in zip(datasets, manifests, strict=True):
        df, meta = read_manifest(manifest)
        name = meta.get("domain") or Path(dataset).resolve().name
        if meta.get("test_set"):
            name = f"{name}-{meta['test_set']}"
        if not _NAME.match(name):
            raise PortError(
                f"evaluate: test set name {name!r} (domain of {manifest}, else the dataset "
                "folder name) may hold only letters, digits, '.', '_' and '-'"
            )
        for other in sets:
            if other.name.casefold() == name.casefold():
                raise PortError(
                    f"evaluate: two test sets are named {name!r}: {other.dataset} "
                    f"({other.manifest}) and {dataset} ({manifest}); a test set is named by its "
                    "manifest's domain (preprocess --set data.domain=...): give each its own"
                )
        sets.append(EvaluationSet(name, Path(dataset), Path(manifest), df, meta))
    return sets


def run(
    config: ReidConfig, inputs: Mapping[str, Path], outputs: Mapping[str, Path]
) -> dict[str, float]:
    import mlflow

    cfg = config.evaluate
    remove_outputs(*outputs.values())  # a failed evaluation leaves no stale result behind
    sets = load_test_sets(inputs["dataset"], inputs["manifest"])
    primary = sets[0]
    model, model_meta = load_checkpoint(inputs["model"])
    lineage = ModelLineage.from_meta(model_meta, Path(inputs["model"]) / META)
    device = resolve_device(config.runtime.device)
    model.to(device)
    role = lineage.role
    names = [s.name for s in sets]
    with stage_run("evaluate", config):
        mlflow.set_tags(
            {
                "reid.model_stage": lineage.stage,
                "reid.domain": primary.meta.get("domain", ""),
                "reid.test_sets": ",".join(names),
                "reid.model_run_id": training_run_id(inputs["model"]),
                "reid.eval_set_hash": primary.meta.get("eval_set_hash", ""),
                "mlflow.runName": f"evaluate {role}@{'+'.join(names)}",
            }
        )
        with (
            atomic_output(outputs["report"], directory=True) as report_dir,
            atomic_output(outputs["features"], directory=True) as features_dir,
            atomic_output(outputs["metrics"]) as metrics_file,
        ):
            rows: dict[str, dict[str, float]] = {}
            reports: list[SetReport] = []
            primary_roc: VerificationResult | None = None
            for test_set in sets:
                metrics, verification, images = _evaluate_set(
                    model,
                    model_meta,
                    test_set,
                    cfg,
                    str(device),
                    report_dir / test_set.name,
                    features_dir / f"{test_set.name}.npz",
                    title=f"{role}@{test_set.name}",
                )
                rows[test_set.name] = metrics
                reports.append(SetReport(test_set.name, metrics, images))
                if primary_roc is None:
                    primary_roc = verification
            title = f"{role} ({lineage.stage})"
            write_report(report_dir, title, reports, cfg.fars, primary_roc)
            logged = {**rows[primary.name]}
            logged.update({f"{n}/{k}": v for n, m in rows.items() for k, v in m.items()})
            mlflow.log_metrics(logged)
            mlflow.log_artifacts(str(report_dir), "reports")
            record = EvaluationRecord(
                metrics=rows[primary.name],
                model_stage=lineage.stage,
                domain=primary.meta.get("domain", ""),
                test_set=primary.name,
                eval_set_hash=primary.meta.get("eval_set_hash", ""),
                metric=cfg.metric,
                flip=cfg.flip,
                query_expansion=cfg.query_expansion,
                rerank=cfg.rerank,
                test_sets={
                    s.name: EvaluatedSet(
                        metrics=rows[s.name],
                        domain=s.meta.get("domain", ""),
                        eval_set_hash=s.meta.get("eval_set_hash", ""),
                        dvc_md5=s.meta.get("dvc_md5", ""),
                    )
                    for s in sets
                },
            )
            metrics_file.write_text(record.to_json())
    return logged


def _evaluate_set(
    model: ReidModel,
    model_meta: Mapping[str, Any],
    test_set: EvaluationSet,
    cfg: EvaluateConfig,
    device: str,
    report_dir: Path,
    features: Path,
    title: str,
) -> tuple[dict[str, float], VerificationResult, list[Path]]:
    """Metrics of one test set; writes its PNGs into `report_dir` and its features file.

    A set whose protocol is GALLERY_DRAWS is scored on `cfg.gallery_draws` draws of its
    query+gallery images, and its metrics are their means and `<metric>_std`; the figures and
    the features file show the first draw.
    """
    h, w = model_meta["height"], model_meta["width"]
    sides = []
    for split in ("query", "gallery"):
        rows = load_split(test_set.dataset, test_set.rows, split, h, w)
        feats = extract_features(model, rows.images, cfg.batch_size, cfg.flip)
        sides.append(SplitFeatures(feats, rows.pids, rows.camids, rows.paths))
    pool = SplitFeatures.concat(*sides)
    drawn = test_set.meta.get("protocol") == GALLERY_DRAWS
    if drawn:
        trials = gallery_draws(pool.pids, cfg.gallery_draws, cfg.draw_seed)
    else:
        num_q = len(sides[0])
        trials = [Trial(gallery=np.arange(num_q, len(pool)), query=np.arange(num_q))]
    results, shown = [], None
    for trial in trials:
        query, gallery = pool.take(trial.query), pool.take(trial.gallery)
        dist = evaluation_distances(query.feats, gallery.feats, cfg, device)
        results.append(evaluate_distances(dist, query, gallery, cfg, verify=True))
        if shown is None:
            shown = (query, gallery, dist)
    query, gallery, dist = shown
    result = results[0]
    verification = result.verification  # asked for: not None
    labels = (query.pids, gallery.pids, query.camids, gallery.camids)
    report_dir.mkdir()
    images = [
        rank_list_image(
            report_dir / "rank_list.png",
            test_set.dataset,
            dist,
            (query.paths, query.pids, query.camids),
            (gallery.paths, gallery.pids, gallery.camids),
        ),
        *curves(report_dir, result.rank, verification, dist, *labels, title),
    ]
    FeatureSet(query=query, gallery=gallery, normalized=False).save(features)
    metrics = RepeatedResult(results).as_metrics() if drawn else result.as_metrics()
    return metrics, verification, images
