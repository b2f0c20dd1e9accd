"""Stage: pseudo-label rounds on the target domain's train split (its ids stay hidden).

Each round (see `reid_core.uda.rounds`) logs its clustering, the pseudo labels' quality and
the target mAP (query/gallery of the same manifest) at step = round number; step 0 is the
model before adaptation. A round whose clustering cannot be trained on stops the stage
early, keeping the previous round's model as the output. Finished rounds are kept in the
state dir, so a killed stage resumes at the round it was in, logging into the same MLflow run.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from reid_core.atomic import write_json
from reid_core.config import ReidConfig
from reid_core.data.manifest import read_manifest
from reid_core.data.splits import Split, load_split
from reid_core.engine.checkpoint import load_checkpoint, save_checkpoint, weights_digest
from reid_core.engine.device import resolve_device
from reid_core.engine.hooks import default_hooks
from reid_core.evaluation.protocol import evaluate_splits
from reid_core.modeling.model import ReidModel
from reid_core.stages._fit import finish, state_dir
from reid_core.tracking.metric_sink import MlflowSink
from reid_core.tracking.resume import log_step_metrics
from reid_core.tracking.runs import stage_run
from reid_core.uda.pseudo_labels import PseudoLabelError
from reid_core.uda.rounds import adapt_round


def run(
    config: ReidConfig, inputs: Mapping[str, Path], outputs: Mapping[str, Path]
) -> dict[str, float]:
    import mlflow

    cfg = config.adapt
    model, _ = load_checkpoint(inputs["model"])
    df, data_meta = read_manifest(inputs["manifest"])
    # the state folder first: a re-run of an interrupted stage reopens the run recorded there
    source_weights = weights_digest(inputs["model"])
    resume_dir = state_dir(config, "adapt", cfg, data_meta, [source_weights])
    with stage_run("adapt", config, resume_dir):
        device = resolve_device(config.runtime.device)
        model.to(device)
        splits = _target_splits(config, inputs["dataset"], df)
        metrics: dict[str, float] = {"rounds_completed": 0.0}
        evaluate = _target_evaluation(config, splits, device)
        first = cfg.start_round
        if first == 0:
            log_step_metrics(evaluate(model), 0)
        start = time.perf_counter()
        for rnd in range(first, first + cfg.rounds):
            done = resume_dir / f"round{rnd + 1}"
            if done.is_dir():
                model, _ = load_checkpoint(done)
                model.to(device)
                print(f"adapt: round {rnd + 1} was finished before, resuming after it")
                metrics["rounds_completed"] += 1
                continue
            try:
                if "train" not in splits:
                    raise PseudoLabelError("the target set has no train images to adapt on")
                found = adapt_round(
                    model,
                    splits["train"],
                    cfg,
                    rnd,
                    config.evaluate.batch_size,
                    default_hooks(
                        f"adapt round {rnd + 1}",
                        cfg.log_every,
                        [MlflowSink()],
                        prefix=f"round{rnd + 1}_",
                    ),  # fmt: skip
                    state_dir=resume_dir / f"round{rnd + 1}-training",
                )
            except PseudoLabelError as err:
                kept = f"round {rnd}'s model" if rnd > first else "the input model"
                message = f"adapt: round {rnd + 1} stopped, keeping {kept}: {err}"
                print(message, file=sys.stderr)
                mlflow.set_tag("reid.stopped", message)
                metrics["stopped_at_round"] = float(rnd + 1)
                break
            found.update(evaluate(model))
            log_step_metrics(found, rnd + 1)
            save_checkpoint(done, model, {"height": config.data.height, "width": config.data.width})
            metrics.update(found)
            metrics["rounds_completed"] += 1
        mlflow.log_metrics(
            {"rounds_completed": metrics["rounds_completed"],
             "train_seconds": time.perf_counter() - start}
        )  # fmt: skip
        finish(
            "adapt",
            config,
            model,
            data_meta,
            outputs["checkpoint"],
            role="adapted",
            source_weights_sha256=source_weights,
            rounds_completed=int(metrics["rounds_completed"]),
        )
        write_json(outputs["metrics"], metrics)
    shutil.rmtree(resume_dir, ignore_errors=True)  # complete, and its run is closed
    return metrics


def _target_splits(config: ReidConfig, dataset: Path, df) -> dict[str, Split]:
    """The target's train, query and gallery splits that the manifest has."""
    h, w = config.data.height, config.data.width
    present = set(df["split"])  # a missing split skips adapting or evaluating, with a message
    return {
        name: load_split(dataset, df, name, h, w)
        for name in ("train", "query", "gallery")
        if name in present
    }


def _target_evaluation(config: ReidConfig, splits: dict[str, Split], device):
    """Target rank metrics of a model, named as evaluate names them after `target_`
    (`target_rank1`, `target_mAP`, ...); {} when the target has no labelled query/gallery."""

    def evaluate(model: ReidModel) -> dict[str, float]:
        if "query" not in splits or "gallery" not in splits:
            return {}
        result = evaluate_splits(model, splits["query"], splits["gallery"], config.evaluate,
                                 str(device))  # fmt: skip
        return result.as_metrics("target_")

    return evaluate
