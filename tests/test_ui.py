"""The search page's application over a reproduced project, through HTTP in this process
(Starlette's test client): searches against an exact reference, filters, uploads that must be
refused, what may be served, the models and reports views, and the token-gated actions.

The real browser drives the page in tests/test_ui_browser.py.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from reid_core.artifacts import FeatureSet
from reid_core.tracking.runs import setup_mlflow
from reid_core.ui.app import create_app
from reid_core.ui.catalog import ModelCatalog
from tests.support.ui import decompression_bomb, png, ui_config

pytestmark = pytest.mark.integration

TOKEN = "operator-token-for-tests-0123456789"
MATCH = re.compile(r'<li class="match ?(\w*)" ([^>]*)>')
ATTR = re.compile(r'data-(\w+)="([^"]*)"')


@pytest.fixture(scope="module")
def project(reproduced_project):
    """The reproduced project as the working directory, MLflow pointed at its store; MLflow's
    global URIs are put back afterwards."""
    import mlflow

    root = reproduced_project.root
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("MLFLOW_REGISTRY_URI", "")  # registered so that undoing restores it
        mp.delenv("MLFLOW_REGISTRY_URI")
        try:
            setup_mlflow(ui_config(root))
            yield reproduced_project
        finally:
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)


def client_of(project, token: str | None = None, *overrides: str, triton=None):
    from starlette.testclient import TestClient

    config = ui_config(project.root, *overrides)
    catalog = ModelCatalog(config.promote.model_name, config.ui.workdir / "models", triton)
    app = create_app(config, Path("reports"), catalog, token=token)
    return TestClient(app, base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def client(project):
    with client_of(project) as client:
        wait_for_index(client, "source", "")
        yield client


def wait_for_index(client, gallery: str, model: str, timeout: float = 120.0) -> dict:
    """Visit the search page (which starts the build when there is no index) and wait."""
    client.get(f"/?gallery={gallery}&model={model}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/api/index?gallery={gallery}&model={model}").json()
        if status["state"] in ("done", "failed"):
            assert status["state"] == "done", status
            return status
        time.sleep(0.2)
    pytest.fail(f"the index of {gallery} was not built in {timeout:.0f} s")


def matches(html: str) -> list[dict[str, str]]:
    """The result grid's items, in rank order, by their data attributes."""
    return [dict(ATTR.findall(attrs)) for _, attrs in MATCH.findall(html)]


def evaluated(project, split: str):
    """The evaluate stage's features of the student on source (PyTorch, not the page)."""
    return getattr(FeatureSet.load(project.root / "work/features/student/source.npz"), split)


def test_the_first_visit_builds_the_index_with_progress_and_then_the_page_searches(project):
    with client_of(project, None, "ui.workdir=work/ui-first-visit") as client:
        first = client.get("/")
        assert first.status_code == 200
        assert "Building the index" in first.text and "<progress" in first.text
        status = wait_for_index(client, "source", "")
        gallery = evaluated(project, "gallery")
        assert status["done"] == status["total"] == len(gallery)
        ready = client.get("/")
        assert 'id="index-model">reid-student v1<' in ready.text
        assert f"{len(gallery)} images" in ready.text


def test_a_picked_query_gets_the_exact_top_k_with_correct_wrong_and_junk_marked(project, client):
    query, gallery = evaluated(project, "query"), evaluated(project, "gallery")
    k = 10
    for row in range(3):
        page = client.get(f"/?gallery=source&query={row}&k={k}")
        found = matches(page.text)
        assert len(found) == k
        # the reference: PyTorch's features of the evaluate stage, ranked by a full sort
        g = gallery.feats / np.linalg.norm(gallery.feats, axis=1, keepdims=True)
        q = query.feats[row] / np.linalg.norm(query.feats[row])
        sims = dict(zip(gallery.paths.tolist(), (g @ q).tolist(), strict=True))
        best = sorted(sims.values(), reverse=True)[:k]
        shown = [float(m["similarity"]) for m in found]
        np.testing.assert_allclose(shown, best, atol=1e-4)
        for m in found:
            assert abs(sims[m["path"]] - float(m["similarity"])) < 1e-4
            same_id = int(m["pid"]) == query.pids[row]
            same_cam = int(m["camid"]) == query.camids[row]
            expected = "junk" if same_id and same_cam else "correct" if same_id else "wrong"
            assert m["verdict"] == expected


def test_filters_keep_one_camera_or_drop_the_querys_and_still_return_k(project, client):
    query = evaluated(project, "query")
    cam = int(query.camids[0])
    only = matches(client.get(f"/?query=0&k=5&camera={cam}").text)
    assert len(only) == 5 and {int(m["camid"]) for m in only} == {cam}
    other = matches(client.get("/?query=0&k=8&exclude_same=on").text)
    assert len(other) == 8 and cam not in {int(m["camid"]) for m in other}
    assert "junk" not in {m["verdict"] for m in other}
    uploaded = client.post(
        f"/api/search?k=8&exclude_same=on&query_camera={cam}",
        content=(project.root / "data/datasets/source" / query.paths[0]).read_bytes(),
    )
    assert [m["path"] for m in matches(uploaded.text)] == [m["path"] for m in other]


