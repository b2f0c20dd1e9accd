"""Secrets never leave the environment: credentials written into URLs are taken out before a
value is shown, logged, tagged or written to a file.

A URL may carry a user and password (`https://user:token@host/…`) or a secret in its query
(`?token=…`, a presigned `X-Amz-Signature=…`). `redact` removes the first and masks the second,
wherever such a URL sits in a text; `split_credentials` takes a URL's user and password out
for a client that accepts them separately (MLflow's MLFLOW_TRACKING_USERNAME / _PASSWORD).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s@?#]*)@")
_SECRET_QUERY = re.compile(
    r"(?i)(?P<key>[?&](?:access_token|token|auth|api_?key|key|password|passwd|pwd|secret|"
    r"client_secret|sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|"
    r"x-goog-signature|x-goog-credential)=)[^&\s#'\"]*"
)


def redact(text: str) -> str:
    """`text` with every URL's user:password@ removed and secret query values masked."""
    text = _USERINFO.sub(lambda m: m["scheme"], text)
    return _SECRET_QUERY.sub(lambda m: m["key"] + MASK, text)


def redact_values(tree: Any) -> Any:
    """`tree` (nested dicts, lists, strings) with `redact` applied to every string."""
    if isinstance(tree, str):
        return redact(tree)
    if isinstance(tree, dict):
        return {key: redact_values(value) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(redact_values(value) for value in tree)
    return tree


def split_credentials(url: str) -> tuple[str, str, str]:
    """(`url` without its user:password@, user, password); empty strings when it has none."""
    match = _USERINFO.search(url)
    if match is None or match.start() != 0:
        return url, "", ""
    user, _, password = match["user"].partition(":")
    return match["scheme"] + url[match.end() :], unquote(user), unquote(password)
