"""Training parity with FastReID: one recipe, one synthetic dataset, both trainers, several seeds.

The recipe is a reidflow config (default: configs/recipes/parity_bagtricks_R18.yaml, FastReID's
bag of tricks with ResNet-18 from scratch); `fastreid_options` writes the same recipe as
FastReID config keys, and `fastreid_driver.py` trains it with FastReID 1.4.0's own code in its
own virtual environment (`make parity-venv`). Both sides train on the same generated dataset
(Market-1501 layout, `reid data synth`), on the same CPU threads, one after the other for each
seed, and are scored by their own evaluators under the same protocol (cosine, no re-ranking).
Printed: rank-1 / mAP / mINP and the final training loss (mean ± std over seeds), training
images/s and their ratio, and both sides' loss curves per epoch. The speed ratio that counts is
the median of short interleaved rounds (`--speed-rounds`): this machine's speed drifts by ±20 %
over minutes, so two 10-minute runs taken one after the other can disagree by that much.

    make parity   # the FastReID venv, then both parity presets (~105 min on 2 cores)
    .venv/bin/python benchmarks/parity_fastreid.py --seeds 0 --set train.solver.epochs=10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from common import mean_and_std

from reid_core.config import DataConfig, ReidConfig, TrainConfig, load_config
from reid_core.data.manifest import build_manifest
from reid_core.data.splits import load_split
from reid_core.data.synth import SynthSpec, generate
from reid_core.engine.hooks import Hook
from reid_core.engine.trainer import TrainData, fit
from reid_core.evaluation.protocol import evaluate_splits
from reid_core.modeling import create_model
from reid_core.modeling.losses import ReidLoss

ROOT = Path(__file__).resolve().parents[1]
FASTREID, REIDFLOW = "FastReID 1.4.0", "reidflow"  # the two sides, as printed and saved
RECIPE = ROOT / "configs/recipes/parity_bagtricks_R18.yaml"
FASTREID_PYTHON = ROOT / ".venv-fastreid/bin/python"
DRIVER = Path(__file__).resolve().parent / "fastreid_driver.py"

# reidflow names -> FastReID's
DEPTHS = {"resnet18": "18x", "resnet34": "34x", "resnet50": "50x", "resnet101": "101x"}
POOLINGS = {
    "avg": "GlobalAvgPool",
    "max": "GlobalMaxPool",
    "gem": "GeneralizedMeanPooling",
    "gem_learnable": "GeneralizedMeanPoolingP",
}
CLASSIFIERS = {
    "linear": "Linear",
    "arcface": "ArcSoftmax",
    "cosface": "CosSoftmax",
    "circle": "CircleSoftmax",
}
OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}
SCHEDULERS = {"multistep": "MultiStepLR", "cosine": "CosineAnnealingLR"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=RECIPE, help="the recipe (reidflow YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-ids", type=int, default=120, help="synthetic identities")
    parser.add_argument("--images-per-id", type=int, default=10)
    parser.add_argument("--data", type=Path, help="generate the dataset here (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="FastReID's loader processes")
    parser.add_argument(
        "--speed-rounds", type=int, default=4, help="interleaved speed rounds (0: none)"
    )
    parser.add_argument("--speed-epochs", type=int, default=3, help="epochs of a speed round")
    parser.add_argument("--fastreid-python", type=Path, default=FASTREID_PYTHON)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--runs", type=Path, help="keep finished runs here (default: beside --json, .runs.json)"
    )
    return parser.parse_args()


def fastreid_options(train: TrainConfig, data: DataConfig, iters_per_epoch: int) -> list[str]:
    """The recipe as FastReID config KEY VALUE pairs; what FastReID cannot express is refused."""
    m, loss, s, aug = train.model, train.loss, train.solver, train.augment
    unsupported = {
        "backbone": m.backbone not in DEPTHS,
        "pooling": m.pooling not in POOLINGS,
        "head": m.head not in ("linear", "bnneck"),
        "neck_feat before (FastReID embeds after the neck)": m.neck_feat != "after",
        "pretrained": bool(m.pretrained),
        "sampler camera_balanced": s.sampler == "camera_balanced",
        "epoch_length identities": s.epoch_length != "images",
        "schedule_clock iterations": s.schedule_clock != "epochs_after_warmup",
        "amp, ema, precise BN, clipping": s.amp != "off"
        or s.ema_decay > 0
        or s.precise_bn_iters > 0
        or s.clip_grad > 0,
        "losses other than CE + triplet": loss.circle_weight
        + loss.cosface_weight
        + loss.focal_weight
        > 0,
        "augmentations other than flip, pad-crop, erasing": aug.patch_p
        + aug.cutout_p
        + aug.color_jitter_p
        + aug.autoaugment_p
        + aug.augmix_p
        > 0,
    }
    refused = [name for name, bad in unsupported.items() if bad]
    if refused:
        raise SystemExit(f"the parity benchmark cannot give FastReID: {', '.join(refused)}")
    width = create_model(m, 0).backbone.out_channels
    losses = [n for n, w in (("CrossEntropyLoss", loss.ce_weight),
                             ("TripletLoss", loss.triplet_weight)) if w > 0]  # fmt: skip
    size = f"[{data.height},{data.width}]"
    options = {
        "MODEL.BACKBONE.DEPTH": DEPTHS[m.backbone],
        "MODEL.BACKBONE.FEAT_DIM": width,
        "MODEL.BACKBONE.LAST_STRIDE": m.last_stride,
        "MODEL.BACKBONE.WITH_IBN": m.ibn == "a",
        "MODEL.BACKBONE.WITH_SE": m.se,
        "MODEL.BACKBONE.WITH_NL": m.non_local,
        "MODEL.BACKBONE.PRETRAIN": False,
        "MODEL.HEADS.WITH_BNNECK": m.head == "bnneck",
        "MODEL.HEADS.NECK_FEAT": m.metric_feat,
        "MODEL.HEADS.POOL_LAYER": POOLINGS[m.pooling],
        "MODEL.HEADS.CLS_LAYER": CLASSIFIERS[m.classifier],
        "MODEL.HEADS.SCALE": m.classifier_scale if m.classifier != "linear" else 1,
        "MODEL.HEADS.MARGIN": m.classifier_margin if m.classifier != "linear" else 0.0,
        "MODEL.LOSSES.NAME": tuple(losses),
        "MODEL.LOSSES.CE.EPSILON": loss.label_smoothing,
        "MODEL.LOSSES.CE.SCALE": loss.ce_weight,
        "MODEL.LOSSES.TRI.MARGIN": loss.triplet_margin,
        "MODEL.LOSSES.TRI.HARD_MINING": loss.triplet_mining == "hard",
        "MODEL.LOSSES.TRI.NORM_FEAT": loss.triplet_normalize,
        "MODEL.LOSSES.TRI.SCALE": loss.triplet_weight,
        "INPUT.SIZE_TRAIN": size,
        "INPUT.SIZE_TEST": size,
        "INPUT.FLIP.ENABLED": aug.flip_p > 0,
        "INPUT.FLIP.PROB": aug.flip_p,
        "INPUT.PADDING.ENABLED": aug.pad > 0,
        "INPUT.PADDING.SIZE": aug.pad,
        "INPUT.REA.ENABLED": aug.erasing_p > 0,
        "INPUT.REA.PROB": aug.erasing_p,
        "DATALOADER.SAMPLER_TRAIN": "NaiveIdentitySampler",
        "DATALOADER.NUM_INSTANCE": s.images_per_id,
        "SOLVER.OPT": OPTIMIZERS[s.optimizer],
        "SOLVER.BASE_LR": s.lr,
        "SOLVER.MOMENTUM": s.momentum,
        "SOLVER.NESTEROV": s.nesterov,
        "SOLVER.WEIGHT_DECAY": s.weight_decay,
        "SOLVER.WEIGHT_DECAY_NORM": s.weight_decay_norm,
        "SOLVER.WEIGHT_DECAY_BIAS": s.weight_decay_norm,  # reidflow decays biases as norms
        "SOLVER.BIAS_LR_FACTOR": s.bias_lr_factor,
        "SOLVER.HEADS_LR_FACTOR": s.heads_lr_factor,
        "SOLVER.MAX_EPOCH": s.epochs,
        "SOLVER.IMS_PER_BATCH": s.ids_per_batch * s.images_per_id,
        "SOLVER.SCHED": SCHEDULERS[s.scheduler],
        "SOLVER.STEPS": f"[{','.join(map(str, s.steps))}]",
        "SOLVER.GAMMA": s.gamma,
        "SOLVER.DELAY_EPOCHS": s.delay_epochs,
        "SOLVER.ETA_MIN_LR": s.lr * s.min_lr_factor,
        "SOLVER.WARMUP_METHOD": s.warmup_method,
        "SOLVER.WARMUP_FACTOR": s.warmup_factor,
        "SOLVER.WARMUP_ITERS": round(s.warmup_epochs * iters_per_epoch),
        "SOLVER.FREEZE_ITERS": s.freeze_iters,
        "MODEL.FREEZE_LAYERS": "['backbone']" if s.freeze_iters else "[]",
        "SOLVER.CHECKPOINT_PERIOD": s.epochs,
        "TEST.EVAL_PERIOD": s.epochs,  # once, at the end
        "TEST.METRIC": "cosine",
        "TEST.IMS_PER_BATCH": 128,
    }
    return [str(x) for key, value in options.items() for x in (key, value)]


class LossAndSpeed(Hook):
    """Each step's total loss and wall time (the training steps alone)."""

    def __init__(self):
        self.losses: list[float] = []
        self.step_seconds: list[float] = []
        self._start = 0.0

    def before_step(self, trainer) -> None:
        self._start = time.perf_counter()

    def after_step(self, trainer) -> None:
        self.step_seconds.append(time.perf_counter() - self._start)
        self.losses.append(sum(trainer.losses().values()))


