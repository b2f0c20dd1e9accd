"""Facts that make a result traceable: code commit, data version, config hash."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml


def git_commit(cwd: str | Path = ".") -> str:
    """The checked-out commit (suffixed `-dirty` with local changes), or REID_GIT_COMMIT.

    Inside a container there is no .git; the image build passes the commit in the environment.
    """
    if os.environ.get("REID_GIT_COMMIT"):
        return os.environ["REID_GIT_COMMIT"]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def dvc_hash(path: str | Path, repo_root: str | Path = ".") -> str:
    """The md5 DVC recorded for `path` (in dvc.lock or a .dvc file), or '' when untracked."""
    path = Path(path).resolve()
    root = Path(repo_root).resolve()
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        return ""
    candidates = [(root / "dvc.lock", None), (path.with_name(path.name + ".dvc"), path.name)]
    for lock, own_name in candidates:
        if not lock.is_file():
            continue
        doc = yaml.safe_load(lock.read_text()) or {}
        if own_name is not None:
            outs = doc.get("outs", [])
            wanted = own_name
        else:
            outs = [o for stage in doc.get("stages", {}).values() for o in stage.get("outs", [])]
            wanted = rel
        for out in outs:
            if out.get("path") == wanted and out.get("md5"):
                return out["md5"]
    return ""
