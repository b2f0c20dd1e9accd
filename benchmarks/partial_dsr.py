"""Partial re-id with DSR on synthetic partial sets: global distance alone vs DSR re-ranking.

The demo's teacher (trained on the synthetic source, whole bodies) meets new people whose
queries are partial (`reid data synth --partial crop` or `occlude`; the gallery is whole). For
each mode a test set and a validation set of other people are generated; the fusion weight is
chosen on the validation set (as `evaluate.dsr_validation` does) and applied to the test set.
Reported per mode: rank-1 and mAP of the global distance, of the DSR re-ranking at the chosen
weight, of DSR alone (weight 1), and of the weight chosen on the test set itself (FastReID's
evaluator does this: an optimistic figure, shown only to measure how optimistic), with the
evaluation time of each.

    make demo   # once: the teacher under work/models/teacher
    python benchmarks/partial_dsr.py --json results/partial_dsr.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from reid_core.config import load_config
from reid_core.data.manifest import build_manifest
from reid_core.data.splits import load_split
from reid_core.data.synth import SynthSpec, generate
from reid_core.engine.checkpoint import load_checkpoint
from reid_core.evaluation.distance import compute_distance
from reid_core.evaluation.dsr import TopKDsr, choose_rerank_weight, dsr_top_k
from reid_core.evaluation.features import extract_features_and_maps
from reid_core.evaluation.rank import evaluate_rank

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "work/models/teacher")
    parser.add_argument("--config", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--modes", nargs="+", default=["crop", "occlude", "none"])
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def embedded(model, spec: SynthSpec, work: Path, h: int, w: int) -> tuple[TopKDsr, tuple]:
    """Generate the set, embed it with maps, and DSR-score each query's top-k."""
    root = work / f"{spec.partial}-{spec.seed}"
    generate(root, spec)
    manifest = build_manifest(root, "market1501")
    query, gallery = (load_split(root, manifest, s, h, w) for s in ("query", "gallery"))
    (qf, qm), (gf, gm) = (extract_features_and_maps(model, s.images) for s in (query, gallery))
    labels = (query.pids, gallery.pids, query.camids, gallery.camids)
    return dsr_top_k(compute_distance(qf, gf), qm, gm, ARGS.top_k), labels


def scores(top: TopKDsr, labels: tuple, weight: float) -> dict[str, float]:
    result = evaluate_rank(top.fused(weight), *labels)
    return {"rank1": 100 * float(result.cmc[0]), "mAP": 100 * result.mAP}


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    config = load_config([ARGS.config])
    model, meta = load_checkpoint(ARGS.model)
    h, w = meta["height"], meta["width"]
    synth = config.synth.model_dump() | {"style": "day"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ARGS.modes:
            start = time.perf_counter()
            # seeds other than the demo's 0 and 1: people the teacher never saw
            val, val_labels = embedded(
                model, SynthSpec(**synth | {"seed": 11, "partial": mode}), Path(tmp), h, w
            )
            test, test_labels = embedded(
                model, SynthSpec(**synth | {"seed": 10, "partial": mode}), Path(tmp), h, w
            )
            weight, _ = choose_rerank_weight(val, *val_labels)
            on_test, _ = choose_rerank_weight(test, *test_labels)
            rows.append(
                {
                    "queries": mode,
                    "global": scores(test, test_labels, 0.0),
                    "dsr_validation_weight": scores(test, test_labels, weight),
                    "weight": weight,
                    "dsr_alone": scores(test, test_labels, 1.0),
                    "dsr_test_weight": scores(test, test_labels, on_test),
                    "test_weight": on_test,
                    "seconds": time.perf_counter() - start,
                }
            )
    print(f"model {ARGS.model} ({meta.get('stage', '?')}), {h}×{w}, DSR top-{ARGS.top_k}")
    columns = ("global", "dsr_validation_weight", "dsr_alone", "dsr_test_weight")
    print("| queries | global r1 / mAP | DSR, w from validation | w | DSR alone | w from test |")
    print("| --- | --- | --- | ---: | --- | --- |")
    for r in rows:
        cell = {k: f"{r[k]['rank1']:.1f} / {r[k]['mAP']:.1f}" for k in columns}
        print(
            f"| {r['queries']} | {cell['global']} | {cell['dsr_validation_weight']} | "
            f"{r['weight']:.2f} | {cell['dsr_alone']} | {cell['dsr_test_weight']} "
            f"(w {r['test_weight']:.2f}) |"
        )
    if ARGS.json:
        ARGS.json.parent.mkdir(parents=True, exist_ok=True)
        ARGS.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    ARGS = parse_args()
    main()
