"""A real tritonserver on loopback: PyTorch's embeddings, hot swap, clean stop, `reid query`."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from reid_core.cli import main
from reid_core.config import ModelConfig, TritonConfig
from reid_core.data.images import load_images
from reid_core.data.manifest import build_manifest, write_manifest
from reid_core.data.synth import SynthSpec, generate
from reid_core.export.onnx import ServingModel, export_onnx
from reid_core.modeling import create_model
from reid_core.serving.client import TritonEmbedder
from reid_core.serving.gallery import GalleryIndex
from reid_core.serving.query import index_mismatch
from reid_core.serving.server import Installation, ServerError, TritonServer, free_ports
from reid_core.serving.triton import publish_next_version

pytestmark = pytest.mark.integration

H, W, NAME = 64, 32, "reid"


def serving_model(seed: int) -> ServingModel:
    torch.manual_seed(seed)
    return ServingModel(create_model(ModelConfig(base_width=8), 4).eval(), l2_normalize=False)


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> dict[int, tuple[ServingModel, Path]]:
    """Two different models, exported: they will be versions 1 and 2."""
    out = tmp_path_factory.mktemp("onnx")
    exported = {}
    for version in (1, 2):
        model = serving_model(seed=version)
        export_onnx(model, out / f"v{version}.onnx", H, W, opset=18)
        exported[version] = (model, out / f"v{version}.onnx")
    return exported


def publish(repo: Path | str, version: int, onnx: Path, **config: object) -> None:
    """Publish `onnx` as the repository's next version, which must be `version`."""
    settings = TritonConfig(repository=str(repo), backend="python", **config)
    assert publish_next_version(settings, NAME, onnx, H, W, 64)[0] == version


