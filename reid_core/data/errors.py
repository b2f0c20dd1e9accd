"""The one error type for a dataset we cannot use."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset (folder, list file, manifest or image) is missing or malformed.

    The message always names the offending file or folder, so the user can go and fix it.
    """
