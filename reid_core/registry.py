"""Named parts of one kind (backbones, heads, poolings, losses, samplers, ...), registered where
they are defined, so that adding a part is one decorated definition.

The options validate names against the registries, and tests walk them: a registered part is
built, trained and exported by the registry-driven tests without being listed anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """A read-only mapping name -> part, in registration order, filled by `register`."""

    def __init__(self, kind: str):
        self.kind = kind
        self._parts: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object as `name` (and return it unchanged)."""

        def decorate(part: T) -> T:
            self.add(name, part)
            return part

        return decorate

    def add(self, name: str, part: T) -> None:
        if name in self._parts:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._parts[name] = part

    def lookup(self, name: str) -> T:
        """The part called `name`; a ValueError listing the known names if there is none."""
        if name not in self._parts:
            raise ValueError(f"unknown {self.kind} '{name}'; known: {', '.join(self._parts)}")
        return self._parts[name]

    def __getitem__(self, name: str) -> T:
        return self._parts[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._parts)})"