def train_reidflow(config: ReidConfig, seed: int, splits, epochs: int | None = None) -> dict:
    """Train and evaluate; with `epochs`, train only that long (a speed round)."""
    train_split, query, gallery = splits
    section = config.train
    solver = section.solver.model_copy(
        update={"seed": seed, "epochs": epochs or section.solver.epochs}
    )
    data = TrainData.from_split(train_split)
    torch.manual_seed(seed)
    model = create_model(section.model, int(len(np.unique(data.labels))))
    recorder = LossAndSpeed()
    fit(model, data, solver, section.augment, ReidLoss(section.loss), [recorder])
    seconds = sum(recorder.step_seconds)
    batch = solver.ids_per_batch * solver.images_per_id
    out = {
        "losses": recorder.losses,
        "step_seconds": recorder.step_seconds,
        "train_seconds": seconds,
        "images_per_second": len(recorder.losses) * batch / seconds,
    }
    if epochs is None:
        rank = evaluate_splits(model, query, gallery, config.evaluate).rank
        out.update(rank1=100 * float(rank.cmc[0]), mAP=100 * rank.mAP, mINP=100 * rank.mINP)
    return out


def train_fastreid(
    args: argparse.Namespace, dataset: Path, options: list[str], seed: int, speed_round=False
) -> dict:
    """Train (and, unless `speed_round`, evaluate) with FastReID's code in its own venv."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [str(args.fastreid_python), str(DRIVER), "--dataset", str(dataset),
                   "--out", str(out), "--seed", str(seed), "--threads", str(args.threads),
                   "--workers", str(args.workers), *(["--no-eval"] if speed_round else []),
                   *options]  # fmt: skip
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            raise SystemExit(f"FastReID's run failed (exit {done.returncode})")
        return json.loads(out.read_text())


def steady_speed(run: dict, batch: int, warmup: int = 2) -> float:
    """Images/s over the steps after the first `warmup` (kernel set-up, loader start)."""
    return batch * len(run["step_seconds"][warmup:]) / sum(run["step_seconds"][warmup:])


def speed_rounds(args, config: ReidConfig, dataset: Path, options: list[str], splits) -> list:
    """Both trainers for `--speed-epochs` each, interleaved `--speed-rounds` times, the order
    swapped every round: the machine's speed drifts by ±20 % over minutes here, so only
    measurements taken side by side in time are compared. [(FastReID, reidflow) images/s]"""
    epochs = args.speed_epochs
    short = list(options)
    short[short.index("SOLVER.MAX_EPOCH") + 1] = str(epochs)
    solver = config.train.solver
    batch = solver.ids_per_batch * solver.images_per_id
    sides = {
        FASTREID: partial(train_fastreid, args, dataset, short, 0, speed_round=True),
        REIDFLOW: partial(train_reidflow, config, 0, splits, epochs=epochs),
    }
    rounds = []
    for r in range(args.speed_rounds):
        order = [FASTREID, REIDFLOW] if r % 2 == 0 else [REIDFLOW, FASTREID]
        speed = {side: steady_speed(sides[side](), batch) for side in order}
        rounds.append((speed[FASTREID], speed[REIDFLOW]))
        print(f"speed round {r + 1}: FastReID {speed[FASTREID]:.1f}, reidflow "
              f"{speed[REIDFLOW]:.1f} images/s, {speed[REIDFLOW] / speed[FASTREID]:.2f}×",
              flush=True)  # fmt: skip
    return rounds


def per_epoch(losses: list[float], iters_per_epoch: int) -> list[float]:
    epochs = np.array(losses[: len(losses) // iters_per_epoch * iters_per_epoch])
    return epochs.reshape(-1, iters_per_epoch).mean(axis=1).tolist()


def summarise(runs: list[dict], iters_per_epoch: int) -> dict:
    curves = [per_epoch(r["losses"], iters_per_epoch) for r in runs]
    kept = [{**{k: v for k, v in r.items() if k not in ("losses", "step_seconds")},
             "final_loss": curve[-1]} for r, curve in zip(runs, curves, strict=True)]  # fmt: skip
    out = mean_and_std(kept, ("rank1", "mAP", "mINP", "final_loss", "images_per_second"))
    out["loss_per_epoch"] = np.mean(curves, axis=0).round(4).tolist()
    return {**out, "runs": kept}


def main() -> None:
    args = parse_args()
    if not args.fastreid_python.is_file():
        raise SystemExit(f"{args.fastreid_python} not found: run `make parity-venv` first")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    config = load_config([args.config], args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.data or Path(tmp) / "data"
        spec = SynthSpec(num_ids=args.num_ids, images_per_id=args.images_per_id,
                         height=config.data.height, width=config.data.width)  # fmt: skip
        counts = generate(dataset, spec)
        manifest = build_manifest(dataset, "market1501")
        h, w = config.data.height, config.data.width
        splits = [load_split(dataset, manifest, s, h, w) for s in ("train", "query", "gallery")]
        solver = config.train.solver
        iters_per_epoch = counts["train"] // (solver.ids_per_batch * solver.images_per_id)
        options = fastreid_options(config.train, config.data, iters_per_epoch)
        # every finished run is kept (--runs), so that an interrupted benchmark resumes; each
        # side's runs are keyed by what it trains with (FastReID's options, reidflow's resolved
        # train section), so an edited recipe never reuses stale runs, and recipes that differ
        # only in what FastReID cannot see (reidflow's own choices) share FastReID's runs
        saved = args.runs or (args.json.with_suffix(".runs.json") if args.json else None)
        done = json.loads(saved.read_text()) if saved and saved.is_file() else {}
        data_key = [args.num_ids, args.images_per_id]
        reidflow_key = config.train.model_dump(mode="json")
        runs: dict[str, list[dict]] = {FASTREID: [], REIDFLOW: []}
        for seed in args.seeds:
            keys = {
                FASTREID: json.dumps([options, seed, data_key]),
                REIDFLOW: json.dumps([reidflow_key, seed, data_key]),
            }
            for side, train in (
                (FASTREID, partial(train_fastreid, args, dataset, options, seed)),
                (REIDFLOW, partial(train_reidflow, config, seed, splits)),
            ):
                if keys[side] not in done.setdefault(side, {}):
                    done[side][keys[side]] = train()
                    if saved:
                        saved.parent.mkdir(parents=True, exist_ok=True)
                        saved.write_text(json.dumps(done) + "\n")
            for side, side_runs in runs.items():
                side_runs.append(done[side][keys[side]])
                r = side_runs[-1]
                print(
                    f"seed {seed} {side}: rank-1 {r['rank1']:.1f} mAP {r['mAP']:.1f} "
                    f"mINP {r['mINP']:.1f} {r['images_per_second']:.1f} images/s",
                    flush=True,
                )
        rounds = speed_rounds(args, config, dataset, options, splits)
    rows = {side: summarise(side_runs, iters_per_epoch) for side, side_runs in runs.items()}
    ours, ref = rows[REIDFLOW], rows[FASTREID]
    speed = ours["images_per_second"] / ref["images_per_second"]
    round_ratios = [b / a for a, b in rounds]

    print(
        f"\n{counts['train']} training images of {counts['train_ids']} ids, "
        f"{iters_per_epoch} iterations per epoch, {solver.epochs} epochs, seeds {args.seeds}, "
        f"{args.threads} threads; recipe {args.config.name} {' '.join(args.overrides)}"
    )
    print("| | rank-1 | mAP | mINP | final training loss | images/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for side, row in rows.items():
        cells = [f"{row[k]:.1f} ± {row[k + '_std']:.1f}" for k in ("rank1", "mAP", "mINP")]
        cells.append(f"{row['final_loss']:.2f} ± {row['final_loss_std']:.2f}")
        cells.append(f"{row['images_per_second']:.1f} ± {row['images_per_second_std']:.1f}")
        print(f"| {side} | {' | '.join(cells)} |")
    print(f"reidflow − FastReID: mAP {ours['mAP'] - ref['mAP']:+.1f}, rank-1 "
          f"{ours['rank1'] - ref['rank1']:+.1f}; speed {speed:.2f}× (full runs)")  # fmt: skip
    if rounds:
        print(f"interleaved speed rounds ({args.speed_epochs} epochs each): reidflow/FastReID "
              f"images/s {', '.join(f'{x:.2f}' for x in round_ratios)}; "
              f"median {np.median(round_ratios):.2f}×")  # fmt: skip
    print("\nloss per epoch (mean over seeds)")
    print("| epoch | FastReID | reidflow |")
    print("| --- | --- | --- |")
    for e, (a, b) in enumerate(zip(ref["loss_per_epoch"], ours["loss_per_epoch"], strict=True)):
        if e < 5 or e % 5 == 4 or e == len(ours["loss_per_epoch"]) - 1:
            print(f"| {e + 1} | {a:.3f} | {b:.3f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"recipe": args.config.name, "overrides": args.overrides, "seeds": args.seeds,
                "dataset": counts, "iters_per_epoch": iters_per_epoch, "threads": args.threads,
                "speed_ratio": speed, "speed_rounds": rounds,
                "speed_ratio_interleaved": np.median(round_ratios) if rounds else None}  # fmt: skip
        args.json.write_text(json.dumps({"meta": meta, **rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
