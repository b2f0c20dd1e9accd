"""Triton throughput and latency with dynamic batching vs without, N concurrent clients.

Both sides serve the same exported student (python backend running ONNX Runtime, the bundled
CPU tritonserver, `make triton`) on loopback; each client thread sends batch-1 requests over
HTTP, a bounded number per setting. The server's peak resident memory (tritonserver and its
backend stub) is sampled every 20 ms.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from common import random_images

from reid_core.config import ModelConfig, ReidConfig, TritonConfig
from reid_core.export.onnx import ServingModel, export_onnx
from reid_core.modeling import create_model
from reid_core.serving.client import TritonEmbedder
from reid_core.serving.server import Installation, TritonServer, free_ports
from reid_core.serving.triton import publish_next_version

ROOT = Path(__file__).resolve().parents[1]
NAME = "reid"


def server_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except psutil.NoSuchProcess:
        return 0


def load(server: TritonServer, clients: int, requests: int, image: np.ndarray) -> dict:
    """`requests` batch-1 requests spread over `clients` threads: throughput and latencies."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    per_client = [requests // clients + (i < requests % clients) for i in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def client(count: int) -> None:
        with TritonEmbedder(server.http_url, NAME) as embedder:
            embedder.embed(image)  # connection set up outside the timed part
            barrier.wait()
            mine = []
            for _ in range(count):
                start = time.perf_counter()
                try:
                    embedder.embed(image)
                except Exception as err:  # reported, and the run is void
                    errors.append(repr(err))
                mine.append(time.perf_counter() - start)
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(n,)) for n in per_client]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[0]}")
    ms = 1000 * np.array(latencies)
    return {
        "clients": clients,
        "requests": requests,
        "throughput_rps": requests / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def run_side(
    onnx: Path, dim: int, args: argparse.Namespace, dynamic: bool, expected: np.ndarray
) -> dict:
    installation = Installation(ROOT / ReidConfig().triton.server_dir)
    with tempfile.TemporaryDirectory() as repo:
        config = TritonConfig(
            repository=repo,
            backend="python",
            dynamic_batching=dynamic,
            max_batch_size=64,
            preferred_batch_sizes=[4, 8, 16, 32],
            max_queue_delay_us=args.queue_delay_us,
        )
        publish_next_version(config, NAME, onnx, args.height, args.width, dim)
        server = TritonServer(repo, installation, *free_ports(3), log=Path(repo) / "triton.log")
        with server:
            server.wait_model_ready(NAME)
            image = random_images(1, args.height, args.width)
            with TritonEmbedder(server.http_url, NAME) as embedder:
                got = embedder.embed(image)
            np.testing.assert_allclose(got, expected, atol=1e-4)  # serves the exported model
            peak, done = server_rss(server.process.pid), threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.wait(0.02):
                    peak = max(peak, server_rss(server.process.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            rows = [load(server, n, args.requests, image) for n in args.clients]
            done.set()
            sampler.join()
    for row in rows:
        row["server_peak_rss_mib"] = peak / 2**20
    return {"dynamic_batching": dynamic, "rows": rows}


def benchmark_model(base_width: int, args: argparse.Namespace) -> dict:
    """Both sides for one ResNet-18 width: the same ONNX file, with and without batching."""
    torch.manual_seed(0)
    model = create_model(ModelConfig(backbone="resnet18", base_width=base_width), 8).eval()
    serving = ServingModel(model, l2_normalize=False)
    with tempfile.TemporaryDirectory() as tmp:
        onnx = Path(tmp) / "model.onnx"
        export_onnx(serving, onnx, args.height, args.width, 18)
        with torch.inference_mode():
            expected = serving(torch.from_numpy(random_images(1, args.height, args.width)))
        dim = expected.shape[1]
        without, with_ = (run_side(onnx, dim, args, d, expected.numpy()) for d in (False, True))
    return {"base_width": base_width, "none": without, "dynamic": with_}


def report(result: dict) -> None:
    print(f"\nResNet-18 width {result['base_width']}")
    header = f"{'clients':>7} | {'batching':<8} | {'req/s':>7} | {'p50 ms':>7} | {'p99 ms':>7}"
    print(header + " | throughput ×\n" + "-" * (len(header) + 15))
    for a, b in zip(result["none"]["rows"], result["dynamic"]["rows"], strict=True):
        for name, row in (("none", a), ("dynamic", b)):
            ratio = f"{b['throughput_rps'] / a['throughput_rps']:.2f}" if name == "dynamic" else ""
            print(
                f"{row['clients']:>7} | {name:<8} | {row['throughput_rps']:>7.1f} | "
                f"{row['p50_ms']:>7.2f} | {row['p99_ms']:>7.2f} | {ratio}"
            )
    for name in ("none", "dynamic"):
        rss = result[name]["rows"][0]["server_peak_rss_mib"]
        print(f"server peak RSS ({name}): {rss:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=600, help="per client count")
    parser.add_argument(
        "--base-widths",
        type=int,
        nargs="+",
        default=[16, 32],
        help="ResNet-18 widths: 16 the student, 32 the teacher (params.yaml)",
    )
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--queue-delay-us", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(
        f"batch-1 HTTP requests at {args.height}×{args.width}, {args.requests} per client "
        f"count, max queue delay {args.queue_delay_us} µs; server and clients share the CPU"
    )
    results = [benchmark_model(width, args) for width in args.base_widths]
    for result in results:
        report(result)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        args.json.write_text(json.dumps({"settings": settings, "models": results}, indent=2))


if __name__ == "__main__":
    main()
