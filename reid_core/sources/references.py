"""The spelling of a dataset reference, parsed into one typed value per kind.

    synth:day                  the synthetic generator: style (day | dusk), ?seed=N (default 0)
    synth:dusk?seed=1
    dvc:REPO?path=PATH&rev=REV a DVC-tracked folder PATH in the git repository REPO (URL or local
                               path) at revision REV (tag, branch or commit; default: its HEAD)
    s3://bucket/prefix         every object under the prefix; the endpoint as for the Triton
                               repository: s3://http://host:port/bucket/prefix, or AWS_ENDPOINT_URL
    data/market1501            a local folder (relative to the working directory), or file:///abs

`str(reference)` gives the canonical spelling back, so a parsed value round-trips.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, urlencode

SYNTH_STYLES = ("day", "dusk")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:")


@dataclass(frozen=True)
class SynthReference:
    style: str = "day"
    seed: int = 0

    kind = "synth"

    def __str__(self) -> str:
        return f"synth:{self.style}?seed={self.seed}"


@dataclass(frozen=True)
class DvcReference:
    repo: str
    path: str  # relative, POSIX, inside the repository
    rev: str = ""  # empty: the repository's HEAD

    kind = "dvc"

    def __str__(self) -> str:
        query = {"path": self.path, **({"rev": self.rev} if self.rev else {})}
        return f"dvc:{self.repo}?{urlencode(query, safe='/')}"


@dataclass(frozen=True)
class S3Reference:
    location: str  # s3://bucket/prefix, as reid_core.s3_location.S3Location parses it

    kind = "s3"

    def __str__(self) -> str:
        return self.location


@dataclass(frozen=True)
class LocalReference:
    path: Path

    kind = "local"

    def __str__(self) -> str:
        return str(self.path)


DatasetReference = SynthReference | DvcReference | S3Reference | LocalReference


def parse_reference(text: str) -> DatasetReference:
    """Parse a dataset reference; ValueError naming what is wrong and the accepted spellings."""
    text = text.strip()
    if not text:
        raise ValueError("empty dataset reference")
    if text.startswith("synth:"):
        return _parse_synth(text)
    if text.startswith("dvc:"):
        return _parse_dvc(text)
    if text.startswith("s3://"):
        from reid_core.s3_location import S3Location

        location = S3Location.parse(text)  # raises ValueError with the S3 spellings
        if not location.prefix:
            raise ValueError(f"{text!r}: name a folder under the bucket (s3://bucket/prefix)")
        return S3Reference(text.rstrip("/"))
    if text.startswith("file://"):
        return LocalReference(Path(text.removeprefix("file://")))
    if _SCHEME.match(text):  # a local folder with a colon in its name: write ./name
        raise ValueError(
            f"unknown dataset reference scheme in {text!r}: use synth:STYLE, dvc:REPO?path=PATH, "
            "s3://bucket/prefix or a local folder"
        )
    return LocalReference(Path(text))


def _query(text: str, allowed: set[str]) -> tuple[str, dict[str, str]]:
    head, _, query = text.partition("?")
    values: dict[str, str] = {}
    for key, found in parse_qs(query, keep_blank_values=True, strict_parsing=False).items():
        if key not in allowed:
            raise ValueError(f"{text!r}: unknown option {key!r} (allowed: {sorted(allowed)})")
        if len(found) != 1:
            raise ValueError(f"{text!r}: option {key!r} given {len(found)} times")
        values[key] = found[0]
    if query and not values:
        raise ValueError(f"{text!r}: malformed options after '?'")
    return head, values


def _parse_synth(text: str) -> SynthReference:
    head, options = _query(text, {"seed"})
    style = head.removeprefix("synth:") or "day"
    if style not in SYNTH_STYLES:
        raise ValueError(f"{text!r}: synthetic style must be one of {SYNTH_STYLES}, not {style!r}")
    seed = options.get("seed", "0")
    if not seed.isdigit():
        raise ValueError(f"{text!r}: seed must be a non-negative integer, not {seed!r}")
    return SynthReference(style, int(seed))


def _parse_dvc(text: str) -> DvcReference:
    head, options = _query(text, {"path", "rev"})
    repo = head.removeprefix("dvc:")
    if not repo:
        raise ValueError(f"{text!r}: name the git repository: dvc:REPO?path=PATH[&rev=REV]")
    path = options.get("path", "").strip("/")
    if not path:
        raise ValueError(f"{text!r}: name the folder inside the repository with ?path=PATH")
    if ".." in PurePosixPath(path).parts or path.startswith("/"):
        raise ValueError(f"{text!r}: path must stay inside the repository, not {path!r}")
    return DvcReference(repo, path, options.get("rev", ""))
