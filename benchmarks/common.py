"""What the benchmarks share: the Market-1501-sized problem, how one side is measured, and
ONNX Runtime CPU latency of an exported model."""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from reid_core.evaluation import compute_distance


def market_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--queries", type=int, default=3368)
    parser.add_argument("--gallery", type=int, default=15913)
    parser.add_argument("--ids", type=int, default=751)
    parser.add_argument("--cams", type=int, default=6)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def market_problem(args: argparse.Namespace, clustered: bool = False) -> tuple[np.ndarray, ...]:
    """(distmat, q_pids, g_pids, q_cams, g_cams) with random ids and cameras; features are
    random (positives anywhere in the ranking) or, when `clustered`, each id's centre plus
    noise (positives mostly near the top: mAP ≈ 0.7, as a trained model scores)."""
    rng = np.random.default_rng(0)
    q_pids = rng.integers(0, args.ids, args.queries)
    g_pids = rng.integers(0, args.ids, args.gallery)
    q = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    g = rng.standard_normal((args.gallery, args.dim), dtype=np.float32)
    if clustered:
        centres = rng.standard_normal((args.ids, args.dim), dtype=np.float32)
        q, g = centres[q_pids] + 1.8 * q, centres[g_pids] + 1.8 * g
    return (
        compute_distance(q, g, "cosine"),
        q_pids,
        g_pids,
        rng.integers(0, args.cams, args.queries),
        rng.integers(0, args.cams, args.gallery),
    )


def measure(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """(result, seconds, peak rise of the process's resident memory while it ran).

    RSS is sampled every 5 ms from a thread, so torch and numba allocations count too.
    """
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        out = fn()
    finally:
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    return out, seconds, max(peak, process.memory_info().rss) - baseline


def report(
    args: argparse.Namespace, ours: tuple, reference: tuple, label: str = "", **extra: Any
) -> dict[str, Any]:
    """Print time ratio and peak memory of both sides; also save them when asked (under
    `label` when a script measures several problems into one file)."""
    _, t_ours, m_ours = ours
    _, t_ref, m_ref = reference
    result = {
        "problem": f"{args.queries}x{args.gallery}, {args.ids} ids, {args.cams} cameras"
        + (f", {label}" if label else ""),
        "reidflow_seconds": round(t_ours, 3),
        "reference_seconds": round(t_ref, 3),
        "speedup": round(t_ref / t_ours, 2),
        "reidflow_peak_rss_rise_mib": round(m_ours / 2**20, 1),
        "reference_peak_rss_rise_mib": round(m_ref / 2**20, 1),
        **extra,
    }
    for key, value in result.items():
        print(f"{key:>28}: {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        saved = json.loads(args.json.read_text()) if label and args.json.is_file() else {}
        saved = saved if isinstance(saved, dict) and "problem" not in saved else {}
        if label:
            saved[label] = result
        args.json.write_text(json.dumps(saved if label else result, indent=2) + "\n")
    return result


def synthetic_domain(
    config_path: Path, overrides: list[str], dataset: Path, manifest: Path, threads: int
) -> tuple[Any, Any, Any, Any]:
    """(config, train, query, gallery) of a synthetic domain, with torch set up as the stages
    do (`threads` threads, denormals flushed): what the accuracy benchmarks start from."""
    import torch

    from reid_core.config import load_config
    from reid_core.data.manifest import read_manifest
    from reid_core.data.splits import load_split

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    config = load_config([config_path], overrides)
    df, _ = read_manifest(manifest)
    h, w = config.data.height, config.data.width
    splits = [load_split(dataset, df, s, h, w) for s in ("train", "query", "gallery")]
    return config, *splits


def mean_and_std(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, float]:
    """`key` and `key_std` for each of `keys`: mean and standard deviation over the runs."""
    out = {}
    for key in keys:
        values = np.array([r[key] for r in runs], dtype=float)
        out[key], out[f"{key}_std"] = float(values.mean()), float(values.std())
    return out


def percent_metrics(model: Any, query: Any, gallery: Any, config: Any) -> dict[str, float]:
    """Rank-1 and mAP (in %) of `model` on a query/gallery pair, as the evaluate stage ranks."""
    from reid_core.evaluation.protocol import evaluate_splits

    result = evaluate_splits(model, query, gallery, config.evaluate)
    return {"rank1": 100 * float(result.rank.cmc[0]), "mAP": 100 * result.rank.mAP}


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    """Median wall time of `fn` in milliseconds over `repeats` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def interleaved_median_ms(
    fns: dict[str, Callable[[], Any]], repeats: int, rounds: int = 5
) -> dict[str, float]:
    """Median wall time (ms) of each callable over `repeats` calls, made in `rounds` blocks
    taken in turns, so that all sides see the same drift of a shared machine's load (blocks,
    not single calls: a side's idle worker threads spin a little after it returns)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    per_block = -(-repeats // rounds)
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_block):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def ort_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session on `path` with `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def random_images(batch: int, height: int, width: int) -> np.ndarray:
    """A float32 N×3×H×W batch of uniform 0–255 pixels (the models' input; latency does not
    depend on the values)."""
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (batch, 3, height, width)).astype(np.float32)


def onnx_latency_ms(
    model: Any, height: int, width: int, threads: int, batches: dict[int, int] | None = None
) -> dict[str, float]:
    """Median ONNX Runtime CPU latency (ms) of the exported fp32 `model` per batch size
    (`batches`: batch size -> timed runs; default batch 1 ×50 and batch 32 ×10)."""
    from reid_core.export.onnx import ServingModel, export_onnx

    batches = batches or {1: 50, 32: 10}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(ServingModel(model.cpu().eval(), False), path, height, width, 18)
        session = ort_session(path, threads)
    latency = {}
    for batch, repeats in batches.items():
        run = functools.partial(session.run, None, {"images": random_images(batch, height, width)})
        latency[f"batch{batch}_ms"] = median_ms(run, repeats)
    return latency
