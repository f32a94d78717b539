from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from ember.bus import messages as m
from ember.bus import subjects


def test_round_trip_of_every_reply_kind() -> None:
    replies = [
        m.JobAccepted(request_id="r", worker_id="w", prompt_tokens=3),
        m.JobFailed(request_id="r", error=m.ErrorInfo(status=400, type="invalid_request_error", message="bad")),
        m.TextChunk(
            request_id="r",
            seq=2,
            text="hé",
            token_ids=[1, 2],
            status=m.JobStatus.FINISHED_STOPPED,
            usage=m.Usage(prompt_tokens=3, completion_tokens=2),
        ),
    ]
    for reply in replies:
        assert m.decode_reply(m.encode(reply)) == reply


def test_job_round_trip_keeps_sampling() -> None:
    job = m.TextJob(
        request_id="r",
        model="org/model-1.5b",
        messages=(m.ChatMessage(role="user", content="hi"),),
        sampling=m.SamplingParams(temperature=0.0, stop=("\n",), seed=7, max_tokens=5),
        priority=3,
    )
    assert m.decode_job(m.encode(job)) == job


def test_other_wire_versions_are_refused_not_guessed() -> None:
    raw = json.loads(m.encode(m.CancelJob(request_id="r")))
    raw["v"] = m.WIRE_VERSION + 1
    with pytest.raises(m.WireVersionError, match="wire version"):
        m.decode_cancel(json.dumps(raw).encode())
    with pytest.raises(m.WireVersionError):
        m.decode_reply(b"[1, 2]")


def test_unknown_fields_are_refused() -> None:
    raw = json.loads(m.encode(m.CancelJob(request_id="r")))
    raw["surprise"] = 1
    with pytest.raises(ValidationError):
        m.decode_cancel(json.dumps(raw).encode())


def test_finished_states_sort_after_running_ones() -> None:
    running = [s for s in m.JobStatus if not s.finished]
    finished = [s for s in m.JobStatus if s.finished]
    assert max(running) < min(finished)
    assert m.JobStatus.FINISHED_LENGTH.finish_reason == "length"
    assert m.JobStatus.FINISHED_STOPPED.finish_reason == "stop"


def test_sampling_bounds() -> None:
    with pytest.raises(ValidationError):
        m.SamplingParams(temperature=-1)
    with pytest.raises(ValidationError):
        m.SamplingParams(top_logprobs=21)


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "org/name-1.5b", "a b*c>d", "ünï"])
def test_subject_tokens_are_single_safe_tokens(name: str) -> None:
    tok = subjects.token(name)
    assert tok and all(c.isalnum() or c in "_-~" for c in tok)
    assert subjects.jobs("text", name).count(".") == 4


def test_distinct_models_get_distinct_subjects() -> None:
    assert subjects.jobs("text", "a.b") != subjects.jobs("text", "a_b")
    assert subjects.jobs("text", "a/b") != subjects.jobs("text", "a.b")