def test_an_uploaded_photo_of_a_known_identity_finds_it_first(project, client):
    query, gallery = evaluated(project, "query"), evaluated(project, "gallery")
    g = gallery.feats / np.linalg.norm(gallery.feats, axis=1, keepdims=True)
    q = query.feats / np.linalg.norm(query.feats, axis=1, keepdims=True)
    top = np.argmax(q @ g.T, axis=1)
    rows = np.flatnonzero(gallery.pids[top] == query.pids)  # queries the model gets right
    assert len(rows) >= 3
    for row in rows[:3]:
        image = project.root / "data/datasets/source" / query.paths[row]
        answer = client.post("/api/search?gallery=source&k=5", content=image.read_bytes())
        assert answer.status_code == 200
        found = matches(answer.text)
        assert int(found[0]["pid"]) == query.pids[row]
        assert found[0]["verdict"] == ""  # an upload's identity is not known to the page


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"", 415, "the file is empty"),
        (b"name,pid\nx.jpg,1\n", 415, "is not an image of type JPEG, PNG, WEBP, BMP"),
        (b"GIF89a" + bytes(64), 415, "is not an image of type"),
        (decompression_bomb(), 415, "10000×10000 pixels, more than the 40,000,000 allowed"),
        (png(64, 64) + bytes(2 * 2**20), 413, "larger than the 1.0 MiB allowed"),
    ],
    ids=["empty", "csv", "gif", "decompression-bomb", "too-large"],
)
def test_a_bad_upload_gets_a_clear_message_and_no_search(project, body, status, message):
    with client_of(project, None, "ui.max_upload_mb=1") as client:
        wait_for_index(client, "source", "")
        answer = client.post("/api/search?gallery=source", content=body)
    assert answer.status_code == status
    assert message in answer.text and 'role="alert"' in answer.text
    assert not matches(answer.text)


def test_only_images_the_manifest_lists_are_served(project, client):
    listed = evaluated(project, "gallery").paths[0]
    assert client.get(f"/image/source/{listed}").headers["content-type"] == "image/jpeg"
    (project.root / "data/datasets/source/unlisted.jpg").write_bytes(
        (project.root / "data/datasets/source" / listed).read_bytes()
    )
    for path in (
        "unlisted.jpg",  # in the folder, not in the manifest
        ".fetch.json",
        "..%2F..%2Fparams.yaml",
        "%2Fetc%2Fpasswd",
        f"{listed}%00.png",
    ):
        assert client.get(f"/image/source/{path}").status_code == 404, path
    assert client.get(f"/image/nowhere/{listed}").status_code == 404


def test_report_files_are_served_from_the_reports_folder_only(client):
    assert client.get("/reports/student/file/source/cmc.png").headers["content-type"] == (
        "image/png"
    )
    page = client.get("/reports/student/file/report.html")
    assert page.status_code == 200 and "sandbox" in page.headers["content-security-policy"]
    for path in ("../student.json", "..%2F..%2Fpromotion.json", "source/../../teacher.json"):
        assert client.get(f"/reports/student/file/{path}").status_code == 404, path
    assert client.get("/reports/nobody/file/source/cmc.png").status_code == 404


def test_every_page_is_locked_to_itself_and_to_loopback_host_names(client):
    page = client.get("/models")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert client.get("/", headers={"host": "attacker.example"}).status_code == 400


def test_the_models_view_shows_versions_metrics_per_test_set_lineage_and_the_report(client):
    page = client.get("/models").text
    for text in (
        "<th>v1</th>",
        "champion",
        "rank-1 on source",
        "mAP on source",
        "git commit",
        "training data DVC md5",
        "Triton version",
        "# Promotion of reid-student v1: **promoted** to champion",
        "search index built",
    ):
        assert text in page, text
    assert "<form" not in page  # no token: no actions


def test_the_reports_view_lists_every_evaluation_with_its_test_sets_and_figures(project, client):
    overview = client.get("/reports").text
    for model in ("teacher", "student", "adapted"):
        assert f'href="/reports/{model}"' in overview
    teacher = client.get("/reports/teacher").text
    for test_set in ("source", "target"):
        for figure in ("rank_list.png", "cmc.png", "roc.png", "distances.png"):
            assert f"/reports/teacher/file/{test_set}/{figure}" in teacher
    only_target = client.get("/reports/teacher?set=target").text
    assert "/file/target/cmc.png" in only_target and "/file/source/cmc.png" not in only_target


