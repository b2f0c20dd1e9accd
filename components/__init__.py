"""Kubeflow Pipelines components: one per stage of `reid_core.stages.STAGES`, plus `synth`."""

from components.stages import (
    DEFAULT_IMAGE,
    IMAGE,
    STAGE_COMPONENTS,
    adapt,
    distill,
    evaluate,
    export,
    preprocess,
    promote,
    synth,
    train,
)

__all__ = [
    "DEFAULT_IMAGE",
    "IMAGE",
    "STAGE_COMPONENTS",
    "adapt",
    "distill",
    "evaluate",
    "export",
    "preprocess",
    "promote",
    "synth",
    "train",
]
