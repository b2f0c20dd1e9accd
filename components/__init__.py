"""Kubeflow Pipelines components: one per stage of `reid_core.stages.STAGES`."""

from components.stages import (
    DEFAULT_IMAGE,
    IMAGE,
    MAX_TEST_SETS,
    MULTIPLE_SLOTS,
    STAGE_COMPONENTS,
    STAGE_EXTRA_PARAMETERS,
    UI_OUTPUTS,
    adapt,
    distill,
    evaluate,
    evaluate_inputs,
    export,
    fetch,
    preprocess,
    promote,
    train,
)

__all__ = [
    "DEFAULT_IMAGE",
    "IMAGE",
    "MAX_TEST_SETS",
    "MULTIPLE_SLOTS",
    "STAGE_COMPONENTS",
    "STAGE_EXTRA_PARAMETERS",
    "UI_OUTPUTS",
    "adapt",
    "distill",
    "evaluate",
    "evaluate_inputs",
    "export",
    "preprocess",
    "promote",
    "fetch",
    "train",
]
