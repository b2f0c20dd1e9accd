"""Materialise a dataset reference as a local folder, written atomically, and record what was
fetched (the provenance a model's lineage tags carry)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import ClassVar

from reid_core.artifacts.json_artifact import JsonArtifact
from reid_core.atomic import atomic_output
from reid_core.redact import redact
from reid_core.sources.references import (
    DatasetReference,
    DvcReference,
    LocalReference,
    S3Reference,
    SynthReference,
)

log = logging.getLogger(__name__)


RECORD_FILE = ".fetch.json"  # the record, inside the dataset folder it describes
NO_DATASET = "none"  # the record's kind for no dataset (an empty reference: no target)


class FetchError(RuntimeError):
    """A reference that cannot be fetched; the message names the reference and the cause."""


class UnusableReference(FetchError, LookupError):
    """The reference names no usable dataset: a folder or path that does not exist, is no
    folder, is not tracked, is empty or links out of itself. Bad input (exit 2), where
    FetchError alone is a failed run (a server that did not answer, say)."""


@dataclass(frozen=True)
class FetchRecord(JsonArtifact):
    """What a fetch produced and where it came from. Only the fields of its kind are set."""

    FILE: ClassVar[str] = RECORD_FILE
    WRITTEN_BY: ClassVar[str] = "reid fetch"

    reference: str  # canonical spelling, credentials removed
    kind: str
    files: int
    bytes: int
    content_sha256: str  # over the sorted relative paths and each file's SHA-256
    repo: str = ""  # dvc: repository (credentials removed)
    rev: str = ""  # dvc: the commit the revision resolved to
    path: str = ""  # dvc: folder inside the repository
    md5: str = ""  # dvc: the folder's DVC hash (…​.dir)
    etags: dict[str, str] = field(default_factory=dict)  # s3: key under the prefix → ETag

    def lineage_tags(self, name: str) -> dict[str, str]:
        """Registry tags for the dataset called `name` (source, target): short values only."""
        tags = {
            "reference": self.reference,
            "kind": self.kind,
            "files": str(self.files),
            "content_sha256": self.content_sha256,
            "repo": self.repo,
            "rev": self.rev,
            "path": self.path,
            "md5": self.md5,
        }
        if self.etags:
            listing = "".join(f"{key}\t{etag}\n" for key, etag in sorted(self.etags.items()))
            tags["etags_sha256"] = hashlib.sha256(listing.encode()).hexdigest()
        return {f"reid.dataset.{name}.{key}": value for key, value in tags.items() if value}


def fetch_dataset(
    reference: DatasetReference | None, dest: str | Path, *, synth_options: dict | None = None
) -> FetchRecord:
    """Write the dataset `reference` names to `dest` (replaced only on success).

    `synth_options` are the generator's sizes (SynthSpec fields other than style and seed).
    None (no dataset: an empty `datasets.target`) writes a folder holding only a record of kind
    NO_DATASET, so a pipeline's data flow stays the same shape. Raises FetchError, with nothing
    written, for anything that stops the fetch.
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"dataset destination {dest} exists and is not a folder")
    with atomic_output(dest, directory=True) as tmp:
        if reference is None:
            record = FetchRecord(reference="", kind=NO_DATASET, files=0, bytes=0, content_sha256="")
        else:
            record = _fetch_into(reference, tmp, synth_options or {})
        record.save(tmp)
    log.info("fetched %s into %s: %d files", record.reference or "no dataset", dest, record.files)
    return record


def _fetch_into(reference: DatasetReference, tmp: Path, synth_options: dict) -> FetchRecord:
    """Write the dataset `reference` names into the empty folder `tmp`; its record."""
    if isinstance(reference, SynthReference):  # the generator also takes the synth sizes
        provenance = _fetch_synth(reference, tmp, synth_options)
    else:
        fetchers = {DvcReference: _fetch_dvc, S3Reference: _fetch_s3, LocalReference: _fetch_local}
        provenance = fetchers[type(reference)](reference, tmp)
    files, size, digest = _content(tmp)
    if files == 0:
        raise UnusableReference(f"dataset {redact(str(reference))} is empty: no files to fetch")
    return FetchRecord(
        reference=redact(str(reference)),
        kind=reference.kind,
        files=files,
        bytes=size,
        content_sha256=digest,
        **provenance,
    )


def read_record(dataset: str | Path) -> FetchRecord | None:
    """The record `fetch_dataset` left in a dataset folder; None for a folder not fetched."""
    return FetchRecord.load(dataset) if (Path(dataset) / RECORD_FILE).is_file() else None


