"""Where Triton model repositories live: a local folder, or a prefix in an S3 bucket.

Both stores publish a version the same way (`ModelRepository.publish`, over each store's own
storage steps), so that Triton never loads half a model:
1. the version's files are written where Triton cannot load them yet (`config.pbtxt` pins the
   served versions, `version_policy: specific`, and does not name the new one);
2. versions neither served before nor after are pruned, down to the newest `keep`;
3. `config.pbtxt` is rewritten, in one atomic write, to name the new served versions.
Step 3 is the only moment Triton's view changes. A version served before the publish is pruned
by the next one, so Triton never loses files it may be reloading.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path

from reid_core.atomic import atomic_output

CONFIG_FILE = "config.pbtxt"
_SPECIFIC = re.compile(r"specific\s*:?\s*\{\s*versions\s*:\s*\[([^\]]*)\]")


def served_in(config_text: str) -> list[int]:
    """The versions a config.pbtxt pins with `version_policy: specific` (empty otherwise)."""
    match = _SPECIFIC.search(config_text)
    if not match:
        return []
    return sorted(int(v) for v in re.findall(r"\d+", match.group(1)))


def _to_prune(present: list[int], before: list[int], after: list[int], keep: int) -> list[int]:
    """Versions that may go: older than the newest `keep` and served neither before nor after."""
    kept = set(sorted(present)[-keep:]) | set(before) | set(after)
    return [v for v in present if v not in kept]


def _check_version(
    version: int, before: list[int], served: list[int], files: Mapping[str, Path]
) -> None:
    """Refuse a publish that could not be made safely, before anything is written."""
    if version < 1:
        raise ValueError(f"Triton versions start at 1, got {version}")
    if version in before:
        raise ValueError(f"version {version} is being served: publish a new number")
    if version not in served:
        raise ValueError(f"the new config must serve version {version}, it serves {served}")
    for source in files.values():
        if not Path(source).is_file():
            raise FileNotFoundError(f"cannot publish {source}: no such file")


class ModelRepository(ABC):
    """A Triton model repository that promotion can publish to.

    `publish` holds the order that keeps Triton from loading half a model (module docstring);
    each store supplies the storage steps it is made of.
    """

    location: str

    @abstractmethod
    def versions(self, name: str) -> list[int]:
        """Version folders present for model `name`, ascending."""

    @abstractmethod
    def read_config(self, name: str) -> str | None:
        """The text of `name`'s config.pbtxt, or None when there is none yet."""

    @abstractmethod
    def lock(self, name: str, timeout: float = 600.0) -> AbstractContextManager[None]:
        """Exclusive hold on model `name`: promotions and rollbacks decide, publish and move
        registry aliases inside it, so racing ones are serialised."""

    @abstractmethod
    def _place_version(self, name: str, version: int, files: Mapping[str, Path]) -> str:
        """Write the complete version folder, or nothing at all; return where it lives."""

    @abstractmethod
    def _remove_version(self, name: str, version: int) -> None: ...

    @abstractmethod
    def _write_config(self, name: str, text: str) -> None:
        """Replace config.pbtxt in one atomic write: the moment Triton's view changes."""

    @abstractmethod
    def _remove_config(self, name: str) -> None:
        """Delete config.pbtxt (Triton then serves `name` no more)."""

    def served(self, name: str) -> list[int]:
        """Versions that `name`'s config.pbtxt tells Triton to serve (none: no config yet)."""
        text = self.read_config(name)
        return served_in(text) if text is not None else []

    def publish(
        self,
        name: str,
        version: int,
        files: Mapping[str, Path],
        config_text: str,
        served: list[int],
        keep: int,
    ) -> str:
        """Write `files` (name in the version folder → local file) as version `version`, prune,
        then switch config.pbtxt to `config_text` (which serves `served`); return where the
        version lives."""
        before = self.served(name)
        _check_version(version, before, served, files)
        where = self._place_version(name, version, files)
        try:
            for old in _to_prune(self.versions(name), before, served, keep):
                self._remove_version(name, old)
            self._write_config(name, config_text)
        except BaseException:
            self._remove_version(name, version)  # Triton never named it: it simply goes
            raise
        return where

    def unpublish(self, name: str, version: int, config_before: str | None) -> None:
        """Undo `publish` of `version`: config.pbtxt back to `config_before` (none: removed),
        so Triton serves what it served before, then the version's files removed."""
        if config_before is None:
            self._remove_config(name)
        else:
            self._write_config(name, config_before)
        self._remove_version(name, version)


class LocalRepository(ModelRepository):
    """A repository folder on this machine (or a volume Triton also mounts)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.location = str(self.root)

    def versions(self, name: str) -> list[int]:
        model_dir = self.root / name
        if not model_dir.is_dir():
            return []
        return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def read_config(self, name: str) -> str | None:
        config = self.root / name / CONFIG_FILE
        return config.read_text() if config.is_file() else None

    def _place_version(self, name: str, version: int, files: Mapping[str, Path]) -> str:
        # staged under a hidden name, then renamed into place
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        final = model_dir / str(version)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
        try:
            for target, source in files.items():
                shutil.copyfile(source, staging / target)
            staging.chmod(0o755)
            if final.exists():
                shutil.rmtree(final)
            staging.replace(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return str(final)

    def _remove_version(self, name: str, version: int) -> None:
        shutil.rmtree(self.root / name / str(version), ignore_errors=True)

    def _write_config(self, name: str, text: str) -> None:
        with atomic_output(self.root / name / CONFIG_FILE) as tmp:
            tmp.write_text(text)

    def _remove_config(self, name: str) -> None:
        (self.root / name / CONFIG_FILE).unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float = 600.0) -> Iterator[None]:
        # the lock file sits beside the repository, where Triton does not look for models
        root = self.root.resolve()
        root.parent.mkdir(parents=True, exist_ok=True)
        lock_path = root.with_name(f".{root.name}.{name}.lock")
        deadline = time.monotonic() + timeout
        with open(lock_path, "a") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{lock_path} held for over {timeout:.0f} s") from None
                    time.sleep(0.1)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def open_repository(location: str | Path) -> ModelRepository:
    """The store behind `triton.repository`: `s3://…` (Triton's own spelling) or a folder."""
    if str(location).startswith("s3://"):
        from reid_core.serving.s3_repository import S3Repository

        return S3Repository(str(location))
    return LocalRepository(location)
