"""What `reid promote` decided: the decision JSON at its `--decision` path (the pipeline's
`reports/promotion.json`), read by `reid summary`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from reid_core.artifacts.json_artifact import JsonArtifact


@dataclass(frozen=True)
class PromotionRecord(JsonArtifact):
    """The registered version, whether it became champion and why, and where Triton got it."""

    WRITTEN_BY: ClassVar[str] = "reid promote"
    VERSION: ClassVar[int] = 1

    model_name: str
    version: int  # the model version promote registered
    promoted: bool
    reasons: list[str]  # the failed checks when refused, every check when promoted
    previous_champion: int | None  # the version served before, None when there was none
    evaluation_set: str  # the eval_set_hash it was judged on
    triton_version: int | None  # the Triton version published, None when not promoted
    triton_version_path: str  # where that version was written, "" when not promoted
    triton_repository: str
    mAP: float  # the primary test set's, as judged
    rank1: float
