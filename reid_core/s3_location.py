"""Where an S3 prefix is, in Triton's spelling: `s3://bucket/prefix` (AWS, or the endpoint the
environment names) or `s3://[http://|https://]host:port/bucket/prefix` (MinIO, moto, ...).
Parsing only, so that the config and dataset references can check a location cheaply."""

from __future__ import annotations

import re
from dataclasses import dataclass

_LOCATION = re.compile(
    r"s3://(?:(?P<scheme>https?)://)?(?:(?P<host>[0-9A-Za-z.\-]+):(?P<port>\d+)/)?"
    r"(?P<bucket>[0-9a-z.\-]+)(?:/(?P<prefix>[0-9A-Za-z._\-/]*))?"
)


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # without slashes at either end; may be empty (the bucket's root)
    endpoint_url: str | None  # None: boto3's own resolution (AWS, or AWS_ENDPOINT_URL*)

    @classmethod
    def parse(cls, location: str) -> S3Location:
        match = _LOCATION.fullmatch(location)
        if not match:
            raise ValueError(
                f"{location!r} is not an S3 repository location: use s3://bucket/prefix or "
                "s3://[http://|https://]host:port/bucket/prefix"
            )
        endpoint = None
        if match["host"]:
            endpoint = f"{match['scheme'] or 'http'}://{match['host']}:{match['port']}"
        return cls(match["bucket"], (match["prefix"] or "").strip("/"), endpoint)

    def key(self, *parts: str | int) -> str:
        return "/".join([self.prefix, *map(str, parts)] if self.prefix else map(str, parts))
