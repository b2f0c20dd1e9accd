"""Search page latency: one uploaded photo → the page's ranked matches, over galleries of
10,000 and 100,000 images, against the obvious way to do it, in one process.

reidflow: an HTTP POST to the search page's `/api/search` (Starlette, in process) with a JPEG:
the upload is read and checked, decoded, embedded by ONNX Runtime, searched in the faiss index
of the gallery, filtered and rendered as HTML. The model is the demo's student (params.yaml
`distill.model`, randomly initialised: latency does not depend on the weights), registered in
a temporary MLflow store exactly as promote registers it; the gallery's features are
synthetic (clustered, the model's dimension), indexed as the page indexes (`index.kind`).

reference: PIL decode and resize, the PyTorch model (eager), a dense similarity to every
gallery feature with numpy and a full argsort: no server, no index, no HTML. The page's index
is `flat` (exact, the default: memory-bound at 100,000 × D floats a query, as the reference is)
and `hnsw` (approximate: benchmarks/faiss_gallery.py measures its recall).

Both serve the same requests, interleaved in blocks so machine drift hits both alike: p50, p99
and mean per request, the p50 ratio (> 1: reidflow is faster), and the peak RSS rise of each
side's warm-up (where its buffers are allocated).

    python benchmarks/ui_search_latency.py --json benchmarks/results/ui_search_latency.json
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import measure
from PIL import Image

from reid_core.config import load_config
from reid_core.data.images import resized_rgb
from reid_core.export.onnx import ServingModel, export_onnx
from reid_core.modeling import create_model
from reid_core.serving.gallery import GalleryIndex

ROOT = Path(__file__).resolve().parents[1]
NAME = "reid-latency"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--galleries", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--kinds", nargs="+", default=["flat", "hnsw"], help="index kinds")
    parser.add_argument("--requests", type=int, default=200, help="per side and gallery")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def photos(count: int, height: int, width: int) -> list[bytes]:
    """JPEG uploads twice the model's input size (a camera crop), of smooth random colour."""
    rng = np.random.default_rng(1)
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, (8, 4, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((2 * width, 2 * height), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def gallery_features(n: int, dim: int, ids: int = 2000) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(0)
    pids = rng.integers(0, ids, n)
    centres = rng.standard_normal((ids, dim), dtype=np.float32)
    feats = centres[pids] + 1.5 * rng.standard_normal((n, dim), dtype=np.float32)
    meta = {
        "paths": np.array([f"bounding_box_test/{i:07d}.jpg" for i in range(n)]),
        "pids": pids.astype(np.int64),
        "camids": rng.integers(0, 6, n).astype(np.int64),
    }
    return feats, meta


def register(workdir: Path, config) -> tuple[Path, torch.nn.Module]:
    """The student exported and registered in a fresh SQLite store under `workdir`."""
    import mlflow

    from reid_core.tracking import registry

    torch.manual_seed(0)
    model = create_model(config.distill.model, 100, pretrained=False).eval()
    onnx = workdir / "model.onnx"
    height, width = config.data.height, config.data.width
    export_onnx(ServingModel(model, l2_normalize=False), onnx, height, width, config.export.opset)
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = mlflow.create_experiment("latency", (workdir / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        registry.register_model(onnx, model, NAME, {}, l2_normalize=False)
    return onnx, ServingModel(model, l2_normalize=False).eval()


def percentiles(times: list[float]) -> dict[str, float]:
    ms = np.array(times) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
    }


def one_gallery(
    args, base, catalog, torch_model, uploads: list[bytes], workdir: Path, n: int, kind: str
):
    """Both sides' latencies over a gallery of `n` synthetic features in a `kind` index."""
    from starlette.testclient import TestClient

    from reid_core.ui.app import create_app

    model = catalog.choose(None)
    identity = catalog.identity(model)
    height, width = base.data.height, base.data.width
    dim = catalog.embedder(model).embed(np.zeros((1, 3, height, width))).shape[1]
    feats, meta = gallery_features(n, dim)
    config = base.model_copy(
        update={
            "ui": base.ui.model_copy(update={"workdir": workdir / f"ui-{n}-{kind}"}),
            "index": base.index.model_copy(update={"kind": kind, "device": "cpu"}),
        }
    )
    index = GalleryIndex.build(feats, meta, config.index, model=identity)
    index.save(config.ui.workdir / "indexes" / "source" / f"{NAME}-v1")
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)

    def reference(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            pixels = resized_rgb(image, height, width)
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float()
        with torch.inference_mode():
            q = torch_model(x).numpy()[0]
        q /= np.linalg.norm(q)
        return np.argsort(-(unit @ q))[: args.k]

    app = create_app(config, workdir / "reports", catalog)
    with TestClient(app, base_url="http://127.0.0.1") as client:

        def ours(data: bytes) -> str:
            answer = client.post(f"/api/search?gallery=source&k={args.k}", content=data)
            assert answer.status_code == 200, answer.text[:300]
            return answer.text

        _, _, ours_rss = measure(lambda: [ours(d) for d in uploads[:3]])
        _, _, ref_rss = measure(lambda: [reference(d) for d in uploads[:3]])
        times: dict[str, list[float]] = {"ours": [], "reference": []}
        block = 10
        for start in range(0, len(uploads), block):
            sides = [("ours", ours), ("reference", reference)]
            for side, fn in sides if (start // block) % 2 == 0 else sides[::-1]:
                for data in uploads[start : start + block]:
                    began = time.perf_counter()
                    fn(data)
                    times[side].append(time.perf_counter() - began)
    mine, theirs = percentiles(times["ours"]), percentiles(times["reference"])
    return {
        "gallery": n,
        "dim": dim,
        "index": config.index.kind,
        "requests": len(uploads),
        "reidflow": {**mine, "warm_up_peak_rss_rise_mib": round(ours_rss / 2**20, 1)},
        "reference": {**theirs, "warm_up_peak_rss_rise_mib": round(ref_rss / 2**20, 1)},
        "p50_speedup": round(theirs["p50_ms"] / mine["p50_ms"], 2),
        "p99_speedup": round(theirs["p99_ms"] / mine["p99_ms"], 2),
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from reid_core.ui.catalog import ModelCatalog

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        base = load_config([args.config], [])
        _, torch_model = register(workdir, base)
        uploads = photos(args.requests, base.data.height, base.data.width)
        catalog = ModelCatalog(NAME, workdir / "models")
        for n in args.galleries:
            for kind in args.kinds:
                result = one_gallery(args, base, catalog, torch_model, uploads, workdir, n, kind)
                results[f"{n}-{kind}"] = result
                print(json.dumps(result))
        catalog.close()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
