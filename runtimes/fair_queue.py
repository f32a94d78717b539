"""Who gets the next free place in a worker's batch: highest priority first; within a priority, the key served least.

Every runtime admits through this queue: text sequences into KV slots, images into UNet rows, audio into the
encoder's batch. Tiers map to priorities, so a higher tier is served first when the worker is saturated. Within
one priority, keys share admissions by start-time fair queuing: each key counts the places it was given; the
next one goes to the waiting key with the lowest count (ties to the oldest entry). A key that starts waiting
begins no lower than the count of the last admission, so time spent idle is not banked as credit for a burst
later. Not thread-safe: an engine uses it from one thread, or under its own lock.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    item: T
    request_id: str
    arrival: int


@dataclass
class FairQueue(Generic[T]):
    # priority -> key -> that key's waiting entries, oldest first
    _levels: dict[int, dict[str, deque[_Entry[T]]]] = field(default_factory=dict)
    # Slots given to each key so far (its virtual time).
    _served: Counter[str] = field(default_factory=Counter)
    # The count the last admitted key had: where a key that starts waiting joins in.
    _now: int = 0
    _size: int = 0
    # Entries pushed so far: the next one's place in arrival order (ties between keys go to the older).
    _pushed: int = 0

    def __len__(self) -> int:
        return self._size

    def push(self, item: T, *, request_id: str, key: str, priority: int) -> int:
        """Queue ``item`` behind everything already waiting; returns its place in arrival order."""
        level = self._levels.setdefault(priority, {})
        if key not in level:
            # Joining (or rejoining): no credit for time spent idle, so start no lower than the present.
            self._served[key] = max(self._served[key], self._now)
        level.setdefault(key, deque()).append(_Entry(item, request_id, self._pushed))
        self._pushed += 1
        self._size += 1
        return self._pushed - 1

    def requeue(self, item: T, *, request_id: str, key: str, priority: int, arrival: int) -> None:
        """Put back an item that was taken and then given up (a preempted request): it keeps its place in arrival
        order, and the admission it was counted for is refunded to its key."""
        self._served[key] = max(self._served[key] - 1, 0)
        entries = self._levels.setdefault(priority, {}).setdefault(key, deque())
        index = next((i for i, e in enumerate(entries) if e.arrival > arrival), len(entries))
        entries.insert(index, _Entry(item, request_id, arrival))
        self._size += 1

    def peek(self, where: Callable[[T], bool] | None = None) -> T | None:
        """The item ``take(1, where)`` would return, left in place; None when there is none."""
        found = self._next(where)
        if found is None:
            return None
        priority, key, index = found
        return self._levels[priority][key][index].item

    def pop(self) -> T:
        """The next item to admit, counted as served for its key; the queue must not be empty."""
        (item,) = self.take(1)
        return item

    def take(self, limit: int, where: Callable[[T], bool] | None = None) -> list[T]:
        """Up to ``limit`` items in admission order, each counted as served for its key; with ``where``, only
        items it accepts (the others keep their places: a key's first accepted item stands in for the key)."""
        taken: list[T] = []
        while len(taken) < limit and (found := self._next(where)) is not None:
            priority, key, index = found
            level = self._levels[priority]
            entry = level[key][index]
            del level[key][index]
            self._now = self._served[key]
            self._served[key] += 1
            if not level[key]:
                del level[key]
            if not level:
                del self._levels[priority]
            self._size -= 1
            taken.append(entry.item)
        return taken

    def _next(self, where: Callable[[T], bool] | None) -> tuple[int, str, int] | None:
        """(priority, key, index in the key's entries) of the next item to admit, or None."""
        for priority in sorted(self._levels, reverse=True):
            best: tuple[tuple[int, int], str, int] | None = None
            for key, entries in self._levels[priority].items():
                index = next((i for i, e in enumerate(entries) if where is None or where(e.item)), None)
                if index is None:
                    continue
                rank = (self._served[key], entries[index].arrival)
                if best is None or rank < best[0]:
                    best = (rank, key, index)
            if best is not None:
                return priority, best[1], best[2]
        return None

    def withdraw(self, request_id: str, where: Callable[[T], bool] | None = None) -> T | None:
        """Take out the waiting item of ``request_id`` (that passes ``where``), or None if none waits: a request
        given up before it started, for another worker to run."""
        found = next(
            (
                e.item
                for level in self._levels.values()
                for entries in level.values()
                for e in entries
                if e.request_id == request_id and (where is None or where(e.item))
            ),
            None,
        )
        if found is not None:
            self.remove({request_id})
        return found

    def remove(self, request_ids: set[str]) -> list[T]:
        """Take these requests out (they were aborted while waiting)."""
        removed: list[T] = []
        for priority, level in list(self._levels.items()):
            for key, entries in list(level.items()):
                removed += [e.item for e in entries if e.request_id in request_ids]
                level[key] = deque(e for e in entries if e.request_id not in request_ids)
                if not level[key]:
                    del level[key]
            if not level:
                del self._levels[priority]
        self._size -= len(removed)
        return removed

    def __iter__(self) -> Iterator[T]:
        for level in self._levels.values():
            for entries in level.values():
                yield from (e.item for e in entries)
