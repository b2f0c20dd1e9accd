"""A frozen dataclass saved as one JSON object: its fields are the keys, checked when read."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar, get_origin, get_type_hints

from reid_core.atomic import atomic_output
from reid_core.json_files import JsonFileError, Number, read_json_object, require_keys

VERSION_KEY = "format_version"
A = TypeVar("A", bound="JsonArtifact")


class JsonArtifact:
    """Mixin for a frozen dataclass written by one stage and read by others.

    Subclasses set FILE (its name in the stage's output folder), WRITTEN_BY (the command that
    writes it, for messages) and VERSION, raised when a field changes meaning: a file of
    another version is refused with the command that writes the current one.
    """

    FILE: ClassVar[str]
    WRITTEN_BY: ClassVar[str]
    VERSION: ClassVar[int] = 1

    def to_json(self) -> str:
        data = {VERSION_KEY: self.VERSION, **asdict(self)}  # type: ignore[call-overload]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def save(self, folder: str | Path) -> Path:
        """Write FILE into `folder` (atomically); returns its path."""
        path = Path(folder) / self.FILE
        with atomic_output(path) as tmp:
            tmp.write_text(self.to_json())
        return path

    @classmethod
    def required_keys(cls) -> dict[str, Any]:
        """The keys every file holds (the fields without a default), with their JSON types."""
        kinds = _json_kinds(cls)
        return {
            f.name: kinds[f.name]
            for f in fields(cls)  # type: ignore[arg-type]
            if f.default is MISSING and f.default_factory is MISSING
        }

    @classmethod
    def load(cls: type[A], folder: str | Path) -> A:
        """The artifact in `folder`; a missing, malformed, older or newer file is refused,
        naming the file and the problem."""
        path = Path(folder) / cls.FILE
        kinds = _json_kinds(cls)
        data = read_json_object(path, {}, cls.WRITTEN_BY)
        version = data.pop(VERSION_KEY, None)
        if version is None:
            raise JsonFileError(
                f"{path}: has no {VERSION_KEY}: written by an older reidflow or not by "
                f"{cls.WRITTEN_BY}; run {cls.WRITTEN_BY} again"
            )
        if version != cls.VERSION or isinstance(version, bool):
            raise JsonFileError(
                f"{path}: format version {version!r}, this reidflow reads version "
                f"{cls.VERSION}: run {cls.WRITTEN_BY} again"
            )
        unknown = sorted(set(data) - set(kinds))
        if unknown:
            raise JsonFileError(f"{path}: unknown field(s) {', '.join(unknown)}")
        require_keys(
            data, cls.required_keys(), str(path), f"; is it the file {cls.WRITTEN_BY} writes?"
        )
        require_keys(data, {key: kinds[key] for key in data}, str(path))
        return cls(**data)


def _json_kinds(cls: type) -> dict[str, Any]:
    """Each field's type as JSON gives it: a float may come as an int, a list as a list."""
    kinds = {}
    for name, hint in get_type_hints(cls).items():
        if get_origin(hint) is ClassVar:
            continue
        kind = get_origin(hint) or hint
        kinds[name] = Number if kind is float else kind
    return kinds
