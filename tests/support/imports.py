"""What a Python file imports, read from its source (never by importing it)."""

from __future__ import annotations

import ast
from pathlib import Path


def imported_names(file: Path, package: str) -> set[str]:
    """Absolute names `file` imports anywhere in it (also inside functions). `from a import b`
    gives both `a` and `a.b`, since b may be a module or a name in a; relative imports resolve
    in `package`, the package the file belongs to."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                base = node.module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found
