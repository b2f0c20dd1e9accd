"""Stage: one model on one or more test sets → CMC, mAP, mINP, TAR@FAR (Market-1501 protocol).

Each test set is a dataset folder with its manifest; its name is the manifest's domain (or, if
that is empty, the dataset folder's name), followed by `-<test set>` for a layout with several
(VehicleID's `-800`), and must be unique. A set without a fixed query and gallery (VehicleID)
is scored on `evaluate.gallery_draws` seeded draws: its metrics are the means, with each
spread as `<metric>_std`.

With `evaluate.dsr`, each query's top `evaluate.dsr_top_k` gallery items are re-scored by DSR
from the model's spatial feature maps, fused at `evaluate.dsr_weight` or at the weight with the
best mAP on the set named by `evaluate.dsr_validation`: an input set that is then not reported,
so the weight is never chosen on a test set.

The first test set is the primary one: its metrics are the flat keys of the metrics JSON
(`EvaluationRecord`; what promote judges) and are logged to MLflow unprefixed; every set's
metrics also go in the JSON's `test_sets` table and to MLflow as `<set>/<metric>`. The report
folder holds the table (Markdown, HTML) and each set's PNGs (see
`reid_core.evaluation.reports`); features go to `<features>/<set>.npz`."""

from __future__ import annotations

import logging
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
from reid_core.evaluation.dsr import TopKDsr, choose_rerank_weight, dsr_top_k
from reid_core.evaluation.features import extract_features_and_maps
from reid_core.evaluation.protocol import (
    DsrResult,
    EvaluationResult,
    evaluate_distances,
    evaluation_distances,
)
from reid_core.evaluation.repeated import RepeatedResult
from reid_core.evaluation.reports import SetReport, curves, rank_list_image, write_report
from reid_core.evaluation.verification import VerificationResult
from reid_core.stages import PortError
from reid_core.tracking.runs import stage_run
from reid_core.tracking.trained_by import training_run_id

if TYPE_CHECKING:
    from reid_core.modeling.model import ReidModel

log = logging.getLogger(__name__)
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


def _dsr_validation_set(sets: list[EvaluationSet], cfg: EvaluateConfig) -> EvaluationSet | None:
    """The set named by `evaluate.dsr_validation` (not a test set), or None."""
    if not (cfg.dsr and cfg.dsr_validation):
        return None
    names = [s.name for s in sets]
    if cfg.dsr_validation not in names:
        raise PortError(
            f"evaluate: evaluate.dsr_validation is {cfg.dsr_validation!r} but no input set is "
            f"named so (the sets: {', '.join(names)}); give the validation set as one more "
            "--dataset/--manifest pair"
        )
    if len(sets) < 2:
        raise PortError(
            f"evaluate: the only input set {cfg.dsr_validation!r} is the DSR validation set: "
            "give the test sets too"
        )
    return sets[names.index(cfg.dsr_validation)]


def run(
    config: ReidConfig, inputs: Mapping[str, Path], outputs: Mapping[str, Path]
) -> dict[str, float]:
    import mlflow

    cfg = config.evaluate
    remove_outputs(*outputs.values())  # a failed evaluation leaves no stale result behind
    sets = load_test_sets(inputs["dataset"], inputs["manifest"])
    validation = _dsr_validation_set(sets, cfg)
    sets = [s for s in sets if s is not validation]
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
            dsr_weight = cfg.dsr_weight  # None unless cfg.dsr (the config refuses it alone)
            if validation is not None:
                dsr_weight, tried = _choose_dsr_weight(
                    model, model_meta, validation, cfg, str(device)
                )
                shown = ", ".join(f"{w:.2f}: {m:.4f}" for w, m in tried.items())
                log.info("DSR weight %.2f chosen on %s (mAP by weight: %s)", dsr_weight,
                         validation.name, shown)  # fmt: skip
                mlflow.set_tags(
                    {"reid.dsr_weight": f"{dsr_weight:g}", "reid.dsr_validation": validation.name}
                )
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
                    dsr_weight=dsr_weight,
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
                dsr_weight=dsr_weight,
                dsr_validation=validation.name if validation else "",
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


@dataclass(frozen=True)
class _Embedded:
    """A test set through the model: query rows then gallery rows, with the spatial maps
    (row for row) when DSR needs them."""

    pool: SplitFeatures
    maps: np.ndarray | None
    num_query: int


