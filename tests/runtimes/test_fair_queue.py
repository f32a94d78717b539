"""Admission order: priority, then the key served least (start-time fair queuing), then age."""

from __future__ import annotations

from ember.runtimes.fair_queue import FairQueue


def drain(q: FairQueue[str]) -> list[str]:
    order = []
    while q:
        order.append(q.pop())
    return order


def test_priority_first_then_age() -> None:
    q: FairQueue[str] = FairQueue()
    for name, prio in [("low1", 0), ("high", 5), ("low2", 0), ("mid", 2)]:
        q.push(name, request_id=name, key="k", priority=prio)
    assert drain(q) == ["high", "mid", "low1", "low2"]


def test_a_flooding_key_does_not_starve_another_of_the_same_priority() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(5):
        q.push(f"a{i}", request_id=f"a{i}", key="a", priority=0)
    q.push("b0", request_id="b0", key="b", priority=0)
    q.push("b1", request_id="b1", key="b", priority=0)
    # The keys alternate until b has nothing left.
    assert drain(q) == ["a0", "b0", "a1", "b1", "a2", "a3", "a4"]


def test_a_key_served_less_while_both_wait_goes_first() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(3):
        q.push(f"a{i}", request_id=f"a{i}", key="a", priority=0)
    assert q.pop() == "a0"  # a alone: served once
    q.push("b0", request_id="b0", key="b", priority=0)
    # b has had nothing while a had a slot: b is next although a's requests are older.
    assert drain(q) == ["b0", "a1", "a2"]


def test_idle_time_is_not_banked_as_credit() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(4):
        q.push(f"a{i}", request_id=f"a{i}", key="a", priority=0)
    assert drain(q) == ["a0", "a1", "a2", "a3"]  # a had the worker to itself
    for i in range(4):
        q.push(f"b{i}", request_id=f"b{i}", key="b", priority=0)
    q.push("a4", request_id="a4", key="a", priority=0)
    # b joins at the present, not at zero: it does not get four slots in a row for a's busy past.
    assert drain(q) == ["b0", "b1", "a4", "b2", "b3"]


def test_remove_and_len() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(4):
        q.push(f"x{i}", request_id=f"x{i}", key=f"k{i % 2}", priority=i % 2)
    assert sorted(q.remove({"x1", "x2", "nope"})) == ["x1", "x2"]
    assert len(q) == 2 and sorted(q) == ["x0", "x3"]
    assert drain(q) == ["x3", "x0"]
    assert len(q) == 0


def test_take_gives_up_to_its_limit_in_admission_order() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(3):
        q.push(f"a{i}", request_id=f"a{i}", key="a", priority=0)
    q.push("b0", request_id="b0", key="b", priority=0)
    assert q.take(3) == ["a0", "b0", "a1"]
    assert q.take(5) == ["a2"] and q.take(1) == [] and len(q) == 0


def test_take_where_skips_what_it_rejects_and_leaves_it_in_place() -> None:
    q: FairQueue[str] = FairQueue()
    # Items named by their batch kind: only "x" items can share the call being filled.
    for name, key in [("a-y0", "a"), ("a-x1", "a"), ("b-x0", "b"), ("c-y0", "c"), ("b-x1", "b")]:
        q.push(name, request_id=name, key=key, priority=0)
    q.push("hi-y", request_id="hi-y", key="d", priority=1)
    assert q.take(2, where=lambda s: "-x" in s) == ["a-x1", "b-x0"]
    # The rejected keep their places and their keys' counts go on: a and b were served once, c not yet.
    assert len(q) == 4 and drain(q) == ["hi-y", "c-y0", "a-y0", "b-x1"]


def test_peek_shows_the_next_item_and_leaves_it() -> None:
    q: FairQueue[str] = FairQueue()
    q.push("a", request_id="a", key="k", priority=0)
    q.push("b", request_id="b", key="k", priority=1)
    assert q.peek() == "b" and len(q) == 2
    assert q.peek(lambda item: item != "b") == "a"
    assert q.pop() == "b"


def test_a_requeued_item_keeps_its_place_and_its_key_its_share() -> None:
    q: FairQueue[str] = FairQueue()
    first = q.push("a1", request_id="a1", key="a", priority=0)
    q.push("a2", request_id="a2", key="a", priority=0)
    assert q.pop() == "a1"
    q.push("b1", request_id="b1", key="b", priority=0)
    # a1 was given up (preempted): back ahead of a2, and a's count goes back to what it was.
    q.requeue("a1", request_id="a1", key="a", priority=0, arrival=first)
    assert drain(q) == ["a1", "b1", "a2"]
