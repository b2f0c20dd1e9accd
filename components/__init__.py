"""Kubeflow Pipelines components: one per stage of `reid_core.stages.STAGES`, plus `synth`."""

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
    preprocess,
    promote,
    synth,
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
    "synth",
    "train",
]
