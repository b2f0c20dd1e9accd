"""The layers of docs/ARCHITECTURE.md hold: the library imports nothing of the pipeline.

Read from the source (every import, at module level or inside a function), so a forbidden
import fails here before it can make the bare package or the library's users need the
pipeline's tools.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.imports import imported_names

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("modeling", "engine", "evaluation", "data", "distill", "uda", "export")
LIBRARY_MODULES = ("reid_core.options", "reid_core.registry")
# what the library may not import: the pipeline's layers and tools, and serving
PIPELINE = ("config", "stages", "artifacts", "tracking", "serving", "sources", "validation",
            "cli", "cluster", "experiments", "ui")  # fmt: skip
TOOLS = ("mlflow", "dvc", "kfp", "great_expectations", "tritonclient", "boto3", "botocore")


def forbidden(name: str) -> bool:
    parts = name.split(".")
    if parts[0] in TOOLS:
        return True
    return parts[0] == "reid_core" and len(parts) > 1 and parts[1] in PIPELINE


def _library_files() -> list[Path]:
    files = [f for pkg in LIBRARY for f in (ROOT / "reid_core" / pkg).rglob("*.py")]
    return sorted(files) + [ROOT / (m.replace(".", "/") + ".py") for m in LIBRARY_MODULES]


@pytest.mark.parametrize("file", _library_files(), ids=lambda f: f.relative_to(ROOT).as_posix())
def test_the_library_imports_nothing_of_the_pipeline(file):
    module = ".".join(file.relative_to(ROOT).with_suffix("").parts)
    package = module.removesuffix(".__init__") if file.name == "__init__.py" else module
    package = package if file.name == "__init__.py" else package.rpartition(".")[0]
    bad = sorted(n for n in imported_names(file, package) if forbidden(n))
    assert not bad, f"{file.relative_to(ROOT)} imports {bad}: the library must not"


def test_the_check_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from ..config import ReidConfig\n    import mlflow\n")
    names = imported_names(source, "reid_core.engine")
    assert {"reid_core.config", "mlflow"} <= names
    assert all(forbidden(n) for n in ("reid_core.config", "mlflow", "reid_core.tracking.runs"))
    assert not forbidden("reid_core.options") and not forbidden("torch")
