"""What crosses a stage boundary: one typed definition per artifact, its file name and keys
in one place, read back with a clear error when the file is not what its writer writes."""

from reid_core.artifacts.evaluation_record import EvaluatedSet, EvaluationRecord
from reid_core.artifacts.export_record import ExportRecord
from reid_core.artifacts.features_file import FeatureSet, FeaturesFileError, SplitFeatures
from reid_core.artifacts.index_info import IndexInfo
from reid_core.artifacts.json_artifact import JsonArtifact
from reid_core.artifacts.model_lineage import ModelLineage
from reid_core.artifacts.promotion_record import PromotionRecord

__all__ = [
    "EvaluatedSet",
    "EvaluationRecord",
    "ExportRecord",
    "FeatureSet",
    "FeaturesFileError",
    "IndexInfo",
    "JsonArtifact",
    "ModelLineage",
    "PromotionRecord",
    "SplitFeatures",
]
