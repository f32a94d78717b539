"""ReplyLog: what a worker keeps of each job's replies, to send again what a gateway lost."""

from __future__ import annotations

import time

from ember.bus.reply_log import ACCEPTED, ReplyLog


def test_replies_are_kept_in_order_and_resent_from_a_position() -> None:
    log = ReplyLog()
    log.open("a", "reply.a")
    log.record("a", ACCEPTED, b"acc", numbered=False, final=False)
    for seq in range(3):
        log.record("a", seq, f"c{seq}".encode(), numbered=True, final=False)
    assert log.since("a", ACCEPTED) == [b"acc", b"c0", b"c1", b"c2"]
    assert log.since("a", 2) == [b"c2"]
    assert log.since("a", 3) == []
    job = log.get("a")
    assert job is not None and job.sent == 3 and job.finished_at is None and job.reply == "reply.a"
    assert log.since("unknown", 0) is None


def test_a_final_failure_takes_the_position_after_the_last_reply() -> None:
    log = ReplyLog()
    log.open("a", "r")
    log.record("a", 0, b"c0", numbered=True, final=False)
    log.record("a", 1, b"failed", numbered=False, final=True)
    job = log.get("a")
    assert job is not None and job.sent == 1 and job.finished_at is not None
    assert log.since("a", 1) == [b"failed"]


def test_finished_jobs_are_forgotten_after_retain_s() -> None:
    log = ReplyLog(retain_s=0.0)
    log.open("done", "r")
    log.record("done", 0, b"x", numbered=True, final=True)
    log.open("running", "r")
    log.record("running", 0, b"y", numbered=True, final=False)
    assert log.get("done") is None and log.get("running") is not None
    assert len(log) == 1 and log.nbytes == 1


def test_the_byte_bound_drops_finished_jobs_first_then_the_oldest_replies() -> None:
    log = ReplyLog(max_bytes=10)
    log.open("old", "r")
    log.record("old", 0, b"12345", numbered=True, final=True)
    log.open("live", "r")
    log.record("live", 0, b"abcd", numbered=True, final=False)
    log.record("live", 1, b"efgh", numbered=True, final=False)  # 13 bytes: the finished job goes
    assert log.get("old") is None and log.nbytes == 8
    log.record("live", 2, b"ijkl", numbered=True, final=False)  # 12 bytes: the oldest reply of a running one goes
    assert log.nbytes == 8
    assert log.since("live", 0) is None, "reply 0 was dropped: it cannot be resent, and the log must say so"
    assert log.since("live", 1) == [b"efgh", b"ijkl"]


def test_expiry_goes_by_finishing_order_and_spares_a_job_reopened_under_the_same_id() -> None:
    log = ReplyLog(retain_s=0.05)
    log.open("a", "r")
    log.open("b", "r")
    log.record("b", 0, b"b", numbered=True, final=True)  # b finishes first
    log.record("a", 0, b"a", numbered=True, final=False)
    log.open("b", "r2")  # the same id sent again: a fresh log
    log.record("b", 0, b"b2", numbered=True, final=False)
    time.sleep(0.1)
    assert log.get("b") is not None and log.since("b", 0) == [b"b2"]
    assert log.get("a") is not None and log.nbytes == 3
