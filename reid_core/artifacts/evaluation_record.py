"""What `reid evaluate` measured: the metrics JSON at its `--metrics` path.

`reid promote` judges the primary test set's figures, `reid summary` shows each set's, and
`dvc metrics show/diff` read the file too: the primary set's metrics are its top-level keys
(`rank1`, `mAP`, ...), every set's are a row of its `test_sets` table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from reid_core.artifacts.json_artifact import JsonArtifact, inlined

# the metrics every evaluation has and its readers rely on (rank5, rank10 need a gallery that
# long; TAR@FAR names depend on evaluate.fars)
REQUIRED_METRICS = ("rank1", "mAP", "mINP")


@dataclass(frozen=True)
class EvaluatedSet:
    """One test set's row of the `test_sets` table: its metrics (flat keys) and its data."""

    metrics: dict[str, float] = inlined(*REQUIRED_METRICS)
    domain: str
    eval_set_hash: str  # the query/gallery labels (reid_core.data.manifest.eval_set_hash)
    dvc_md5: str  # the dataset's DVC hash, "" when not tracked by DVC


@dataclass(frozen=True)
class EvaluationRecord(JsonArtifact):
    """One model on one or more test sets; the first set is the primary one."""

    WRITTEN_BY: ClassVar[str] = "reid evaluate"
    VERSION: ClassVar[int] = 1

    metrics: dict[str, float] = inlined(*REQUIRED_METRICS)  # the primary set's (flat keys)
    model_stage: str
    domain: str  # the primary set's
    test_set: str  # the primary set's name
    eval_set_hash: str  # the primary set's: promote compares models on the same one only
    # how the distances were computed (evaluate's settings)
    metric: str
    flip: bool
    query_expansion: str
    rerank: bool
    test_sets: dict[str, EvaluatedSet]  # every set (the primary one too) by name
    # DSR re-ranking: its fusion weight (None: off) and the validation set that chose it
    # ("": given as evaluate.dsr_weight)
    dsr_weight: float | None = None
    dsr_validation: str = ""

    def __post_init__(self) -> None:
        if self.test_set not in self.test_sets:
            listed = ", ".join(map(repr, self.test_sets)) or "none"
            raise ValueError(
                f"the primary test set {self.test_set!r} has no row in test_sets ({listed})"
            )

    def sets(self) -> list[tuple[str, EvaluatedSet]]:
        """(name, row) of each test set: the primary one first, then by name."""
        names = sorted(self.test_sets, key=lambda name: (name != self.test_set, name))
        return [(name, self.test_sets[name]) for name in names]
