"""A generation request as the engine sees it: what was asked (GenerateRequest) and how far it has got (Request)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import llguidance

from ember.bus.messages import JobStatus, SamplingParams
from ember.runtimes.text.call_gate import CallGate


@dataclass
class GenerateRequest:
    """What the worker hands the engine: a tokenized prompt and how to continue it."""

    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    # Already resolved against the context: prompt + max_tokens <= max_context.
    max_tokens: int
    priority: int = 0
    # Whose request it is (an API key id); fairness in the queue is per key, and so is the prefix cache when it is
    # configured "per_key".
    key: str = ""
    # Constrained decoding: every token is picked among those this matcher allows, and fed back to it
    # (ember.runtimes.text.grammar). Compiled by the caller, off the engine thread.
    matcher: llguidance.LLMatcher | None = None
    # Under tool_choice auto: whether the reply may begin with a call, decided at its first token (call_gate).
    call_gate: CallGate | None = None


@dataclass
class DraftRecord:
    """A request's speculative decoding: what it drafted and had accepted, and what its drafts are expected to be
    worth (spec_decode.speculator)."""

    # Draft tokens verified, and accepted, over the request's life; steps that verified a draft.
    drafted: int = 0
    accepted: int = 0
    steps: int = 0
    # By drafter (its name): the estimated chance that a draft token is accepted given the one before it was; a
    # drafter absent here has not been estimated for this request yet.
    rates: dict[str, float] = field(default_factory=dict)
    # The drafter of the draft the request is verifying (observe credits its outcome to that drafter's rate).
    source: str = ""
    # The drafter's own state for this request (the n-gram index of its tokens), made on first use; it dies with
    # the request, so that nothing keyed by request id can outlive it.
    state: Any = None

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


@dataclass
class Request:
    """One request inside the engine; the scheduler, the KV cache manager and the output processor share it.

    Its tokens are ``token_ids``: the prompt, then every generated token. ``num_computed`` of them have their keys
    and values in the KV cache (in the blocks of ``block_ids``); the scheduler moves that mark forward, a chunk of
    prompt or one decoded token at a time, and a preemption sets it back to 0 (the blocks are freed, and computed
    again on readmission, often straight from the prefix cache).
    """

    params: GenerateRequest
    # Separates tenants in the prefix cache ("" shares it with everyone); None keeps this request out of it.
    cache_salt: str | None = ""
    token_ids: list[int] = field(default_factory=list)
    status: JobStatus = JobStatus.QUEUED
    num_computed: int = 0
    # The block table: block i holds the KV of tokens [i * block_size, (i + 1) * block_size).
    block_ids: list[int] = field(default_factory=list)
    # The prefix-cache entry id of each full block whose KV is computed, in order (block_pool's BlockKey parent).
    prefix_entries: list[int] = field(default_factory=list)
    # Prompt tokens whose KV came from the prefix cache when the request was first admitted (usage reports them).
    num_cached_tokens: int = 0
    admitted: bool = False
    num_preemptions: int = 0
    # Its place in arrival order, kept across preemptions so that a preempted request does not lose its turn.
    arrival: int = -1
    draft: DraftRecord = field(default_factory=DraftRecord)

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.params.prompt_ids)

    @property
    def request_id(self) -> str:
        return self.params.request_id

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.params.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.params.prompt_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[len(self.params.prompt_ids) :]
