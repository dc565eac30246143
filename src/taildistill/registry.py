"""A tiny name -> factory registry, used for models, methods, data sources, losses and policies."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import ConfigError, RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually factories). `@REG.register("name")` adds one."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def add(obj: T) -> T:
            key = name or getattr(obj, "__name__")
            if key in self._items:
                raise RegistryError(f"{self.kind} '{key}' is registered twice: choose another name "
                                    f"(taken: {', '.join(sorted(self._items))})")
            self._items[key] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} '{name}'; available: {', '.join(sorted(self._items))}"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
