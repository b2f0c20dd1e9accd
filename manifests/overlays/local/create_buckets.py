"""Create the buckets reidflow uses on an S3 endpoint (MinIO in the local overlay), idempotently.

Run by the Job `minio-create-buckets` in the project image. Environment:
  S3_ENDPOINT_URL   the endpoint (falls back to MLFLOW_S3_ENDPOINT_URL; unset means AWS)
  BUCKETS           bucket names, separated by spaces or commas
  PREFIX_MARKERS    `bucket/key` objects to write (empty) so that a prefix exists: Triton will not
                    start on an S3 model repository path with nothing under it
  WAIT_SECONDS      how long to wait for the endpoint to answer (default 300)
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION are read by boto3 itself.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError


def _names(variable: str) -> list[str]:
    return [n for n in os.environ.get(variable, "").replace(",", " ").split() if n]


def wait_for_endpoint(client: Any, timeout_s: float) -> None:
    """Poll ListBuckets until the endpoint answers; MinIO may still be starting."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.list_buckets()
            return
        except (BotoCoreError, ClientError) as err:
            if time.monotonic() >= deadline:
                raise SystemExit(
                    f"create_buckets: S3 endpoint {client.meta.endpoint_url} did not answer "
                    f"within {timeout_s:.0f} s: {err}"
                ) from None
            time.sleep(2)


def ensure_bucket(client: Any, name: str, region: str) -> bool:
    """Create bucket `name` unless it exists; True when it was created."""
    try:
        client.head_bucket(Bucket=name)
        return False
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise SystemExit(f"create_buckets: cannot inspect bucket {name!r}: {err}") from None
    kwargs: dict[str, Any] = {"Bucket": name}
    if region and region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**kwargs)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") == "BucketAlreadyOwnedByYou":
            return False
        raise SystemExit(f"create_buckets: cannot create bucket {name!r}: {err}") from None
    return True


def main() -> int:
    buckets = _names("BUCKETS")
    markers = _names("PREFIX_MARKERS")
    if not buckets:
        raise SystemExit("create_buckets: BUCKETS is empty; name at least one bucket")
    for marker in markers:
        if "/" not in marker.strip("/"):
            raise SystemExit(f"create_buckets: PREFIX_MARKERS entry {marker!r} is not bucket/key")
    endpoint = os.environ.get("S3_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=endpoint or None, region_name=region)
    wait_for_endpoint(client, float(os.environ.get("WAIT_SECONDS", "300")))
    for name in buckets:
        created = ensure_bucket(client, name, region)
        print(f"bucket {name}: {'created' if created else 'exists'}")
    for marker in markers:
        bucket, key = marker.strip("/").split("/", 1)
        client.put_object(Bucket=bucket, Key=key, Body=b"")
        print(f"marker s3://{bucket}/{key}: written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
