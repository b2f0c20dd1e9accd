"""An unreachable tracking server: retried with backoff, then a clear error."""

from __future__ import annotations

import http.server
import threading
import time

import pytest

from reid_core.cli import main
from reid_core.serving.server import free_ports
from reid_core.tracking.runs import wait_for_server


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_an_unreachable_server_is_retried_with_growing_waits_then_named():
    (port,) = free_ports(1)
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port} unreachable after 3 attempts"):
        wait_for_server(f"http://127.0.0.1:{port}", attempts=3, backoff_s=0.1)
    assert time.monotonic() - start >= 0.3  # waited 0.1 + 0.2


def test_a_server_that_comes_up_during_the_retries_is_used():
    (port,) = free_ports(1)
    server = http.server.HTTPServer(("127.0.0.1", port), Health)
    starter = threading.Timer(0.4, server.serve_forever)
    starter.start()
    try:
        wait_for_server(f"http://127.0.0.1:{port}", attempts=6, backoff_s=0.1)
    finally:
        server.shutdown()
        starter.join()
        server.server_close()


def test_a_command_fails_with_the_message_when_the_server_is_down(monkeypatch, capsys):
    (port,) = free_ports(1)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    sets = ["--set", "tracking.connect_attempts=2", "--set", "tracking.connect_backoff_s=0"]
    assert main(["models", "compare", *sets]) == 1
    assert f"MLflow tracking server http://127.0.0.1:{port} unreachable" in capsys.readouterr().err