def start_server(repo: Path | str, installation: Installation, log: Path) -> TritonServer:
    http, grpc, metrics = free_ports(3)
    return TritonServer(repo, installation, http, grpc, metrics, poll_seconds=1, log=log).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory, triton_installation, versions):
    """tritonserver serving version 1 (python backend, ONNX Runtime inside)."""
    repo = tmp_path_factory.mktemp("repo")
    publish(repo, 1, versions[1][1])
    server = start_server(repo, triton_installation, repo.parent / "triton.log")
    server.wait_model_ready(NAME, 1)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (70, 3, H, W)).astype(np.float32)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_serves_the_pytorch_embedding(server, versions, images, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    with TritonEmbedder(url, NAME, protocol) as embedder:
        assert (embedder.height, embedder.width, embedder.max_batch_size) == (H, W, 64)
        got = embedder.embed(images)  # 70 images: two requests of at most 64
    with torch.inference_mode():
        expected = versions[1][0](torch.from_numpy(images)).numpy()
    assert got.shape == expected.shape == (70, 64)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert np.abs(got).sum(1).min() > 0  # a numpy-2 stub would return zeros


def test_concurrent_requests_are_each_answered_with_their_own_rows(server, versions, images):
    # dynamic batching concatenates requests: each client must get back exactly its rows
    with torch.inference_mode():
        expected = versions[1][0](torch.from_numpy(images)).numpy()
    results: dict[int, np.ndarray] = {}

    def client(i: int) -> None:
        with TritonEmbedder(server.http_url, NAME) as embedder:
            results[i] = embedder.embed(images[i * 5 : i * 5 + 1 + i % 4])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, got in results.items():
        np.testing.assert_allclose(got, expected[i * 5 : i * 5 + 1 + i % 4], atol=1e-4)
    assert len(results) == 12


def test_wrong_input_size_is_refused_before_the_server(server):
    with TritonEmbedder(server.http_url, NAME) as embedder, pytest.raises(ValueError, match="64"):
        embedder.embed(np.zeros((2, 3, 32, 32), np.float32))


def test_an_unreachable_server_is_a_clear_connection_error():
    (port,) = free_ports(1)
    for protocol in ("http", "grpc"):
        with pytest.raises(ConnectionError, match=f"127.0.0.1:{port} over {protocol}"):
            TritonEmbedder(f"127.0.0.1:{port}", NAME, protocol)


@pytest.mark.parametrize("store", ["local", "s3"])
def test_a_new_version_replaces_the_served_one_with_no_failed_request(
    store, request, tmp_path, triton_installation, versions, images
):
    if store == "s3":  # Triton reads the bucket itself, credentials from the environment
        endpoint = request.getfixturevalue("s3_endpoint")
        repo = f"s3://{endpoint}/{request.getfixturevalue('s3_bucket')}/triton"
    else:
        repo = tmp_path / "repo"
    publish(repo, 1, versions[1][1])
    batch = images[:4]
    with torch.inference_mode():
        old, new = (versions[v][0](torch.from_numpy(batch)).numpy() for v in (1, 2))
    served, failures, stop = [], [], threading.Event()

    def query_forever() -> None:
        with TritonEmbedder(server.http_url, NAME) as embedder:
            while not stop.is_set():
                try:
                    got = embedder.embed(batch)
                except Exception as err:  # counted, not raised: the test asserts none
                    failures.append(repr(err))
                    continue
                served.append(
                    1
                    if np.allclose(got, old, atol=1e-4)
                    else 2
                    if np.allclose(got, new, atol=1e-4)
                    else 0
                )

    server = start_server(repo, triton_installation, tmp_path / "triton.log")
    try:
        server.wait_model_ready(NAME, 1)
        client = threading.Thread(target=query_forever)
        client.start()
        time.sleep(1.0)
        publish(repo, 2, versions[2][1])
        deadline = time.monotonic() + 60
        while (not served or served[-1] != 2) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # keep querying after the switch
        stop.set()
        client.join()
        ready = {v: server.status(f"/v2/models/{NAME}/versions/{v}/ready") for v in (1, 2)}
    finally:
        stop.set()
        server.stop()
    assert failures == []
    assert 0 not in served  # every answer came whole from one version or the other
    assert served[0] == 1 and served[-1] == 2
    first_new = served.index(2)
    assert set(served[first_new:]) == {2}  # once switched, never back
    assert ready == {1: 400, 2: 200}  # serve_versions 1: version 1 was unloaded
    # no half-published version was ever tried: Triton logged no failed load
    log = (tmp_path / "triton.log").read_text(errors="replace")
    assert "UNAVAILABLE" not in log and "failed to load" not in log


def test_a_server_that_cannot_load_its_model_fails_with_the_log(tmp_path, triton_installation):
    repo = tmp_path / "repo"
    (repo / NAME / "1").mkdir(parents=True)
    (repo / NAME / "config.pbtxt").write_text(
        'name: "reid"\nbackend: "python"\nmax_batch_size: 4\n'
    )
    (repo / NAME / "1" / "model.py").write_text("raise ImportError('broken model')\n")
    with pytest.raises(ServerError, match="broken model"):
        start_server(repo, triton_installation, tmp_path / "triton.log")


def test_missing_installation_says_how_to_install(tmp_path):
    with pytest.raises(ServerError, match="reid serve install"):
        Installation(tmp_path / "none").check()


def test_reid_serve_run_serves_until_sigterm_then_stops_cleanly(
    tmp_path, triton_installation, versions, venv_env
):
    repo = tmp_path / "repo"
    publish(repo, 1, versions[1][1])
    http, grpc, metrics = free_ports(3)
    sets = [
        f"triton.server_dir={triton_installation.root}",
        f"triton.http_port={http}",
        f"triton.grpc_port={grpc}",
        f"triton.metrics_port={metrics}",
    ]
    cmd = ["reid", "serve", "run", "--repository", str(repo), "--log", str(tmp_path / "t.log")]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=venv_env(), stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        first = proc.stdout.readline()
        assert f"HTTP 127.0.0.1:{http}" in first
        with TritonEmbedder(f"127.0.0.1:{grpc}", NAME, "grpc") as embedder:
            assert embedder.embed(np.zeros((1, 3, H, W))).shape == (1, 64)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "tritonserver stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", http), timeout=1)
    leftovers = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""  # no tritonserver, no backend stub left


