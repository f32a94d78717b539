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
    @abstractmethod
    def propose(self, reqs: Sequence[Request], limits: Sequence[int]) -> list[list[int]]:
        """Guess up to ``limits[i]`` tokens to follow each ``reqs[i].token_ids``; [] where there is no guess."""

    def finish(self, req: Request) -> None:  # noqa: B027 (a hook: most drafters keep nothing outside the request)
        """``req`` has ended (finished, failed or aborted)."""
