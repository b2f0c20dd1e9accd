"""Serving latency: PyTorch eager vs ONNX Runtime CPU (fp32 and fp16 graphs) of the exported model.

For the teacher (params.yaml `train.model`) and the student (`distill.model`) at the data size
of params.yaml (128×64), batch 1, 8 and 64, in one process with the same thread count on both
sides: median latency (the sides timed in blocks taken in turns, so load drift hits them alike),
throughput, the ORT/PyTorch latency ratio (< 1: ORT is faster), the peak rise of resident
memory over each side's warm-up calls (where it allocates; a fresh ORT session per batch size,
freed heap memory handed back to the OS before each), the ONNX file sizes, and a check that
each graph agrees with PyTorch. The models are randomly initialised: latency does
not depend on the weights' values, and the benchmark needs no trained checkpoint.

    python benchmarks/export_latency.py --json benchmarks/results/export_latency.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch
from common import interleaved_median_ms, measure, ort_session, random_images

from reid_core.config import ModelConfig, load_config
from reid_core.export.onnx import ServingModel, compare, export_onnx
from reid_core.modeling import create_model

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def repeats(batch: int) -> int:
    """Timed runs per batch size: more for small batches, whose latencies are short."""
    return max(10, 160 // batch)


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc), so each side's RSS rise is its own."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def warm_up_memory(run: Any) -> float:
    """Peak RSS rise (MiB) over three warm-up calls of `run`: where its buffers get allocated
    (later calls reuse them)."""
    _trim_heap()
    _, _, rss = measure(lambda: [run() for _ in range(3)])
    return round(rss / 2**20, 1)


def bench_model(
    config: ModelConfig, height: int, width: int, batches: list[int], threads: int
) -> dict[str, Any]:
    """Every batch size of one model: PyTorch eager, ORT on the fp32 graph and on the fp16
    one; the sides are timed in blocks taken in turns."""
    torch.manual_seed(0)
    serving = ServingModel(create_model(config, 0), l2_normalize=False).eval()
    result: dict[str, Any] = {"params": sum(p.numel() for p in serving.parameters())}
    with tempfile.TemporaryDirectory() as tmp:
        graphs = {}
        for precision in ("fp32", "fp16"):
            path = Path(tmp) / f"{precision}.onnx"
            export_onnx(ServingModel(serving.model, False, precision == "fp16"), path,
                        height, width, 18)  # fmt: skip
            graphs[precision] = path
            result[f"onnx_{precision}_bytes"] = path.stat().st_size
        for batch in batches:
            images = random_images(batch, height, width)
            tensor = torch.from_numpy(images)
            sides = {"pytorch": functools.partial(serving, tensor)}
            for precision, path in graphs.items():  # a fresh session: its own memory arena
                session = ort_session(path, threads)
                sides[f"ort_{precision}"] = functools.partial(session.run, None, {"images": images})
            with torch.inference_mode():
                expected = serving(tensor).numpy()
                memory = {side: warm_up_memory(run) for side, run in sides.items()}
                latency = interleaved_median_ms(sides, repeats(batch))
            row = {}
            for side, run in sides.items():
                ms = latency[side]
                row[side] = {
                    "median_ms": round(ms, 3),
                    "images_per_s": round(1000 * batch / ms, 1),
                    "peak_rss_rise_mib": memory[side],
                }
                if side != "pytorch":
                    diff, cosine = compare(run()[0], expected)
                    row[side]["ratio_vs_pytorch"] = round(ms / latency["pytorch"], 3)
                    row[side]["max_abs_diff_vs_pytorch"] = diff
                    row[side]["min_cosine_vs_pytorch"] = cosine
            result[f"batch{batch}"] = row
            del sides
            print(f"  batch {batch}: " + ", ".join(
                f"{k} {v['median_ms']:.2f} ms" for k, v in row.items()), flush=True)  # fmt: skip
    return result


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the stages run
    config = load_config([args.config])
    h, w = config.data.height, config.data.width
    models = {"teacher": config.train.model, "student": config.distill.model}
    results: dict[str, Any] = {
        "setup": {
            "input": f"Nx3x{h}x{w} float32, uniform 0-255",
            "batches": args.batches,
            "threads": args.threads,
            "weights": "random initialisation (latency does not depend on the values)",
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "cpu": platform.processor() or platform.machine(),
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
        }
    }
    for role, model_config in models.items():
        name = f"{role} {model_config.backbone}:{model_config.base_width}"
        print(name, flush=True)
        results[name] = bench_model(model_config, h, w, args.batches, args.threads)

    results["setup"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(f"{args.threads} threads each side; {h}×{w}; random weights")
    print("| model | batch | side | median ms | images/s | ORT/PyTorch | peak RSS rise MiB | "
          "max abs diff |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, model in results.items():
        if name == "setup":
            continue
        for batch in args.batches:
            for side, row in model[f"batch{batch}"].items():
                ratio = f"{row['ratio_vs_pytorch']:.2f}" if "ratio_vs_pytorch" in row else "—"
                diff = f"{row['max_abs_diff_vs_pytorch']:.1e}" if "ratio_vs_pytorch" in row else "—"
                print(f"| {name} | {batch} | {side} | {row['median_ms']:.2f} | "
                      f"{row['images_per_s']:.0f} | {ratio} | {row['peak_rss_rise_mib']:.1f} | "
                      f"{diff} |")  # fmt: skip
        print(f"| {name} | ONNX size | fp32 {model['onnx_fp32_bytes'] / 2**20:.2f} MiB, fp16 "
              f"{model['onnx_fp16_bytes'] / 2**20:.2f} MiB | | | | | |")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
