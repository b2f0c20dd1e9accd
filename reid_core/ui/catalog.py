"""The models the page can search with: the registered versions of `promote.model_name`, each
run by ONNX Runtime in this process (its ONNX file fetched from the registry once) or by the
Triton server that serves it."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reid_core.atomic import atomic_output
from reid_core.serving.embedders import ImageEmbedder
from reid_core.tracking.registry import CHAMPION, registered_onnx

if TYPE_CHECKING:
    from reid_core.config import TritonConfig

REFRESH_S = 5.0  # how stale the list of registered versions may be


class ModelChoiceError(LookupError):
    """A model version the page cannot search with; the message says why and what to do."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version, as the page lists it."""

    name: str
    version: int
    aliases: tuple[str, ...]
    triton_version: int | None  # the Triton version it was published as, if it was

    @property
    def label(self) -> str:
        return f"v{self.version}" + (f" ({', '.join(self.aliases)})" if self.aliases else "")


@dataclass(frozen=True)
class TritonTarget:
    """A Triton server that serves the registered model: host:port and protocol."""

    url: str
    protocol: str = "http"

    @classmethod
    def from_config(
        cls, triton: TritonConfig, url: str | None = None, protocol: str = "http"
    ) -> TritonTarget:
        """`url`, or the local server the `triton` section describes."""
        from reid_core.serving.client import local_url

        return cls(url or local_url(triton, protocol), protocol)


class ModelCatalog:
    """Registered versions of one model, their ONNX files (cached under `cache`) and
    embedders (one per version, kept)."""

    def __init__(
        self,
        model_name: str,
        cache: Path,
        triton: TritonTarget | None = None,
        refresh_s: float = REFRESH_S,
    ):
        self.model_name = model_name
        self.cache = Path(cache)
        self.triton = triton
        self.refresh_s = refresh_s
        self._embedders: dict[int, ImageEmbedder] = {}
        self._identities: dict[int, dict[str, str]] = {}
        self._listed: tuple[float, list[ModelVersion]] | None = None
        self._lock = threading.Lock()

    @property
    def runtime(self) -> str:
        return f"Triton at {self.triton.url}" if self.triton else "ONNX Runtime in this process"

    def versions(self) -> list[ModelVersion]:
        """Every registered version, newest first, as the registry said at most `refresh_s`
        seconds ago (a search asks for them; the registry is not asked on each one)."""
        listed = self._listed
        if listed is None or time.monotonic() - listed[0] > self.refresh_s:
            listed = self._listed = (time.monotonic(), self._read_versions())
        return listed[1]

    def forget(self) -> None:
        """Read the registry again at the next call (after this process changed it)."""
        self._listed = None

    def _read_versions(self) -> list[ModelVersion]:
        import mlflow

        client = mlflow.MlflowClient()
        found = client.search_model_versions(f"name = '{self.model_name}'")
        if not found:
            return []
        aliases = client.get_registered_model(self.model_name).aliases
        out = []
        for v in found:
            number = int(v.version)
            triton = v.tags.get("reid.triton_version", "")
            out.append(
                ModelVersion(
                    self.model_name,
                    number,
                    tuple(sorted(a for a, n in aliases.items() if int(n) == number)),
                    int(triton) if triton else None,
                )
            )
        return sorted(out, key=lambda m: -m.version)

    def choose(self, version: int | None) -> ModelVersion:
        """`version`, or the champion (the newest version when there is none) for None."""
        versions = self.versions()
        if not versions:
            raise ModelChoiceError(
                f"no registered versions of {self.model_name}: run the pipeline (make demo) "
                "so that promote registers one"
            )
        if version is None:
            return next((m for m in versions if CHAMPION in m.aliases), versions[0])
        for m in versions:
            if m.version == version:
                return m
        raise ModelChoiceError(f"{self.model_name} has no version {version}")

    def onnx_file(self, model: ModelVersion) -> Path:
        """The version's ONNX file, fetched from the registry the first time."""
        path = self.cache / model.name / f"v{model.version}" / "model.onnx"
        if not path.is_file():
            with registered_onnx(model.name, model.version) as source, atomic_output(path) as out:
                out.write_bytes(source.read_bytes())
        return path

    def identity(self, model: ModelVersion) -> dict[str, str]:
        """What an index records of the model that embedded it: name, version and the
        digest of its ONNX file (a registry rebuilt from scratch reuses version numbers)."""
        if model.version not in self._identities:
            digest = hashlib.sha256(self.onnx_file(model).read_bytes()).hexdigest()
            self._identities[model.version] = {
                "name": model.name,
                "version": str(model.version),
                "sha256": digest,
            }
        return self._identities[model.version]

    def embedder(self, model: ModelVersion) -> ImageEmbedder:
        """The version's embedder: its ONNX file in ONNX Runtime, or Triton pinned to the
        Triton version it was published as (never whatever Triton serves newest)."""
        with self._lock:
            if model.version not in self._embedders:
                self._embedders[model.version] = self._connect(model)
            return self._embedders[model.version]

    def _connect(self, model: ModelVersion) -> ImageEmbedder:
        if self.triton is None:
            from reid_core.serving.embedders import OnnxEmbedder

            return OnnxEmbedder(self.onnx_file(model))
        if model.triton_version is None:
            raise ModelChoiceError(
                f"{model.name} v{model.version} was never published to Triton (it was not "
                "promoted): start `reid ui` without --triton to search with it in this process"
            )
        from reid_core.serving.client import TritonEmbedder

        return TritonEmbedder(
            self.triton.url, model.name, self.triton.protocol, str(model.triton_version)
        )

    def close(self) -> None:
        for embedder in self._embedders.values():
            embedder.close()
        self._embedders.clear()
