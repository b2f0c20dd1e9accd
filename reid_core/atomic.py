"""Write outputs so that readers never see half of them: build beside, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output(dest: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `dest`; on success it replaces `dest`, on error it goes.

    For a directory the caller fills the yielded (existing, empty) folder.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if directory:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would make a shared dataset private
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            _remove(old)
    else:
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)


def remove_outputs(*paths: str | Path) -> None:
    """Delete stale outputs so a failed stage leaves none behind."""
    for path in paths:
        _remove(Path(path))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_json(dest: str | Path, payload: object) -> None:
    """Write JSON atomically (sorted keys, so reruns give identical bytes)."""
    import json

    with atomic_output(dest) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
