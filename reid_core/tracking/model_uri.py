"""Telling an MLflow model URI from a checkpoint path, without importing the registry."""

from __future__ import annotations

MODEL_URI_SCHEMES = ("models:/", "runs:/")


def is_model_uri(source: str) -> bool:
    """True for MLflow URIs (`models:/…`, `runs:/…`), False for local paths."""
    return str(source).startswith(MODEL_URI_SCHEMES)
