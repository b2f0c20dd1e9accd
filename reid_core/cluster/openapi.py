"""Strict reading of a Kubernetes object (plain dict, as in YAML) into its API client's models.

The generated Python clients (kubernetes, kubeflow-training) ignore fields they do not know,
and the API server prunes them from custom resources: a misspelt field is then silently lost.
`to_model` refuses any field the model does not declare, checks each value's type and the
fields the models require, and names the path of the first problem.
"""

from __future__ import annotations

import re
from typing import Any

_PRIMITIVES: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "int": int,
    "float": (int, float),
    "bool": bool,
    "date": str,
    "datetime": str,
}


class SchemaError(ValueError):
    """An object does not fit its schema: unknown field, wrong type or missing required field."""


def model_class(name: str) -> type:
    """The client model class called `name` (kubeflow-training's first, then kubernetes')."""
    import kubernetes.client.models as core
    from kubeflow.training import models as training

    found = getattr(training, name, None) or getattr(core, name, None)
    if not isinstance(found, type):
        raise SchemaError(f"no API model called {name}")
    return found


def to_model(data: Any, type_name: str, where: str = "") -> Any:
    """`data` as an instance of the model `type_name` (or the OpenAPI type it names, as
    `list[V1EnvVar]` or `dict(str, str)`), refusing anything the schema does not allow."""
    where = where or type_name
    if type_name == "object":
        return data
    if type_name in _PRIMITIVES:
        expected = _PRIMITIVES[type_name]
        if isinstance(data, bool) and type_name != "bool" or not isinstance(data, expected):
            raise SchemaError(f"{where}: expected {type_name}, got {type(data).__name__} {data!r}")
        return data
    if item := re.fullmatch(r"list\[(.+)\]", type_name):
        if not isinstance(data, list):
            raise SchemaError(f"{where}: expected a list, got {type(data).__name__}")
        return [to_model(v, item.group(1), f"{where}[{i}]") for i, v in enumerate(data)]
    if item := re.fullmatch(r"dict\(str, (.+)\)", type_name):
        if not isinstance(data, dict):
            raise SchemaError(f"{where}: expected a mapping, got {type(data).__name__}")
        return {k: to_model(v, item.group(1), f"{where}.{k}") for k, v in data.items()}
    cls = model_class(type_name)
    if not isinstance(data, dict):
        raise SchemaError(f"{where}: expected a {type_name} mapping, got {type(data).__name__}")
    attribute = {key: attr for attr, key in cls.attribute_map.items()}
    unknown = sorted(set(data) - set(attribute))
    if unknown:
        raise SchemaError(
            f"{where}: unknown field {', '.join(map(repr, unknown))} "
            f"({type_name} has {', '.join(sorted(attribute))})"
        )
    values = {
        attribute[key]: to_model(value, cls.openapi_types[attribute[key]], f"{where}.{key}")
        for key, value in data.items()
    }
    try:
        return cls(**values)
    except ValueError as err:  # a required field missing, or a value the model refuses
        raise SchemaError(f"{where}: {err}") from None