def _embed(
    model: ReidModel, model_meta: Mapping[str, Any], test_set: EvaluationSet, cfg: EvaluateConfig
) -> _Embedded:
    h, w = model_meta["height"], model_meta["width"]
    sides, maps = [], []
    for split in ("query", "gallery"):
        rows = load_split(test_set.dataset, test_set.rows, split, h, w)
        if cfg.dsr:
            feats, spatial = extract_features_and_maps(model, rows.images, cfg.batch_size, cfg.flip)
            maps.append(spatial)
        else:
            feats = extract_features(model, rows.images, cfg.batch_size, cfg.flip)
        sides.append(SplitFeatures(feats, rows.pids, rows.camids, rows.paths))
    return _Embedded(
        SplitFeatures.concat(*sides), np.concatenate(maps) if maps else None, len(sides[0])
    )


def _trials(test_set: EvaluationSet, embedded: _Embedded, cfg: EvaluateConfig) -> list[Trial]:
    """The set's own query/gallery, or VehicleID's `cfg.gallery_draws` seeded draws."""
    if test_set.meta.get("protocol") == GALLERY_DRAWS:
        return gallery_draws(embedded.pool.pids, cfg.gallery_draws, cfg.draw_seed)
    num_q, total = embedded.num_query, len(embedded.pool)
    return [Trial(gallery=np.arange(num_q, total), query=np.arange(num_q))]


def _dsr_top_k(embedded: _Embedded, trial: Trial, dist: np.ndarray, cfg: EvaluateConfig) -> TopKDsr:
    assert embedded.maps is not None  # extracted whenever cfg.dsr
    q_maps, g_maps = embedded.maps[trial.query], embedded.maps[trial.gallery]
    return dsr_top_k(dist, q_maps, g_maps, cfg.dsr_top_k, cfg.dsr_lambda)


def _choose_dsr_weight(
    model: ReidModel,
    model_meta: Mapping[str, Any],
    validation: EvaluationSet,
    cfg: EvaluateConfig,
    device: str,
) -> tuple[float, dict[float, float]]:
    """The DSR fusion weight with the best mAP on the validation set (its first trial), and
    the mAP of each weight tried."""
    embedded = _embed(model, model_meta, validation, cfg)
    trial = _trials(validation, embedded, cfg)[0]
    query, gallery = embedded.pool.take(trial.query), embedded.pool.take(trial.gallery)
    dist = evaluation_distances(query.feats, gallery.feats, cfg, device)
    top = _dsr_top_k(embedded, trial, dist, cfg)
    return choose_rerank_weight(top, query.pids, gallery.pids, query.camids, gallery.camids)


def _evaluate_set(
    model: ReidModel,
    model_meta: Mapping[str, Any],
    test_set: EvaluationSet,
    cfg: EvaluateConfig,
    device: str,
    report_dir: Path,
    features: Path,
    title: str,
    dsr_weight: float | None = None,
) -> tuple[dict[str, float], VerificationResult, list[Path]]:
    """Metrics of one test set; writes its PNGs into `report_dir` and its features file.

    A set whose protocol is GALLERY_DRAWS is scored on `cfg.gallery_draws` draws of its
    query+gallery images, and its metrics are their means and `<metric>_std`; the figures and
    the features file show the first draw. With `dsr_weight`, each query's top
    `cfg.dsr_top_k` are re-scored by DSR (`DsrResult`): the rank list shows the fused order,
    the ROC and distance histogram the global distance.
    """
    embedded = _embed(model, model_meta, test_set, cfg)
    trials = _trials(test_set, embedded, cfg)
    results: list[EvaluationResult | DsrResult] = []
    shown = None
    for trial in trials:
        query, gallery = embedded.pool.take(trial.query), embedded.pool.take(trial.gallery)
        dist = evaluation_distances(query.feats, gallery.feats, cfg, device)
        result: EvaluationResult | DsrResult = evaluate_distances(
            dist, query, gallery, cfg, verify=True
        )
        ranked = dist
        if dsr_weight is not None:
            ranked = _dsr_top_k(embedded, trial, dist, cfg).fused(dsr_weight)
            fused = evaluate_distances(ranked, query, gallery, cfg).rank
            result = DsrResult(fused, result)
        results.append(result)
        if shown is None:
            shown = (query, gallery, dist, ranked)
    query, gallery, dist, ranked = shown
    result = results[0]
    verification = result.verification  # asked for: not None
    labels = (query.pids, gallery.pids, query.camids, gallery.camids)
    report_dir.mkdir()
    images = [
        rank_list_image(
            report_dir / "rank_list.png",
            test_set.dataset,
            ranked,
            (query.paths, query.pids, query.camids),
            (gallery.paths, gallery.pids, gallery.camids),
        ),
        *curves(report_dir, result.rank, verification, dist, *labels, title),
    ]
    FeatureSet(query=query, gallery=gallery, normalized=False).save(features)
    drawn = test_set.meta.get("protocol") == GALLERY_DRAWS
    metrics = RepeatedResult(results).as_metrics() if drawn else result.as_metrics()
    return metrics, verification, images