def test_searching_through_triton_finds_what_onnx_runtime_finds(
    project, client, triton_installation, tmp_path
):
    from reid_core.serving.server import TritonServer, free_ports
    from reid_core.ui.catalog import TritonTarget

    query = evaluated(project, "query")
    image = (project.root / "data/datasets/source" / query.paths[0]).read_bytes()
    local = matches(client.post("/api/search?k=10", content=image).text)
    http, grpc, metrics = free_ports(3)
    repository = project.root / "serving/model_repository"
    server = TritonServer(repository, triton_installation, http, grpc, metrics, 1, tmp_path / "log")
    with server:
        server.wait_model_ready("reid-student", 1)
        target = TritonTarget(f"127.0.0.1:{grpc}", "grpc")
        with client_of(project, None, "ui.workdir=work/ui-triton", triton=target) as served:
            assert f"Triton at 127.0.0.1:{grpc}" in served.get("/").text
            wait_for_index(served, "source", "")
            remote = matches(served.post("/api/search?k=10", content=image).text)
    assert [m["path"] for m in remote] == [m["path"] for m in local]
    np.testing.assert_allclose(
        [float(m["similarity"]) for m in remote], [float(m["similarity"]) for m in local], atol=1e-5
    )


def test_actions_do_not_exist_without_the_operators_token(client):
    assert client.post("/models/rollback", data={"token": "guess"}).status_code == 404
    assert client.post("/models/1/champion").status_code == 404


def test_a_short_token_is_refused_at_start(project):
    with pytest.raises(ValueError, match="at least 16 characters"):
        client_of(project, "short")


def test_promote_and_rollback_need_the_token_and_switching_models_never_mixes_indexes(project):
    import mlflow

    # a second registered version (the same student again: refused by the policy)
    project.run("dvc", "repro", "-f", "-s", "promote", run_id="second-promotion")
    registry = mlflow.MlflowClient()
    champion = lambda: str(registry.get_model_version_by_alias("reid-student", "champion").version)  # noqa: E731
    assert champion() == "1"
    with client_of(project, TOKEN) as client:
        page = client.get("/models").text
        assert 'formaction="/models/2/champion"' in page and 'type="password"' in page
        assert TOKEN not in page
        refused = client.post("/models/2/champion", data={"token": "not-the-token-at-all"})
        assert refused.status_code == 403 and champion() == "1"
        assert client.post("/models/2/champion").status_code == 403

        done = client.post("/models/2/champion", data={"token": TOKEN})
        assert done.status_code == 200, done.text
        assert "reid-student v2 is champion (was v1); served as Triton version 2" in done.text
        assert champion() == "2"
        assert (project.root / "serving/model_repository/reid-student/2").is_dir()

        # the page now searches with v2: its own index, never v1's
        assert "Building the index" in client.get("/").text
        upload = client.post("/api/search?k=3", content=png(32, 64))
        assert upload.status_code in (200, 409)  # 409 while v2's index is being built
        wait_for_index(client, "source", "2")
        assert 'id="index-model">reid-student v2<' in client.get("/").text
        wait_for_index(client, "source", "1")
        assert 'id="index-model">reid-student v1<' in client.get("/?model=1").text
        assert 'id="index-model">reid-student v2<' in client.get("/?model=2").text

        back = client.post("/models/rollback", headers={"X-Reid-Token": TOKEN})
        assert back.status_code == 200 and "v1 is champion (was v2)" in back.text
        assert champion() == "1"


def test_an_index_of_another_model_with_the_same_version_is_rebuilt(project):
    """A registry made anew numbers its versions from 1 again: an index is matched by the
    digest of the model that embedded it, not by the version number alone."""
    import json

    with client_of(project, None, "ui.workdir=work/ui-rebuilt") as client:
        wait_for_index(client, "source", "1")
        info = project.root / "work/ui-rebuilt/indexes/source/reid-student-v1/index.json"
        data = json.loads(info.read_text())
        data["model"]["sha256"] = "0" * 64
        info.write_text(json.dumps(data))
    with client_of(project, None, "ui.workdir=work/ui-rebuilt") as client:
        assert "Building the index" in client.get("/").text
        wait_for_index(client, "source", "1")
        assert json.loads(info.read_text())["model"]["sha256"] != "0" * 64


def test_a_damaged_report_is_named_on_the_reports_page_and_the_others_still_show(project):
    import shutil

    reports = project.root / "reports-damaged"
    shutil.copytree(project.root / "reports", reports)
    (reports / "eval" / "teacher.json").write_text('{"rank1": "high"}')
    from starlette.testclient import TestClient

    config = ui_config(project.root)
    catalog = ModelCatalog(config.promote.model_name, config.ui.workdir / "models")
    with TestClient(create_app(config, reports, catalog), base_url="http://127.0.0.1") as client:
        page = client.get("/reports")
        assert page.status_code == 200
        assert "teacher.json" in page.text and 'role="alert"' in page.text
        assert 'href="/reports/student"' in page.text
        assert client.get("/reports/teacher").status_code == 404
