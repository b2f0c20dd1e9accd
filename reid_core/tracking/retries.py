"""The MLflow client's HTTP retries, set from the tracking section's connect policy.

MLflow's own client retries every HTTP request (mlflow/utils/rest_utils.py → urllib3 Retry);
its defaults keep a stage retrying for minutes, so `tracking.connect_attempts` and
`connect_backoff_s` are mapped onto its environment variables, which a user's own settings
override.
"""

from __future__ import annotations

import json
import math
import os

from reid_core.config import ReidConfig

# MLFLOW_HTTP_REQUEST_MAX_RETRIES retries (int, at most _MLFLOW_HTTP_REQUEST_MAX_RETRIES_LIMIT,
# 10), sleeping 0 before the first retry and BACKOFF_FACTOR·2^(n-1) before the n-th after it
# (an int, at most 120 s) plus up to BACKOFF_JITTER seconds; each try waits TIMEOUT seconds
# (an int) to connect and for each read. Defaults: 7 retries, factor 2, 120 s.
RETRY_ENV = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)
REQUEST_TIMEOUT_S = 60  # long enough for a checkpoint's upload through the artifact proxy
# What setup_mlflow wrote into the environment (JSON), so that it, and child processes,
# can tell its values from a user's, which always win.
_OWNED_ENV = "REID_MLFLOW_HTTP_ENV"


def http_retry_env(attempts: int, backoff_s: float) -> dict[str, str]:
    """MLflow client retry settings for `attempts` tries per request with waits of 0, then
    about backoff_s, 2·backoff_s, … (MLflow takes whole seconds: the factor is rounded up)."""
    from mlflow.environment_variables import (
        _MLFLOW_HTTP_REQUEST_MAX_BACKOFF_FACTOR_LIMIT,
        _MLFLOW_HTTP_REQUEST_MAX_RETRIES_LIMIT,
    )

    retries = min(attempts - 1, _MLFLOW_HTTP_REQUEST_MAX_RETRIES_LIMIT.get())
    factor = min(math.ceil(backoff_s / 2), _MLFLOW_HTTP_REQUEST_MAX_BACKOFF_FACTOR_LIMIT.get())
    return {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(factor),
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": str(min(1.0, backoff_s)),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S),
    }


def apply_retry_env(config: ReidConfig) -> None:
    """Set the MLflow client's HTTP retry variables from the config, except those the user set."""
    owned = json.loads(os.environ.get(_OWNED_ENV) or "{}")
    wanted = http_retry_env(config.tracking.connect_attempts, config.tracking.connect_backoff_s)
    for name, value in wanted.items():
        if name in os.environ and owned.get(name) != os.environ[name]:
            continue
        os.environ[name] = owned[name] = value
    os.environ[_OWNED_ENV] = json.dumps(owned, sort_keys=True)