def test_reid_query_prints_ranked_matches_and_writes_a_rank_list(
    server, versions, tmp_path, capsys
):
    dataset = tmp_path / "synth"
    generate(dataset, SynthSpec(num_ids=8, num_cams=2, images_per_id=4, height=H, width=W))
    gallery_paths = sorted(
        str(p.relative_to(dataset)) for p in (dataset / "bounding_box_test").glob("*.jpg")
    )
    model = versions[1][0]
    with torch.inference_mode():
        feats = model(load_images(dataset, gallery_paths, H, W).float()).numpy()
    pids = np.array([int(Path(p).name.split("_")[0]) for p in gallery_paths])
    meta = {"paths": np.array(gallery_paths), "pids": pids, "camids": np.zeros_like(pids)}
    from reid_core.config import IndexConfig

    GalleryIndex.build(feats, meta, IndexConfig(kind="flat")).save(tmp_path / "index")
    query = dataset / gallery_paths[3]  # a gallery image as query: it must rank itself first
    png = tmp_path / "ranks.png"
    code = main(
        [
            "query",
            str(query),
            "--index",
            str(tmp_path / "index"),
            "--protocol",
            "grpc",
            "--url",
            server.grpc_url,
            "--model",
            NAME,
            "--top-k",
            "5",
            "--rank-list",
            str(png),
            "--gallery-root",
            str(dataset),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 5 and [int(r[0]) for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0][4] == gallery_paths[3] and float(rows[0][1]) == pytest.approx(1.0, abs=1e-4)
    similarities = [float(r[1]) for r in rows]
    assert similarities == sorted(similarities, reverse=True)
    from PIL import Image

    with Image.open(png) as img:
        assert img.width > 6 * 48 and img.height >= 96


def test_reid_index_build_embeds_the_gallery_through_the_served_model(server, versions, tmp_path):
    dataset = tmp_path / "synth"
    generate(dataset, SynthSpec(num_ids=8, num_cams=2, images_per_id=4, height=H, width=W))
    manifest = build_manifest(dataset, "market1501")
    write_manifest(manifest, tmp_path / "m.parquet", {})
    args = ["index", "build", "--dataset", str(dataset), "--manifest", str(tmp_path / "m.parquet")]
    args += ["--out", str(tmp_path / "index"), "--url", server.http_url, "--model", NAME]
    assert main(args) == 0
    index = GalleryIndex.load(tmp_path / "index")
    gallery = manifest[manifest["split"] == "gallery"]
    assert list(index.metadata["paths"]) == list(gallery["path"])
    assert index.info["model"] == {"name": NAME, "version": "1"}
    with torch.inference_mode():
        own = versions[1][0](load_images(dataset, list(gallery["path"]), H, W).float()).numpy()
    sims, rows = index.search(own, 1)  # PyTorch's features find the Triton-embedded rows
    np.testing.assert_array_equal(rows[:, 0], np.arange(len(gallery)))
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-4)
    with TritonEmbedder(server.http_url, NAME) as embedder:
        embedder.embed(np.zeros((1, 3, H, W)))
        assert index_mismatch(index, embedder) == ""
        index.info["model"] = {"name": NAME, "version": "7"}  # as if v1 replaced v7 since
        assert "embedded by reid v7, the queries by reid v1" in index_mismatch(index, embedder)


def test_a_server_on_a_taken_port_fails_at_once_naming_it(tmp_path, triton_installation):
    import socket

    from reid_core.serving.server import ServerError

    (tmp_path / "repo").mkdir()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = TritonServer(tmp_path / "repo", triton_installation, http_port=port)
        with pytest.raises(ServerError, match=f"port {port} on 127.0.0.1 \\(http\\) is taken"):
            server.start()
        assert server.process is None
