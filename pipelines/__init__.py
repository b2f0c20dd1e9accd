"""Kubeflow Pipelines definitions (`training`) and the compile / run-local / submit tools."""
