"""Reading a JSON object another stage wrote, with one clear error when it is not that file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

Number = (int, float)


class JsonFileError(ValueError):
    """A JSON file that is missing, malformed or lacks what its reader needs; names the file."""


def read_json_object(
    path: str | Path, required: Mapping[str, type | tuple[type, ...]], written_by: str
) -> dict[str, Any]:
    """The JSON object in `path`, which must hold each `required` key with a value of its
    type (numbers are int or float, never bool); `written_by` names the step that writes it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise JsonFileError(f"{path}: no such file (written by {written_by})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise JsonFileError(f"{path}: not a JSON file ({err})") from None
    if not isinstance(data, dict):
        raise JsonFileError(f"{path}: expected a JSON object as {written_by} writes it")
    require_keys(data, required, f"{path}", f"; is it the file {written_by} writes?")
    return data


def require_keys(
    data: Mapping[str, Any],
    required: Mapping[str, type | tuple[type, ...]],
    where: str,
    hint: str = "",
) -> None:
    """Refuse `data` (a JSON object read from `where`) unless it holds each `required` key
    with a value of its type; bool is no number."""
    missing = [key for key in required if key not in data]
    if missing:
        raise JsonFileError(f"{where}: lacks {', '.join(map(repr, missing))}{hint}")
    for key, kind in required.items():
        if not fits(data[key], kind):
            raise JsonFileError(f"{where}: '{key}' has the wrong type: {data[key]!r}")


def fits(value: Any, kind: type | tuple[type, ...]) -> bool:
    """Whether a JSON value is of `kind`; a bool is no number unless `kind` names bool."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
