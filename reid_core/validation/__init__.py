"""Great Expectations suites for manifests (and, later, features)."""

from reid_core.validation.suite import ValidationReport, validate_manifest, write_report

__all__ = ["ValidationReport", "validate_manifest", "write_report"]
