"""The search page in a real browser: `reid ui` started as a user starts it, in a reproduced
project, driven by headless Chromium (Debian's, through Playwright).

Screenshots of every view are written to build/test-artifacts/ui/ (kept after the run).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from reid_core.artifacts import FeatureSet
from tests.conftest import ROOT, stop_process
from tests.support.ui import decompression_bomb, png

pytestmark = pytest.mark.integration

CHROMIUM = Path(os.environ.get("REID_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = ROOT / "build" / "test-artifacts" / "ui"
TOKEN = "browser-test-operator-token-42"


@pytest.fixture(scope="module")
def page_url(reproduced_project, tmp_path_factory, venv_env):
    """`reid ui` serving the project on a free loopback port, with an operator token set;
    stopped by its PID."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path_factory.mktemp("ui") / "ui.log"
    reid = str(Path(sys.executable).with_name("reid"))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [reid, "ui", "--set", f"ui.port={port}", "--set", "ui.workdir=work/ui-browser"],
            cwd=reproduced_project.root,
            env=venv_env(REID_UI_TOKEN=TOKEN),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"reid ui exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/reports", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"reid ui did not answer in 60 s:\n{log.read_text()}")
                time.sleep(0.3)
        yield url
    finally:
        stop_process(proc)
    assert TOKEN not in log.read_text()  # the token is never logged


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make browser` installs it (or set REID_CHROMIUM)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield page
    context.close()
    # a refused upload answers 4xx, which Chromium also logs as a failed resource
    assert [e for e in errors if "status of 4" not in e] == []


def wait_for_images(page, selector: str) -> None:
    """Until every image `selector` matches has loaded (and decoded to a picture)."""
    page.wait_for_function(
        "s => [...document.querySelectorAll(s)].every(i => i.complete && i.naturalWidth > 0)",
        arg=selector,
    )


def recognised_query(project) -> tuple[Path, int]:
    """A query image the served model ranks right (by the evaluate stage's features) and its id."""
    features = FeatureSet.load(project.root / "work/features/student/source.npz")
    q, g = features.query, features.gallery
    sims = (q.feats / np.linalg.norm(q.feats, axis=1, keepdims=True)) @ (
        g.feats / np.linalg.norm(g.feats, axis=1, keepdims=True)
    ).T
    right = np.flatnonzero(g.pids[sims.argmax(axis=1)] == q.pids)
    row = int(right[0])
    return project.root / "data/datasets/source" / q.paths[row], int(q.pids[row])


def test_upload_a_photo_and_the_first_result_is_that_person(page, page_url, reproduced_project):
    image, pid = recognised_query(reproduced_project)
    page.goto(page_url)
    # the first visit builds the index, with a progress bar, and the page reloads when done
    page.wait_for_selector("#index-model", timeout=120_000)
    assert re.fullmatch(r"reid-student v\d+", page.text_content("#index-model"))
    page.set_input_files("#upload", str(image))
    page.wait_for_selector("#results .match")
    first = page.locator("#results .match").first
    assert first.locator(".pid").text_content() == str(pid)
    assert page.locator("#results .match").count() == 20  # ui.top_k
    page.locator("#results .match").last.scroll_into_view_if_needed()  # images load lazily
    wait_for_images(page, "#results .match img")
    page.screenshot(path=ARTIFACTS / "search-upload.png", full_page=True)


def test_a_picked_query_shows_correct_wrong_and_junk_results(page, page_url):
    page.goto(page_url)
    page.wait_for_selector("#index-model", timeout=120_000)
    page.locator(".thumbs a").first.click()
    page.wait_for_selector("#results .match")
    assert page.locator(".query figcaption").text_content().startswith("query · id")
    verdicts = set(
        page.eval_on_selector_all("#results .match", "l => l.map(m => m.dataset.verdict)")
    )
    assert verdicts <= {"correct", "wrong", "junk"} and "correct" in verdicts
    colour = page.eval_on_selector(
        "#results .match.correct", "m => getComputedStyle(m).borderTopColor"
    )
    assert colour == "rgb(40, 170, 60)"
    page.screenshot(path=ARTIFACTS / "search-query.png", full_page=True)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("notes.jpg", b"these are not pixels", "is not an image of type"),
        ("bomb.png", decompression_bomb(), "more than the 40,000,000 allowed"),
        ("huge.png", png(8, 8) + bytes(11 * 2**20), "larger than the 10.0 MiB allowed"),
    ],
    ids=["not-an-image", "decompression-bomb", "too-large"],
)
def test_a_bad_upload_shows_a_clear_message_on_the_page(page, page_url, name, content, message):
    page.goto(page_url)
    page.wait_for_selector("#index-model", timeout=120_000)
    page.set_input_files("#upload", {"name": name, "mimeType": "image/png", "buffer": content})
    alert = page.wait_for_selector("#results [role=alert]")
    assert message in alert.text_content()
    assert page.locator("#results .match").count() == 0
    page.screenshot(path=ARTIFACTS / f"upload-refused-{Path(name).stem}.png")


def test_the_models_view_compares_versions_and_asks_for_the_token(page, page_url):
    page.goto(f"{page_url}/models")
    header = page.locator("table.versions thead th").all_text_contents()[1:]
    assert header and all(re.fullmatch(r"v\d+", h) for h in header)
    rows = {
        r.locator("th").text_content(): r.locator("td").all_text_contents()
        for r in page.locator("table.versions tbody tr").all()
    }
    # other tests may have registered more versions of the shared project: find the champion
    column = next(i for i, aliases in enumerate(rows["aliases"]) if "champion" in aliases)
    assert rows["rank-1 on source"][column].endswith("%")
    assert rows["search index built"][column].strip() == "source"
    reports = page.locator("details pre").all_text_contents()
    assert any("**promoted** to champion" in report for report in reports)
    assert page.locator("input[type=password][name=token]").count() >= 1
    page.fill("form[action='/models/rollback'] input[name=token]", "a-wrong-token-for-sure")
    page.click("form[action='/models/rollback'] button")
    assert "refused: the token is wrong or missing" in page.text_content("[role=alert]")
    page.screenshot(path=ARTIFACTS / "models.png", full_page=True)


def test_the_reports_view_shows_each_models_metrics_and_figures(page, page_url):
    page.goto(f"{page_url}/reports")
    assert page.locator("table.metrics").count() == 3  # teacher, student, adapted
    page.click("a[href='/reports/teacher']")
    page.wait_for_selector(".figures img")
    assert page.locator(".figures img").count() == 8  # 4 figures × source and target
    wait_for_images(page, ".figures img")
    page.click("nav.sets a:text('target')")
    # the click navigates: wait for the filtered page, not the one it leaves
    page.wait_for_selector("nav.sets a[aria-current=page]:text('target')")
    assert page.locator(".figures img").count() == 4
    page.screenshot(path=ARTIFACTS / "report-teacher.png", full_page=True)
