"""dvc.yaml's code dependencies match the code each stage runs.

A stage runs `reid <stage>`: cli.py, then `reid_core.stages` and the stage's module, and
everything they import (at any depth, also inside functions, with each package's
`__init__`). Every such file must be under one of the stage's deps, so that changing it
makes `dvc repro` run the stage again; and every code dep must hold one of them.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.support.imports import imported_names

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "reid_core"


def _file_of(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


@cache
def _imports(module: str) -> frozenset[str]:
    """The project modules `module`'s source imports, wherever in it the import sits."""
    file = _file_of(module)
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    found = imported_names(file, package)
    return frozenset(m for m in found if m.split(".")[0] == PACKAGE and _file_of(m))


def code_files(stage: str) -> set[str]:
    """The project's files `reid <stage>` runs, relative to the root."""
    seen: set[str] = set()
    todo = ["reid_core.stages", f"reid_core.stages.{stage}"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages
        todo += _imports(module)
    files = {_file_of(m).relative_to(ROOT).as_posix() for m in seen}
    return files | {"reid_core/cli.py"}


def _stages() -> list[tuple[str, str, list[str]]]:
    """(dvc stage, reid stage it runs, its deps) for every stage of dvc.yaml."""
    out = []
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        (command,) = re.findall(r"\breid (\w+)", body["cmd"])
        out.append((name, command, body.get("deps", [])))
    return out


def _covers(dep: str, file: str) -> bool:
    return file == dep or file.startswith(dep.rstrip("/") + "/")


def fewest_deps(files: set[str], folder: str = PACKAGE) -> list[str]:
    """`files` as dvc.yaml deps: a folder where the stage runs all its Python files (at any
    depth), else the files themselves."""
    inside = {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*.py")}
    if inside <= files:
        return [folder]
    deps = sorted(f for f in files if Path(f).parent.as_posix() == folder)
    for child in sorted(p for p in (ROOT / folder).iterdir() if p.is_dir()):
        name = child.relative_to(ROOT).as_posix()
        if any(_covers(name, f) for f in files):
            deps += fewest_deps(files, name)
    return deps


@pytest.mark.parametrize(("name", "command", "deps"), _stages(), ids=[s[0] for s in _stages()])
def test_every_file_a_stage_runs_is_a_dependency(name, command, deps):
    files = code_files(command)
    missing = sorted(f for f in files if not any(_covers(d, f) for d in deps))
    assert not missing, (
        f"dvc.yaml stage {name} lacks deps on {missing}; its code deps, fewest first: "
        + "".join(f"\n  - {d}" for d in fewest_deps(files))
    )


@pytest.mark.parametrize(("name", "command", "deps"), _stages(), ids=[s[0] for s in _stages()])
def test_every_code_dependency_holds_code_the_stage_runs(name, command, deps):
    files = code_files(command)
    code_deps = [d for d in deps if d.startswith(f"{PACKAGE}/") or d == PACKAGE]
    dead = [d for d in code_deps if not any(_covers(d, f) for f in files)]
    assert not dead, f"dvc.yaml stage {name} depends on {dead}, which it never runs"


def test_the_closure_follows_imports_inside_functions_and_parent_packages():
    files = code_files("train")
    assert {"reid_core/__init__.py", "reid_core/stages/train.py", "reid_core/config.py"} <= files
    assert "reid_core/stages/_fit.py" in files  # imported by train.py
    assert "reid_core/stages/promote.py" not in files


def test_caches_written_next_to_the_code_are_not_dependencies():
    """numba's on-disk cache and Python's bytecode sit in __pycache__; DVC must not hash them
    (a run would otherwise change the code's hash and the committed dvc.lock)."""
    ignored = (ROOT / ".dvcignore").read_text().split()
    assert "__pycache__/" in ignored


def test_dvc_lock_records_the_code_as_committed():
    """The demo must leave the committed dvc.lock as it is: the code hashes recorded there
    are this tree's, so a stage's entry changes only when what it computes changes."""
    import json
    import subprocess
    import sys

    dvc = Path(sys.executable).with_name("dvc")
    out = subprocess.run(
        [str(dvc), "status", "--json"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    stale: dict[str, list[str]] = {}
    for stage, changes in json.loads(out).items():
        for change in changes:
            if isinstance(change, str):  # e.g. "changed command"
                stale.setdefault(stage, []).append(change)
                continue
            deps = change.get("changed deps", {})
            stale_deps = [p for p in deps if Path(p).parts[0] not in ("data", "work", "reports")]
            if stale_deps:
                stale.setdefault(stage, []).extend(stale_deps)
    assert not stale, (
        f"dvc.lock is stale for {stale}: run `make demo` and commit the dvc.lock it writes"
    )
