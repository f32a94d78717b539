"""A batch across real process deaths: a worker and the gateway killed with -9 while it runs; every line is
answered exactly once and metered once. (benchmarks/batch_serving.py kills two workers and the gateway under a
200-line batch.)"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.batches.batch_stack import BatchStack, chat_lines

N = 24


def test_a_batch_survives_a_worker_kill_and_a_gateway_kill(tmp_path: Path) -> None:
    with BatchStack(tmp_path, max_batch=4, ack_wait_s=2.0) as stack:
        stack.start_gateway()
        stack.start_worker("w1")
        stack.start_worker("w2")
        stack.wait_workers(2)
        batch = stack.submit(chat_lines(N, max_tokens=48))
        stack.wait_answered(batch.id, 4)
        assert stack.running(batch.id)  # the kills below come while lines run
        stack.kill_worker("w1")  # its lines in flight fail and are tried again on w2
        stack.wait_answered(batch.id, 10)
        assert stack.running(batch.id)
        stack.kill_gateway()  # the runner dies mid-batch; the restarted gateway resumes it after ack_wait_s
        stack.start_gateway()
        done = stack.wait(batch.id)
        answers = stack.answers(done)
        usage = stack.usage(batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None and (done.request_counts.completed, done.request_counts.failed) == (N, 0)
    assert sorted(a["custom_id"] for a in answers) == sorted(f"line-{i}" for i in range(N))
    assert all(a["response"]["status_code"] == 200 for a in answers)
    assert all(a["response"]["body"]["usage"]["completion_tokens"] == 48 for a in answers)
    per_line = Counter(rec.request_id for rec in usage)
    assert len(per_line) == N and set(per_line.values()) == {1}, per_line
    assert all(rec.status == "ok" and rec.completion_tokens == 48 and rec.price_factor == 0.5 for rec in usage)
