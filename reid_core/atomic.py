"""Write outputs so that readers never see half of them: build beside, then rename."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output(dest: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `dest`; on success it replaces `dest`, on error it goes.

    For a directory the caller fills the yielded (existing, empty) folder. Two processes may
    replace the same `dest` at once: the last one wins whole. Temporaries that a killed
    process left beside `dest` are removed first. Outputs get the usual modes (0755 folders,
    0644 files), not the temporaries' 0700 / 0600.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(dest)
    prefix = f".{dest.name}.{_TMP}{os.getpid()}-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=dest.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=dest.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if directory:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would make a shared dataset private
        _replace_directory(tmp, dest, prefix)
    else:
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)


_TMP = "tmp-"  # temporaries are named .<dest>.tmp-<pid>-<random>


def _replace_directory(tmp: Path, dest: Path, prefix: str) -> None:
    """Rename the folder `tmp` to `dest`, moving whatever is at `dest` aside first (another
    process may put a folder there again in between: then again)."""
    for _ in range(100):
        try:
            os.replace(tmp, dest)
            return
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        aside = Path(tempfile.mkdtemp(prefix=prefix, dir=dest.parent))
        with contextlib.suppress(FileNotFoundError):  # gone already: the other went first
            os.replace(dest, aside / "old")
        _remove(aside)
    raise OSError(f"could not replace {dest}: other processes keep writing it")


def _remove_orphans(dest: Path) -> None:
    """Remove temporaries beside `dest` whose process is gone (killed mid-write)."""
    for path in dest.parent.glob(f".{glob.escape(dest.name)}.{_TMP}*"):
        pid = path.name[len(dest.name) + len(_TMP) + 2 :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            _remove(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


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
