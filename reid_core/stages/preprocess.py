"""Stage: dataset folder → manifest (Parquet) + validation report; no manifest if invalid."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from reid_core.atomic import remove_outputs
from reid_core.config import ReidConfig
from reid_core.data.errors import DatasetError
from reid_core.data.manifest import (
    build_manifest,
    dataset_fingerprint,
    eval_set_hash,
    write_manifest,
)
from reid_core.data.readers import READERS, resolve_test_set
from reid_core.sources import NO_DATASET, read_record
from reid_core.tracking.lineage import dvc_hash
from reid_core.tracking.runs import stage_run


class ValidationFailed(DatasetError):
    """The dataset did not pass its expectation suite."""


def run(
    config: ReidConfig, inputs: Mapping[str, Path], outputs: Mapping[str, Path]
) -> dict[str, float]:
    import mlflow

    from reid_core.validation.suite import html_report_path, validate_manifest, write_report

    root = inputs["dataset"]
    # a failed run must not leave the previous run's manifest or its "passed" report behind
    remove_outputs(outputs["manifest"], outputs["report"], html_report_path(outputs["report"]))
    record = read_record(root)
    if record is not None and record.kind == NO_DATASET:
        raise DatasetError(
            f"{root}: no dataset to preprocess (datasets.{config.data.domain} is empty). The "
            "local pipeline (dvc.yaml) adapts to a target dataset: name one in params.yaml; "
            "only the Kubeflow pipeline skips adaptation for an empty target."
        )
    with stage_run("preprocess", config):
        mlflow.set_tag("reid.domain", config.data.domain)
        # unreadable images get size 0×0: validation decodes all and lists every one
        data = config.data
        layout = READERS[data.format]
        test_set = resolve_test_set(data.format, data.test_set)
        df = build_manifest(root, data.format, domain=data.domain, strict=False, test_set=test_set)
        report = validate_manifest(
            df,
            root,
            min_side=data.min_image_side,
            max_side=data.max_image_side,
            required_splits=layout.splits,
        )
        write_report(report, outputs["report"])
        mlflow.log_artifact(str(outputs["report"]), "validation")
        counts = df["split"].value_counts()
        metrics = {
            f"{split}_images": float(counts.get(split, 0))
            for split in ("train", "query", "gallery")
        }
        metrics["train_ids"] = float(df.loc[df["split"] == "train", "pid"].nunique())
        metrics["failed_expectations"] = float(len(report.failures()))
        mlflow.log_metrics(metrics)
        if not report.success:
            raise ValidationFailed(
                f"dataset {root} failed validation; see {outputs['report']}:\n  "
                + "\n  ".join(report.failures())
            )
        write_manifest(
            df,
            outputs["manifest"],
            {
                "dataset_root": str(root),
                "format": config.data.format,
                "domain": config.data.domain,
                "test_set": test_set,
                "protocol": layout.protocol,
                "fingerprint": dataset_fingerprint(root, df),
                "dvc_md5": dvc_hash(root),
                "eval_set_hash": eval_set_hash(df),
                "data_lineage": json.dumps(
                    record.lineage_tags(config.data.domain) if record else {}, sort_keys=True
                ),
            },
        )
    return metrics
