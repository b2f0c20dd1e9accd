"""Image paths from list files and manifests stay inside their dataset folder.

A dataset's own files name its images (list files, CSV, Parquet manifests); none may reach a
file elsewhere, which evaluation would then read, draw and upload: no absolute path, no `..`,
and no symbolic link that leads out of the folder.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from reid_core.data.errors import DatasetError


def path_problem(relative: str) -> str | None:
    """Why `relative` cannot name an image inside a dataset folder, or None when it can."""
    if not relative:
        return "is empty"
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or relative[1:3] == ":\\" or relative[1:3] == ":/":
        return "must be relative to the dataset root"
    if ".." in pure.parts:
        return "must not leave the dataset root ('..')"
    return None


def confined(root: str | Path, relative: str) -> Path:
    """`root / relative`, refused with a DatasetError when it is not inside `root`, also
    after following symbolic links."""
    root = Path(root)
    problem = path_problem(relative)
    if problem:
        raise DatasetError(f"dataset {root}: image path {relative!r} {problem}")
    full = root / relative
    if not full.resolve().is_relative_to(root.resolve()):
        raise DatasetError(f"dataset {root}: image {relative} leads outside it (symbolic link)")
    return full
