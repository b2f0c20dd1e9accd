"""Datasets named by reference: the synthetic generator, a DVC-tracked folder in a git
repository at a revision, a folder under an S3 prefix, or a local folder. One spelling for the
CLI, params.yaml/dvc.yaml and the KFP pipeline (`references`); `fetch` materialises a reference
as a dataset folder and records exactly what it fetched."""

from reid_core.sources.fetch import (
    NO_DATASET,
    FetchError,
    FetchRecord,
    fetch_dataset,
    read_record,
)
from reid_core.sources.references import (
    DatasetReference,
    DvcReference,
    LocalReference,
    S3Reference,
    SynthReference,
    parse_reference,
)

__all__ = [
    "NO_DATASET",
    "DatasetReference",
    "DvcReference",
    "FetchError",
    "FetchRecord",
    "LocalReference",
    "S3Reference",
    "SynthReference",
    "fetch_dataset",
    "parse_reference",
    "read_record",
]
