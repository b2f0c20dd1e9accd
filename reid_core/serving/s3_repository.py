"""A Triton model repository under an S3 prefix, published with boto3.

S3 has no rename, and a "folder" appears with its first object, so a version cannot appear
whole by itself. The publish order of `repositories` makes it safe anyway: the version's
objects are uploaded, then each is checked against the local file (size, and the ETag S3
computes: the MD5, or the MD5 of the part MD5s for a multipart upload); only then does one
PUT of config.pbtxt make Triton serve it. A failed check deletes the upload and leaves the
config as it was.

Locations use Triton's spelling, so `triton.repository` and Triton's `--model-repository`
are the same string: `s3://bucket/prefix` (AWS, or the endpoint in AWS_ENDPOINT_URL_S3 /
AWS_ENDPOINT_URL) or `s3://[http://|https://]host:port/bucket/prefix` (another service;
plain HTTP without a scheme). Credentials come from the environment, as boto3 reads them.

The lock is an object created with a conditional write (`If-None-Match: *`), so promotions on
different machines exclude each other; it carries an expiry, after which a crashed holder's
lock is broken (a conditional delete, so two waiters cannot both break it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from reid_core.s3_location import S3Location
from reid_core.serving.repositories import CONFIG_FILE, ModelRepository

# multipart size: the ETag of a multipart upload depends on it, so it is fixed, not tuned
PART_BYTES = 8 * 1024 * 1024
LOCK_LEASE_S = 900.0


class PublishError(RuntimeError):
    """An uploaded object does not match its local file; nothing was made visible."""


def s3_etag(path: Path, part_bytes: int = PART_BYTES) -> str:
    """The ETag S3 gives `path` uploaded with parts of `part_bytes` (boto3's threshold)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        if size <= part_bytes:
            return hashlib.md5(handle.read()).hexdigest()
        digests = [
            hashlib.md5(chunk).digest() for chunk in iter(lambda: handle.read(part_bytes), b"")
        ]
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def s3_client(endpoint_url: str | None):
    """A boto3 S3 client; path-style addressing for non-AWS endpoints (MinIO, moto)."""
    import boto3
    from botocore.config import Config

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    style = {"addressing_style": "path"} if endpoint_url else {}
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(s3=style, retries={"mode": "standard", "max_attempts": 5}),
    )


class S3Repository(ModelRepository):
    """Triton model repository under an S3 prefix (see the module docstring)."""

    def __init__(self, location: str, client=None):
        self.location = location
        self.where = S3Location.parse(location)
        self.client = client or s3_client(self.where.endpoint_url)

    # -- reading

    def versions(self, name: str) -> list[int]:
        prefix = self.where.key(name) + "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.where.bucket, Prefix=prefix, Delimiter="/"
        )
        names = [
            common["Prefix"][len(prefix) :].rstrip("/")
            for page in pages
            for common in page.get("CommonPrefixes", [])
        ]
        return sorted(int(n) for n in names if n.isdigit())

    def read_config(self, name: str) -> str | None:
        try:
            reply = self.client.get_object(
                Bucket=self.where.bucket, Key=self.where.key(name, CONFIG_FILE)
            )
        except self.client.exceptions.NoSuchKey:
            return None
        return reply["Body"].read().decode()

    # -- publishing (the order is ModelRepository.publish's)

    def _place_version(self, name: str, version: int, files: Mapping[str, Path]) -> str:
        # uploaded, then each object checked against its file; on any failure, removed
        self._remove_version(name, version)  # leftovers of a publish that died half-way
        try:
            for target, source in files.items():
                self._upload(Path(source), self.where.key(name, version, target))
            for target, source in files.items():
                self._verify(Path(source), self.where.key(name, version, target))
        except BaseException:
            self._remove_version(name, version)
            raise
        return f"s3://{self.where.bucket}/{self.where.key(name, version)}"

    def _write_config(self, name: str, text: str) -> None:
        key = self.where.key(name, CONFIG_FILE)
        reply = self.client.put_object(Bucket=self.where.bucket, Key=key, Body=text.encode())
        if reply["ETag"].strip('"') != hashlib.md5(text.encode()).hexdigest():
            raise PublishError(f"s3://{self.where.bucket}/{key}: ETag {reply['ETag']}")

    def _remove_config(self, name: str) -> None:
        self.client.delete_object(Bucket=self.where.bucket, Key=self.where.key(name, CONFIG_FILE))

    def _upload(self, source: Path, key: str) -> None:
        from boto3.s3.transfer import TransferConfig

        parts = TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES)
        self.client.upload_file(str(source), self.where.bucket, key, Config=parts)

    def _verify(self, source: Path, key: str) -> None:
        head = self.client.head_object(Bucket=self.where.bucket, Key=key)
        size, etag = head["ContentLength"], head["ETag"].strip('"')
        if size != source.stat().st_size or etag != s3_etag(source):
            raise PublishError(
                f"s3://{self.where.bucket}/{key} does not match {source}: "
                f"{size} bytes, ETag {etag}; expected {source.stat().st_size} bytes, "
                f"ETag {s3_etag(source)}"
            )

    def _remove_version(self, name: str, version: int) -> None:
        prefix = self.where.key(name, version) + "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.where.bucket, Prefix=prefix
        )
        for page in pages:
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(
                    Bucket=self.where.bucket, Delete={"Objects": keys, "Quiet": True}
                )

    # -- locking

    @contextlib.contextmanager
    def lock(
        self, name: str, timeout: float = 600.0, lease: float = LOCK_LEASE_S
    ) -> Iterator[None]:
        # a plain object at the repository's top level: Triton only treats folders as models
        key = self.where.key(f".{name}.lock")
        deadline = time.monotonic() + timeout
        while True:
            body = {
                "owner": f"{socket.gethostname()}:{os.getpid()}",
                "expires": time.time() + lease,
            }
            etag = self._create(key, json.dumps(body))
            if etag is not None:
                break
            holder = self._holder(key)
            if holder is not None and holder[0].get("expires", 0) < time.time():
                self._delete_if(key, holder[1])  # a crashed holder's lock, past its expiry
                continue
            if time.monotonic() > deadline:
                owner = holder[0].get("owner", "?") if holder else "?"
                raise TimeoutError(
                    f"s3://{self.where.bucket}/{key} held by {owner} for over {timeout:.0f} s"
                )
            time.sleep(0.2)
        try:
            yield
        finally:
            self._delete_if(key, etag)

    def _create(self, key: str, text: str) -> str | None:
        """Create `key` unless it exists: its ETag, or None when another holds it."""
        from botocore.exceptions import ClientError

        try:
            reply = self.client.put_object(
                Bucket=self.where.bucket, Key=key, Body=text.encode(), IfNoneMatch="*"
            )
        except ClientError as err:
            if err.response["Error"]["Code"] in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
            ):
                return None
            raise
        return reply["ETag"]

    def _holder(self, key: str) -> tuple[dict, str] | None:
        try:
            reply = self.client.get_object(Bucket=self.where.bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        try:
            return json.loads(reply["Body"].read()), reply["ETag"]
        except ValueError:
            return {}, reply["ETag"]  # unreadable: treated as expired

    def _delete_if(self, key: str, etag: str) -> None:
        """Delete `key` only if it is still the object with `etag` (not a newer holder's)."""
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(Bucket=self.where.bucket, Key=key, IfMatch=etag)
        except ClientError as err:
            if err.response["Error"]["Code"] not in ("PreconditionFailed", "NoSuchKey", "404"):
                raise
