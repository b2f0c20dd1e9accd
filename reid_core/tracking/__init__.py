"""MLflow runs, lineage and the model registry."""
