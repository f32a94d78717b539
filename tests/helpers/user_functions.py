"""An example user module of functions, as `ember worker functions --module tests.helpers.user_functions` loads it.

It covers every way a function can behave: plain and async, a pydantic result, one that raises, ones that hang
(async and plain), and one whose result does not match its return type.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from pydantic import BaseModel, Field

import ember


class Order(BaseModel):
    order_id: str
    status: str
    total: float
    items: list[str] | None = None


ORDERS = {
    "A-1001": Order(order_id="A-1001", status="shipped", total=42.5, items=["kettle", "mug"]),
    "A-1002": Order(order_id="A-1002", status="processing", total=19.0, items=["teapot"]),
}


@ember.function
def lookup_order(order_id: Annotated[str, Field(description="e.g. A-1001")], include_items: bool = False) -> Order:
    """Find an order by its id: its status and total (and its items)."""
    found = ORDERS.get(order_id)
    if found is None:
        raise KeyError(f"no order {order_id}")
    return found if include_items else found.model_copy(update={"items": None})


# Bounded, so that a random-weight model decoding a call under the schema's grammar finishes it in a few tokens.
Small = Annotated[int, Field(ge=0, le=99)]


@ember.function(name="user_functions.add")
async def add(a: Small, b: Small) -> int:
    """Add two integers."""
    await asyncio.sleep(0)
    return a + b


@ember.function
def word_count(text: str) -> dict[str, int]:
    """Count the words of a text."""
    return {"words": len(text.split())}


@ember.function
def explode(message: Annotated[str, Field(max_length=8)] = "boom") -> str:
    """Always raises."""
    raise RuntimeError(message)


@ember.function(timeout_s=0.5)
async def hang() -> str:
    """Never returns (async)."""
    await asyncio.sleep(3600)
    return "never"


@ember.function(timeout_s=0.5)
def hang_sync(seconds: float = 30.0) -> str:
    """Blocks its thread for a long time (a plain function cannot be interrupted)."""
    time.sleep(seconds)
    return "late"


@ember.function
def wrong_output() -> int:
    """Returns a string though it promises an int."""
    return "not a number"  # type: ignore[return-value]


@ember.function
def broken_schema(x: Annotated[int, Field(json_schema_extra={"minimum": "zero"})]) -> int:
    """Declares an input schema that is not valid JSON schema ("minimum" must be a number)."""
    return x
