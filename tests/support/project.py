"""A copy of the project in a temporary folder, run the way a user runs it (dvc, reid)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of two YAML mappings; `over` wins."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def project_files() -> list[str]:
    """Tracked plus untracked-but-not-ignored files of the checkout (what a clone would hold)."""
    listed = set()
    for extra in ([], ["--others", "--exclude-standard"]):
        out = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", *extra],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        listed.update(out.splitlines())
    return sorted(f for f in listed if (ROOT / f).is_file())


def digest(path: Path) -> str:
    """sha256 over a file, or over a folder's relative paths and contents."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        h.update(b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


@dataclass
class Project:
    root: Path
    env: dict[str, str]
    first_repro: str

    def run(self, *cmd: str, check: bool = True, run_id: str = "") -> subprocess.CompletedProcess:
        """Run a command in the copy; on an unexpected failure, fail with its whole output."""
        env = dict(self.env, REID_PIPELINE_RUN_ID=run_id) if run_id else self.env
        proc = subprocess.run(cmd, cwd=self.root, env=env, capture_output=True, text=True)
        if check and proc.returncode != 0:
            pytest.fail(
                f"{' '.join(cmd)} exited with {proc.returncode}\n"
                f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
            )
        return proc

    def status(self) -> dict[str, Any]:
        return json.loads(self.run("dvc", "status", "--json").stdout or "{}")


def copy_project(root: Path, over: dict[str, Any], env: dict[str, str]) -> Project:
    """Copy the checkout into `root`, merge `over` into its params.yaml, git-init it."""
    for rel in project_files():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, root / rel)
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), over)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    project = Project(root, env, "")
    git = ["git", "-c", "user.name=reid-tests", "-c", "user.email=tests@reidflow.invalid"]
    project.run("git", "init", "-q")
    project.run("git", "add", "-A")
    project.run(*git, "commit", "-q", "-m", "project copy for a pipeline test")
    return project
