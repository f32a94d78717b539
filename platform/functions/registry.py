"""The functions one worker serves, by name: built-ins and those of the user modules it loaded."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ember._functions import FunctionDef
from ember.bus.messages import FunctionInfo


class DuplicateFunction(ValueError):
    """Two functions declared under one name."""


@dataclass
class FunctionRegistry:
    _functions: dict[str, FunctionDef] = field(default_factory=dict)

    def add(self, defn: FunctionDef) -> None:
        known = self._functions.get(defn.name)
        if known is not None and known.fn is not defn.fn:
            where = f"{known.fn.__module__}.{known.fn.__qualname__}"
            raise DuplicateFunction(f"function name {defn.name!r} is declared twice (first by {where})")
        self._functions[defn.name] = defn

    def extend(self, defns: Iterable[FunctionDef]) -> None:
        for d in defns:
            self.add(d)

    def get(self, name: str) -> FunctionDef | None:
        return self._functions.get(name)

    def __iter__(self) -> Iterator[FunctionDef]:
        return iter(self._functions.values())

    def __len__(self) -> int:
        return len(self._functions)


def info(defn: FunctionDef) -> FunctionInfo:
    """What gateways learn about a function: its declaration without the callable."""
    return FunctionInfo(
        name=defn.name,
        description=defn.description,
        input_schema=defn.input_schema(),
        output_schema=defn.output_schema(),
        timeout_s=defn.timeout_s,
    )
