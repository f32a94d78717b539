"""``@ember.function``: declare a Python callable as an Ember function, a named, typed unit of work.

    import ember

    @ember.function
    def lookup_order(order_id: str, include_items: bool = False) -> dict[str, object]:
        "Find an order by its id."
        ...

    @ember.function(name="orders.refund", timeout_s=5)
    async def refund(order_id: str, amount: float) -> Refund: ...

The input schema comes from the parameters' type hints and defaults, the output schema from the return hint
(pydantic models, ``Annotated[..., Field(description=...)]`` and plain types all work). The function stays an
ordinary callable; ``ember worker functions --module my_funcs`` imports the module and serves every function
declared in it on the bus. Only pydantic is needed here: nothing of the server is imported.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import pydantic

__all__ = ["FunctionDef", "function", "function_def"]

F = TypeVar("F", bound=Callable[..., Any])

# Letters, digits, "_", "-" and "." (module.function), as tool names allow; 64 at most.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_ATTRIBUTE = "__ember_function__"


@dataclass(frozen=True)
class FunctionDef:
    """A declared function: its name, description, schemas, and the callable itself."""

    name: str
    description: str
    fn: Callable[..., Any]
    # Validates (and coerces) the input object; its JSON schema is the function's input schema.
    input_model: type[pydantic.BaseModel]
    output_adapter: pydantic.TypeAdapter[Any]
    # None: the platform's default (functions.default_timeout_s).
    timeout_s: float | None

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    def input_schema(self) -> dict[str, Any]:
        return self.input_model.model_json_schema()

    def output_schema(self) -> dict[str, Any]:
        return self.output_adapter.json_schema()

    def parse_input(self, data: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments for ``fn``; raises pydantic.ValidationError for input that does not fit."""
        parsed = self.input_model.model_validate(data)
        return {name: getattr(parsed, name) for name in type(parsed).model_fields}

    def dump_output(self, value: Any) -> Any:
        """The return value as JSON data, checked against the return hint; raises pydantic.ValidationError."""
        checked = self.output_adapter.validate_python(value)
        return self.output_adapter.dump_python(checked, mode="json")


def _description(fn: Callable[..., Any]) -> str:
    """The docstring's first paragraph, on one line."""
    doc = inspect.getdoc(fn) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())


def _input_model(name: str, fn: Callable[..., Any]) -> type[pydantic.BaseModel]:
    hints = typing.get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise TypeError(f"function {name!r}: parameter {param.name!r} must be a plain or keyword-only one")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints.get(param.name, Any), default)
    title = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]", name) if part) + "Input"
    config = pydantic.ConfigDict(extra="forbid")
    model: type[pydantic.BaseModel] = pydantic.create_model(title, __config__=config, **fields)
    return model


def _make(fn: Callable[..., Any], name: str | None, description: str | None, timeout_s: float | None) -> FunctionDef:
    if name is None:
        module = (fn.__module__ or "").rsplit(".", 1)[-1]
        name = fn.__name__ if module in ("", "__main__") else f"{module}.{fn.__name__}"
    if not NAME_PATTERN.match(name):
        raise ValueError(f"function name {name!r} must match {NAME_PATTERN.pattern}")
    if timeout_s is not None and timeout_s <= 0:
        raise ValueError(f"function {name!r}: timeout_s={timeout_s} must be positive")
    hints = typing.get_type_hints(fn, include_extras=True)
    return FunctionDef(
        name=name,
        description=description if description is not None else _description(fn),
        fn=fn,
        input_model=_input_model(name, fn),
        output_adapter=pydantic.TypeAdapter(hints.get("return", Any)),
        timeout_s=timeout_s,
    )


@overload
def function(fn: F, /) -> F: ...


@overload
def function(
    *, name: str | None = None, description: str | None = None, timeout_s: float | None = None
) -> Callable[[F], F]: ...


def function(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
) -> F | Callable[[F], F]:
    """Declare ``fn`` an Ember function; use bare (``@ember.function``) or with options.

    Args:
        fn: A plain or ``async`` function whose parameters are JSON-serializable (type-hinted) values.
        name: The function's name on the platform. Default: ``<module>.<function>``, e.g.
            ``my_funcs.lookup_order`` (the module's last dotted part).
        description: What it does, for ``GET /v1/functions`` and for the model that may call it. Default:
            the docstring's first paragraph.
        timeout_s: The most seconds one call may take. Default: the server's ``functions.default_timeout_s``.

    Returns:
        ``fn`` itself, unchanged as a callable, carrying its declaration (see ``function_def``).

    Raises:
        ValueError: A bad name or timeout.
        TypeError: A parameter that cannot be a JSON field (``*args``, ``**kwargs``, positional-only).
    """

    def wrap(f: F) -> F:
        setattr(f, _ATTRIBUTE, _make(f, name, description, timeout_s))
        return f

    return wrap(fn) if fn is not None else wrap


def function_def(obj: object) -> FunctionDef | None:
    """The declaration ``@ember.function`` attached to ``obj``, or None for anything else."""
    found = getattr(obj, _ATTRIBUTE, None) if callable(obj) else None
    return found if isinstance(found, FunctionDef) else None
