"""Distillation on the synthetic source domain: teacher, student alone, student distilled.

One teacher is trained (the `train` section of the config, backbone overridable); then each
student backbone is trained with its own re-id loss alone and with the teacher's knowledge
(the `distill` section's loss terms), for every seed, on the same budget (`distill.solver`).
Reported: rank-1/mAP means (± std) over seeds and each model's ONNX Runtime CPU latency at
batch 1 and 32, with the goal of the issue: the distilled student keeps ≥ 90 % of the
teacher's mAP at ≤ ⅓ of its latency.

    make demo   # once: the synthetic data and manifests under data/ and work/
    python benchmarks/distill_synthetic.py --students resnet18:16 mobilenetv3_small
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import mean_and_std, onnx_latency_ms, percent_metrics, synthetic_domain

from reid_core.config import ModelConfig
from reid_core.distill.losses import DistillLoss
from reid_core.engine.checkpoint import load_checkpoint, save_checkpoint
from reid_core.engine.trainer import TrainData, fit
from reid_core.modeling import ReidModel, create_model
from reid_core.modeling.losses import ReidLoss

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=ROOT / "data/datasets/source")
    parser.add_argument("--manifest", type=Path, default=ROOT / "work/manifests/source.parquet")
    parser.add_argument("--config", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--teacher", default="resnet34:32", help="backbone[:base_width]")
    parser.add_argument("--students", nargs="+", default=["resnet18:16", "mobilenetv3_small"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--teacher-cache", type=Path, help="reuse the teacher checkpoint here, or save it there"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def model_config(base: ModelConfig, spec: str) -> ModelConfig:
    """`base` with the backbone of a `name[:base_width]` spec."""
    name, _, width = spec.partition(":")
    update = {"backbone": name, "base_width": int(width) if width else 64}
    return base.model_copy(update=update)


def train(model: ReidModel, data: TrainData, section, loss) -> float:
    start = time.perf_counter()
    fit(model, data, section.solver, section.augment, loss)
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    config, train_split, query, gallery = synthetic_domain(
        args.config, args.overrides, args.dataset, args.manifest, args.threads
    )
    h, w = config.data.height, config.data.width
    data = TrainData.from_split(train_split)
    num_ids = len(np.unique(data.labels))

    if args.teacher_cache and args.teacher_cache.is_dir():
        teacher, meta = load_checkpoint(args.teacher_cache)
        seconds = meta["train_seconds"]
    else:
        torch.manual_seed(0)
        teacher = create_model(model_config(config.train.model, args.teacher), num_ids)
        seconds = train(teacher, data, config.train, ReidLoss(config.train.loss))
        if args.teacher_cache:
            save_checkpoint(args.teacher_cache, teacher, {"height": h, "width": w,
                                                          "train_seconds": seconds})  # fmt: skip
    teacher_row = {**percent_metrics(teacher, query, gallery, config), "seconds": seconds}
    teacher_row.update(onnx_latency_ms(teacher, h, w, args.threads))
    print(f"teacher {args.teacher}: {teacher_row}", flush=True)

    rows = {f"teacher {args.teacher}": teacher_row}
    for spec in args.students:
        student_config = model_config(config.distill.model, spec)
        results: dict[str, list[dict]] = {"alone": [], "distilled": []}
        for seed in args.seeds:
            section = config.distill.model_copy(
                update={"solver": config.distill.solver.model_copy(update={"seed": seed})}
            )
            for kind in results:
                torch.manual_seed(seed)
                student = create_model(student_config, num_ids)
                if kind == "alone":
                    loss = ReidLoss(section.loss)
                else:
                    loss = DistillLoss(student, [teacher], section, (h, w))
                seconds = train(student, data, section, loss)
                if kind == "distilled":
                    loss.close()
                run = {**percent_metrics(student, query, gallery, config), "seconds": seconds}
                results[kind].append(run)
                print(f"student {spec} {kind} seed {seed}: {run}", flush=True)
        latency = onnx_latency_ms(student, h, w, args.threads)
        for kind, runs in results.items():
            rows[f"student {spec} {kind}"] = {
                **mean_and_std(runs, ("rank1", "mAP", "seconds")),
                **latency,
                "runs": runs,
            }
        distilled = rows[f"student {spec} distilled"]
        distilled["mAP_retained"] = distilled["mAP"] / teacher_row["mAP"]
        distilled["latency_ratio_b1"] = latency["batch1_ms"] / teacher_row["batch1_ms"]
        distilled["latency_ratio_b32"] = latency["batch32_ms"] / teacher_row["batch32_ms"]
        distilled["goal_met"] = bool(
            distilled["mAP_retained"] >= 0.9
            and max(distilled["latency_ratio_b1"], distilled["latency_ratio_b32"]) <= 1 / 3
        )

    print()
    print(f"{len(args.seeds)} seeds; distill loss: {config.distill.logit_loss} ×"
          f"{config.distill.logit_weight} (T={config.distill.temperature}), PKT ×"
          f"{config.distill.pkt_weight}, features ×{config.distill.feature_weight}")  # fmt: skip
    print("| model | rank-1 | mAP | ORT b1 (ms) | ORT b32 (ms) |")
    print("| --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        spread = f" ± {row['mAP_std']:.1f}" if "mAP_std" in row else ""
        print(f"| {name} | {row['rank1']:.1f} | {row['mAP']:.1f}{spread} | "
              f"{row['batch1_ms']:.2f} | {row['batch32_ms']:.1f} |")  # fmt: skip
    for name, row in rows.items():
        if "goal_met" in row:
            print(f"{name}: keeps {100 * row['mAP_retained']:.0f} % of the teacher's mAP at "
                  f"{row['latency_ratio_b1']:.2f}× (b1) / {row['latency_ratio_b32']:.2f}× (b32) "
                  f"its latency; goal {'met' if row['goal_met'] else 'NOT met'}")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
