"""Name → class registries, so configs and the CLI find algorithms, backbones and datasets by name.

@ALGORITHMS.register("protonet")
class ProtoNet(MetaLearner): ...

ALGORITHMS.get("protonet")   # the class; an unknown name raises ConfigError listing the choices
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from metalab.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of components; `register` is a decorator, `get` raises on an unknown name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown {self.kind} '{name}'{hint}; choices: {', '.join(self.names())}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


ALGORITHMS: Registry = Registry("algorithm")
BACKBONES: Registry = Registry("backbone")
DATASETS: Registry = Registry("dataset")
