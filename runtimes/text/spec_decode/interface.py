"""What a drafter is: a cheap guess at a request's next tokens, which the target model then verifies.

Call cycle, all on the engine thread::

    drafts = drafter.propose(reqs, limits)   # the scheduler, for the step's decodes: up to limits[i] tokens each
    ... the step's forward computes each decode and its drafts as one chunk; the sampler accepts a prefix ...
    drafter.finish(req)                      # the request ended: drop whatever the drafter keeps for it

A drafter never changes a request; what it keeps between steps lives in ``req.draft.state`` (it dies with the
request) or, for a drafter with resources of its own (a draft model's KV cache), is released in ``finish``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from ember.runtimes.text.request import Request


class Drafter(ABC):
    # What the speculator keys a request's acceptance estimate by: a request drafted by two drafters keeps one for
    # each, since their drafts fare differently (prompt lookup's are right or wrong in long runs).
    name = "drafter"
    # Whether drafts cost next to nothing (a lookup): then the speculator looks at them before choosing which to
    # verify. A drafter that runs a model says what a draft of a given depth costs (``seconds``) instead, and is
    # asked only for the drafts expected to pay.
    free = True

    def seconds(self, depth: int) -> float:
        """Expected seconds to draft ``depth`` tokens deep for a step's requests."""
        return 0.0

    @abstractmethod
    def propose(self, reqs: Sequence[Request], limits: Sequence[int]) -> list[list[int]]:
        """Guess up to ``limits[i]`` tokens to follow each ``reqs[i].token_ids``; [] where there is no guess."""

    def finish(self, req: Request) -> None:  # noqa: B027 (a hook: most drafters keep nothing outside the request)
        """``req`` has ended (finished, failed or aborted)."""
