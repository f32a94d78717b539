"""Admission order: priority, then the key served least (start-time fair queuing), then age."""

from __future__ import annotations

from ember.runtimes.text.fair_queue import FairQueue


def drain(q: FairQueue[str]) -> list[str]:
    order = []
    while q:
        order.append(q.pop())
    return order


def test_priority_first_then_age() -> None:
    q: FairQueue[str] = FairQueue()
    for i, (name, prio) in enumerate([("low1", 0), ("high", 5), ("low2", 0), ("mid", 2)]):
        q.push(name, request_id=name, key="k", priority=prio, arrival=i)
    assert drain(q) == ["high", "mid", "low1", "low2"]


def test_a_flooding_key_does_not_starve_another_of_the_same_priority() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(5):
        q.push(f"a{i}", request_id=f"a{i}", key="a", priority=0, arrival=i)
    q.push("b0", request_id="b0", key="b", priority=0, arrival=10)
    q.push("b1", request_id="b1", key="b", priority=0, arrival=11)
    # The keys alternate until b has nothing left.
    assert drain(q) == ["a0", "b0", "a1", "b1", "a2", "a3", "a4"]


def test_a_key_served_less_while_both_wait_goes_first() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(3):
        q.push(f"a{i}", request_id=f"a{i}", key="a", priority=0, arrival=i)
    assert q.pop() == "a0"  # a alone: served once
    q.push("b0", request_id="b0", key="b", priority=0, arrival=9)
    # b has had nothing while a had a slot: b is next although a's requests are older.
    assert drain(q) == ["b0", "a1", "a2"]


def test_idle_time_is_not_banked_as_credit() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(4):
        q.push(f"a{i}", request_id=f"a{i}", key="a", priority=0, arrival=i)
    assert drain(q) == ["a0", "a1", "a2", "a3"]  # a had the worker to itself
    for i in range(4):
        q.push(f"b{i}", request_id=f"b{i}", key="b", priority=0, arrival=10 + i)
    q.push("a4", request_id="a4", key="a", priority=0, arrival=20)
    # b joins at the present, not at zero: it does not get four slots in a row for a's busy past.
    assert drain(q) == ["b0", "b1", "a4", "b2", "b3"]


def test_remove_and_len() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(4):
        q.push(f"x{i}", request_id=f"x{i}", key=f"k{i % 2}", priority=i % 2, arrival=i)
    assert sorted(q.remove({"x1", "x2", "nope"})) == ["x1", "x2"]
    assert len(q) == 2 and sorted(q) == ["x0", "x3"]
    assert drain(q) == ["x3", "x0"]
    assert len(q) == 0
