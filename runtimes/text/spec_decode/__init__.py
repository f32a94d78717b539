"""Speculative decoding: a decode step verifies a guess of the next tokens, and yields 1 to k + 1 tokens.

How a step speculates, part by part::

    scheduler      after placing decodes and prompt chunks, asks the Speculator for drafts within the spare
                   budget; a drafting decode becomes a chunk of 1 + k tokens (its last token, then the drafts)
                   with KV blocks for all of them (speculator.py, ngram.py)
    runner         computes that chunk like a prompt chunk after a cached prefix, and returns the logits of
                   each of its positions, not only the last
    sampler        picks a token at every position as it would without drafts, and keeps the drafts up to the
                   first that differs from its pick, then its pick there (sampling.Sampler.verify)
    scheduler      rolls back what was rejected: the computed mark stops after the accepted tokens, blocks that
                   hold only rejected K/V go back to the pool, and only accepted K/V ever reaches the prefix cache
"""

from ember.runtimes.text.spec_decode.interface import Drafter
from ember.runtimes.text.spec_decode.ngram import NgramIndex, PromptLookupDrafter
from ember.runtimes.text.spec_decode.speculator import SpecConfig, SpeculativeMode, Speculator

__all__ = ["Drafter", "NgramIndex", "PromptLookupDrafter", "SpecConfig", "SpeculativeMode", "Speculator"]
