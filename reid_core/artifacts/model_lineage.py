"""Where a model the pipeline trained came from: its lineage, kept in its checkpoint's
`meta.json` beside the library's own keys (height, width, embedding_dim; see
`reid_core.engine.checkpoint`, which knows nothing of these). `reid train`, `distill` and
`adapt` write it; `reid evaluate` and `reid promote` read it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from reid_core.artifacts.json_artifact import from_json_object

WRITTEN_BY = "reid train, distill or adapt"


@dataclass(frozen=True)
class ModelLineage:
    """The stage and data behind a checkpoint; each stage's own facts are None elsewhere."""

    stage: str  # train, distill or adapt
    role: str  # teacher, student or adapted
    domain: str  # the training data's (its manifest's)
    data_fingerprint: str
    dvc_md5: str  # the training data's DVC hash, "" when not tracked by DVC
    data_lineage: str  # JSON: where the training data was fetched from (registry tags)
    config_hash: str
    teachers: list[str] | None = None  # distill: each teacher's folder or model URI
    teacher_weights_sha256: list[str] | None = None  # distill: each teacher's weights
    source_weights_sha256: str | None = None  # adapt: the weights it started from
    rounds_completed: int | None = None  # adapt

    def __post_init__(self) -> None:
        self.data_lineage_tags()  # a bad one is refused as the checkpoint is read, by name

    def data_lineage_tags(self) -> dict[str, str]:
        """`data_lineage` as the registry tags it names (a JSON object of strings)."""
        try:
            tags = json.loads(self.data_lineage or "{}")
        except json.JSONDecodeError as err:
            raise ValueError(f"data_lineage is not JSON ({err})") from None
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            raise ValueError(f"data_lineage must be a JSON object of strings: {tags!r}")
        return tags

    def as_meta(self) -> dict[str, Any]:
        """The checkpoint metadata keys it adds (another stage's facts left out)."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], meta_file: str | Path) -> ModelLineage:
        """The lineage in checkpoint metadata read from `meta_file` (as `load_checkpoint`
        returns it); the library's keys are not its business. A missing key or a value of the
        wrong type is a JsonFileError naming `meta_file`."""
        names = {f.name for f in fields(cls)}
        return from_json_object(
            cls,
            {key: value for key, value in meta.items() if key in names},
            str(meta_file),
            f"; is it a checkpoint of {WRITTEN_BY}?",
        )
