"""Named entries, registered as timm registers its models: datasets, methods, concept generators."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """name -> entry (every entry has a ``name``); an unknown name is one error naming the known ones."""

    def __init__(self, kind: str, error: type[Exception], see: str = ""):
        super().__init__()
        self.kind, self.error, self.see = kind, error, see

    def register(self, entry: T) -> T:
        """Add (or replace) an entry under its name; returns it."""
        self[entry.name] = entry
        return entry

    def lookup(self, name: str) -> T:
        if name not in self:
            raise self.error(f"unknown {self.kind} {name!r}; known: {sorted(self)}" + (f" ({self.see})" if self.see else ""))
        return self[name]
