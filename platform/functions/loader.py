"""Import the user modules named by ``--module`` (or ``functions.modules``) and find their functions."""

from __future__ import annotations

import importlib
import os
import sys

from ember._functions import FunctionDef, function_def


class FunctionModuleError(ValueError):
    """A module that cannot be imported or declares no function; the message says which and why."""


def load_module(name: str) -> list[FunctionDef]:
    """Every ``@ember.function`` defined at the top level of module ``name``, in definition order."""
    # Like `uvicorn app:app`, a module in the directory the worker was started from is found.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(name)
    except Exception as e:
        raise FunctionModuleError(f"cannot import function module {name!r}: {type(e).__name__}: {e}") from e
    found: dict[int, FunctionDef] = {}
    for obj in vars(module).values():
        defn = function_def(obj)
        if defn is not None:
            found.setdefault(id(defn), defn)
    if not found:
        raise FunctionModuleError(f"module {name!r} declares no function (decorate them with @ember.function)")
    return list(found.values())


def load_modules(names: list[str]) -> list[FunctionDef]:
    return [d for name in names for d in load_module(name)]
