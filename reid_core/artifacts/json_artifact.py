"""A frozen dataclass saved as one JSON object: its fields are the keys, checked when read."""

from __future__ import annotations

import json
from dataclasses import MISSING, Field, field, fields, is_dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

from reid_core.atomic import atomic_output
from reid_core.json_files import JsonFileError, Number, fits, read_json_object, require_keys

VERSION_KEY = "format_version"
_INLINE = "reidflow.inline"  # field metadata: the keys an inlined field's file always holds
A = TypeVar("A", bound="JsonArtifact")
D = TypeVar("D")


def inlined(*required: str) -> Any:
    """A `dict[str, float]` field whose items are keys of the object itself, not of one key:
    flat metrics, as `dvc metrics` reads them. Reading the object, every key that names no
    other field goes into it and must be a number; the `required` ones must be there."""
    return field(metadata={_INLINE: required})


class JsonArtifact:
    """Mixin for a frozen dataclass written by one stage and read by others.

    Subclasses set FILE (its name in the stage's output folder), WRITTEN_BY (the command that
    writes it, for messages) and VERSION, raised when a field changes meaning: a file of
    another version is refused with the command that writes the current one. An artifact
    without FILE is a file whose path the user gives: `save_file` and `load_file` take it.

    A field may be another (plain) dataclass or a `dict[str, <dataclass>]`: its objects are
    checked the same way. `__post_init__` may check what the fields say together: its
    `ValueError` is reported naming the file.
    """

    FILE: ClassVar[str | None] = None
    WRITTEN_BY: ClassVar[str]
    VERSION: ClassVar[int] = 1

    def to_json(self) -> str:
        data = {VERSION_KEY: self.VERSION, **_json_object(self)}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def save(self, folder: str | Path) -> Path:
        """Write FILE into `folder` (atomically); returns its path."""
        return self.save_file(Path(folder) / self._file_name())

    def save_file(self, path: str | Path) -> Path:
        """Write the artifact to `path` (atomically); returns it."""
        path = Path(path)
        with atomic_output(path) as tmp:
            tmp.write_text(self.to_json())
        return path

    @classmethod
    def required_keys(cls) -> dict[str, Any]:
        """The keys every file holds (the fields without a default, an inlined field's required
        keys), with their JSON types."""
        return _required_keys(cls)

    @classmethod
    def load(cls: type[A], folder: str | Path) -> A:
        """The artifact in `folder`; a missing, malformed, older or newer file is refused,
        naming the file and the problem."""
        return cls.load_file(Path(folder) / cls._file_name())

    @classmethod
    def load_file(cls: type[A], path: str | Path) -> A:
        """The artifact in the file `path`, refused as `load` refuses it."""
        path = Path(path)
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
        return from_json_object(cls, data, str(path), f"; is it the file {cls.WRITTEN_BY} writes?")

    @classmethod
    def _file_name(cls) -> str:
        if cls.FILE is None:
            raise TypeError(f"{cls.__name__} has no file name of its own: use save_file/load_file")
        return cls.FILE


def _inlined_field(cls: type) -> Field | None:
    return next((f for f in fields(cls) if _INLINE in f.metadata), None)


def _required_keys(cls: type) -> dict[str, Any]:
    kinds = _json_kinds(cls)
    required = {
        f.name: kinds[f.name]
        for f in fields(cls)
        if f.name in kinds and f.default is MISSING and f.default_factory is MISSING
    }
    inline = _inlined_field(cls)
    return required | {key: Number for key in (inline.metadata[_INLINE] if inline else ())}


def _json_object(value: Any) -> Any:
    """`value` as JSON holds it: dataclasses as objects, an inlined field's items as keys."""
    if is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in fields(value):
            item = getattr(value, f.name)
            if _INLINE not in f.metadata:
                out[f.name] = _json_object(item)
                continue
            clash = set(item) & ({g.name for g in fields(value)} | {VERSION_KEY})
            if clash:
                raise ValueError(f"{type(value).__name__}.{f.name}: a key names a field: {clash}")
            out.update(item)
        return out
    if isinstance(value, dict):
        return {key: _json_object(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_object(item) for item in value]
    return value


def from_json_object(cls: type[D], data: dict[str, Any], where: str, hint: str = "") -> D:
    """The dataclass `cls` from a JSON object read from `where`: a missing or unknown key, a
    value of the wrong type, or what `cls` itself refuses is a JsonFileError naming `where`."""
    kinds = _json_kinds(cls)
    inline = _inlined_field(cls)
    unknown = sorted(set(data) - set(kinds))
    if unknown and inline is None:
        raise JsonFileError(f"{where}: unknown field(s) {', '.join(unknown)}")
    require_keys(data, _required_keys(cls), where, hint)
    require_keys(data, {key: kinds.get(key, Number) for key in data}, where)
    hints = get_type_hints(cls)
    values = {
        key: _checked(hints[key], value, f"{where}: {key}")
        for key, value in data.items()
        if key in kinds
    }
    if inline is not None:
        values[inline.name] = {key: data[key] for key in unknown}
    try:
        return cls(**values)
    except ValueError as err:
        raise JsonFileError(f"{where}: {err}") from None


def _checked(hint: Any, value: Any, where: str) -> Any:
    """A field's value, read further: a dataclass's object (or each object of a
    `dict[str, <dataclass>]`) as that dataclass, the items of a `dict[str, <scalar>]` or
    `list[<scalar>]` checked."""
    if get_origin(hint) in (Union, UnionType):  # an optional value: None, or read as the other
        others = [arg for arg in get_args(hint) if arg is not NoneType]
        if value is None or len(others) != 1:
            return value
        hint = others[0]
    args = get_args(hint)
    if is_dataclass(hint):
        return from_json_object(hint, value, where)
    if get_origin(hint) is dict and len(args) == 2:
        item = args[1]
        if is_dataclass(item):
            out = {}
            for key, obj in value.items():
                if not isinstance(obj, dict):
                    raise JsonFileError(f"{where} {key!r}: not an object")
                out[key] = from_json_object(item, obj, f"{where} {key!r}")
            return out
        if item in (str, int, float, bool):
            require_keys(value, dict.fromkeys(value, _kind(item)), where)
    elif get_origin(hint) is list and len(args) == 1 and args[0] in (str, int, float, bool):
        wrong = [item for item in value if not fits(item, _kind(args[0]))]
        if wrong:
            raise JsonFileError(f"{where}: item {wrong[0]!r} has the wrong type")
    return value


def _kind(hint: Any) -> Any:
    """A type as JSON gives it: a float may come as an int, a dataclass as an object, an
    optional value as null."""
    if get_origin(hint) in (Union, UnionType):
        kinds: list[type] = []
        for arg in get_args(hint):
            kind = _kind(arg)
            kinds.extend(kind if isinstance(kind, tuple) else (kind,))
        return tuple(kinds)
    if hint is float:
        return Number
    if hint is None:
        return NoneType
    if is_dataclass(hint):
        return dict
    return get_origin(hint) or hint


def _json_kinds(cls: type) -> dict[str, Any]:
    """Each field's type as JSON gives it (an inlined field has none: its items are keys)."""
    hints = get_type_hints(cls)
    return {f.name: _kind(hints[f.name]) for f in fields(cls) if _INLINE not in f.metadata}