def _fetch_synth(reference: SynthReference, tmp: Path, options: dict) -> dict:
    from reid_core.data.synth import SynthSpec, generate

    spec = SynthSpec(**{**options, "style": reference.style, "seed": reference.seed})
    generate(tmp, spec)
    return {}


def _fetch_local(reference: LocalReference, tmp: Path) -> dict:
    root = reference.path.resolve()
    if not root.is_dir():
        raise UnusableReference(
            f"local dataset folder {reference.path} does not exist or is no folder"
        )
    for path in sorted(root.rglob("*")):
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise UnusableReference(
                f"local dataset {reference.path}: {path.relative_to(root)} links outside the folder"
            )
        target = tmp / path.relative_to(root)
        if path.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path.resolve(), target)  # same file system: no copy
            except OSError:
                shutil.copy2(path, target)
    return {}


def _fetch_dvc(reference: DvcReference, tmp: Path) -> dict:
    from dvc.api import DVCFileSystem

    where = f"{redact(reference.repo)} at {reference.rev or 'HEAD'}"
    remote = "://" in reference.repo or "@" in reference.repo.split("/")[0]
    if not remote and not Path(reference.repo).is_dir():
        raise UnusableReference(f"dataset {reference}: no git repository at {reference.repo}")
    try:
        fs = DVCFileSystem(reference.repo, rev=reference.rev or None)
        commit = fs.repo.scm.resolve_rev(reference.rev or "HEAD")
    except Exception as exc:  # dvc's CloneError, RevError, SCMError: all mean the same here
        raise FetchError(
            f"dataset {redact(str(reference))}: cannot open git repository {where} "
            f"(unreachable, not a git repository, or no such revision): {redact(str(exc))}"
        ) from None
    try:
        info = fs.info(reference.path)
    except FileNotFoundError:
        raise UnusableReference(
            f"dataset {redact(str(reference))}: {reference.path} does not exist in {where}"
        ) from None
    if info.get("type") != "directory":
        raise UnusableReference(
            f"dataset {redact(str(reference))}: {reference.path} is not a folder"
        )
    md5 = info.get("md5") or info.get("dvc_info", {}).get("md5", "")
    if not md5:
        raise UnusableReference(
            f"dataset {redact(str(reference))}: {reference.path} in {where} is not tracked by DVC"
        )
    try:
        fs.get(reference.path.rstrip("/") + "/", str(tmp) + "/", recursive=True)
    except Exception as exc:
        raise FetchError(
            f"dataset {redact(str(reference))}: cannot download {reference.path} from the DVC "
            f"remote of {where}: {type(exc).__name__}: {redact(str(exc))}"
        ) from None
    finally:
        fs.close()
    return {"repo": redact(reference.repo), "rev": commit, "path": reference.path, "md5": md5}


def _fetch_s3(reference: S3Reference, tmp: Path) -> dict:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from reid_core.serving.s3_repository import S3Location, s3_client

    location = S3Location.parse(reference.location)
    prefix = location.prefix + "/"
    client = s3_client(location.endpoint_url)
    etags: dict[str, str] = {}
    try:
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=location.bucket, Prefix=prefix
        ):
            for item in page.get("Contents", []):
                relative = item["Key"][len(prefix) :]
                if not relative or relative.endswith("/"):
                    continue  # folder markers
                parts = PurePosixPath(relative).parts
                if ".." in parts or relative.startswith("/"):
                    raise FetchError(f"dataset {reference}: object key {item['Key']!r} escapes it")
                etags[relative] = item["ETag"].strip('"')
        for relative in sorted(etags):
            target = tmp / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(location.bucket, prefix + relative, str(target))
    except NoCredentialsError:
        raise FetchError(
            f"dataset {reference}: no S3 credentials (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or a profile)"
        ) from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise FetchError(f"dataset {reference}: S3 refused the request ({code})") from None
    except BotoCoreError as exc:
        raise FetchError(f"dataset {reference}: S3 is not reachable: {exc}") from None
    if not etags:
        raise UnusableReference(f"dataset {reference} is empty: no objects under the prefix")
    return {"etags": etags}


def _content(root: Path) -> tuple[int, int, str]:
    """Files, bytes and a digest of a folder's relative paths and contents."""
    digest = hashlib.sha256()
    files = size = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != RECORD_FILE):
        file_hash = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                file_hash.update(chunk)
                size += len(chunk)
        digest.update(f"{path.relative_to(root).as_posix()}\0{file_hash.hexdigest()}\n".encode())
        files += 1
    return files, size, digest.hexdigest()
