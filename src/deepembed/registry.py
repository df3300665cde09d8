"""One small generic registry: components are created by name, and tests iterate over names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from deepembed.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories of one kind of component (loss, miner, backbone ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a class or factory under `name`."""

        def add(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return add

    def create(self, name: str, **params: Any) -> T:
        """Build the component `name`; unknown names and parameters are ConfigErrors."""
        factory = self.get(name)
        try:
            return factory(**params)
        except TypeError as exc:  # an unexpected keyword: name it for the user
            raise ConfigError(f"bad parameters for {self.kind} {name!r}: {exc}") from exc

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as `name` (to inspect its parameters)."""
        if name not in self._factories:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._factories[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories
