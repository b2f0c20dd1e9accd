"""The CPU image runs the stages as its non-root user on a mounted workspace, and ships no
build leftovers."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.containers

ROOT = Path(__file__).resolve().parents[2]


def run_in_image(podman: list[str], image: str, workspace: Path, *args: str) -> str:
    """`reid ARGS` in a fresh container of `image` with `workspace` mounted as /workspace."""
    proc = subprocess.run(
        [*podman, "run", "--rm", "-v", f"{workspace}:/workspace", image, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, f"reid {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def shell_in_image(podman: list[str], image: str, script: str) -> str:
    proc = subprocess.run(
        [*podman, "run", "--rm", "--entrypoint", "sh", image, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return proc.stdout


def test_image_runs_as_an_unprivileged_user_with_reid_on_its_path(podman, cpu_image):
    out = shell_in_image(podman, cpu_image, "id -u; id -g; reid --help | head -n 1")
    uid, gid, usage = out.splitlines()[:3]
    assert (uid, gid) == ("10001", "10001")
    assert usage.startswith("usage: reid")


def test_runtime_layer_holds_no_compilers_sources_wheels_or_caches(podman, cpu_image):
    script = (
        "for c in gcc cc c++ g++ clang make; do command -v $c; done; "
        "ls -d /src /wheels 2>/dev/null; "
        "find /opt/venv /workspace /home/reid /root /tmp -name '*.whl' 2>/dev/null; "
        "find /opt/venv /home/reid -type d -name .cache 2>/dev/null; "
        "ls /opt/venv/lib/python3.11/site-packages | grep -i -E '^(reidflow|reid_core)'"
    )
    lines = shell_in_image(podman, cpu_image, script).split()
    # The one thing the script may print: the installed project itself (no .egg-link: not editable).
    assert sorted(lines) == sorted(
        [line for line in lines if line.startswith(("reid_core", "reidflow-"))]
    ), lines
    assert "reid_core" in lines
    assert any(line.endswith(".dist-info") for line in lines)


def test_stages_run_in_the_image_on_a_mounted_workspace(podman, cpu_image, tmp_path):
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    workspace.chmod(0o777)  # the image's user (uid 10001) writes here
    shutil.copy(ROOT / "configs" / "tiny.yaml", workspace / "params.yaml")
    data = ["--dataset", "data/source", "--manifest", "work/source.parquet"]

    run_in_image(podman, cpu_image, workspace, "data", "synth", "data/source", "--seed", "3")
    run_in_image(
        podman, cpu_image, workspace, "preprocess", *data, "--report", "reports/validation.json"
    )
    run_in_image(
        podman,
        cpu_image,
        workspace,
        "train",
        *data,
        "--checkpoint",
        "work/teacher",
        "--metrics",
        "reports/train.json",
    )
    run_in_image(
        podman,
        cpu_image,
        workspace,
        "evaluate",
        *data,
        "--model",
        "work/teacher",
        "--metrics",
        "reports/eval.json",
        "--features",
        "work/features",
        "--report",
        "reports/eval",
    )
    run_in_image(
        podman,
        cpu_image,
        workspace,
        "export",
        *data,
        "--model",
        "work/teacher",
        "--onnx",
        "work/onnx",
    )

    validation = json.loads((workspace / "reports" / "validation.json").read_text())
    assert validation["success"] is True
    train = json.loads((workspace / "reports" / "train.json").read_text())
    assert train["train_ids"] == 8
    evaluation = json.loads((workspace / "reports" / "eval.json").read_text())
    assert 0.0 < evaluation["mAP"] <= 1.0 and evaluation["num_valid_queries"] > 0
    assert (workspace / "work" / "onnx" / "model.onnx").stat().st_size > 0
    # Everything the stages wrote belongs to the image's user, none of it to root.
    written = [path for path in workspace.rglob("*") if path.name != "params.yaml"]
    owners = {path.stat().st_uid for path in written}
    assert owners == {10001}
