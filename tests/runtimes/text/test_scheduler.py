"""The scheduler alone, with a fake model: every step 'samples' token 7 for the chunks that reach their end."""

from __future__ import annotations

from ember.bus.messages import JobStatus, SamplingParams
from ember.runtimes.text.block_pool import BlockPool
from ember.runtimes.text.kv_manager import KVCacheManager
from ember.runtimes.text.request import GenerateRequest, Request
from ember.runtimes.text.runner import padded_rows
from ember.runtimes.text.scheduler import Scheduler, SchedulerConfig, SchedulerOutput


def scheduler(
    *,
    blocks: int = 64,
    block_size: int = 4,
    max_batch: int = 8,
    step_tokens: int = 16,
    caching: bool = True,
    padded: bool = False,
) -> Scheduler:
    """``padded``: steps with a prompt chunk run at the runner's padded sizes, up to the largest step's (as the
    worker sets them up)."""
    kv = KVCacheManager(BlockPool(blocks, block_size), caching=caching)
    config = SchedulerConfig(max_batch=max_batch, max_step_tokens=step_tokens)
    if padded:
        largest = padded_rows(config.step_capacity)
        config = SchedulerConfig(max_batch, step_tokens, step_rows=lambda n: min(padded_rows(n), largest))
    return Scheduler(config, kv)


def request(rid: str, prompt: list[int], max_tokens: int = 4, *, priority: int = 0, key: str = "") -> Request:
    params = GenerateRequest(rid, prompt, SamplingParams(temperature=0), max_tokens, priority=priority, key=key)
    return Request(params)


def step(s: Scheduler) -> SchedulerOutput:
    """One step: schedule, 'run', sample 7 for every chunk that reaches its end, finish requests at max_tokens."""
    out = s.schedule()
    prompt_tokens = sum(c.num_tokens for c in out.chunks if c.num_tokens > 1)
    if s.config.step_rows is None:
        assert prompt_tokens <= s.config.max_step_tokens + s.config.slack
        assert out.num_tokens <= s.config.step_capacity
    else:  # padding filled: never past the rows the largest step runs at anyway
        assert out.num_tokens <= s.config.step_rows(s.config.step_capacity)
    s.update(out)
    for chunk in out.chunks:
        req = chunk.request
        if chunk.samples:
            req.token_ids.append(7)
            if req.num_output_tokens >= req.params.max_tokens:
                req.status = JobStatus.FINISHED_LENGTH
                s.finish(req)
    return out


def run_all(s: Scheduler, limit: int = 1000) -> list[SchedulerOutput]:
    outs = []
    while len(s) and len(outs) < limit:
        outs.append(step(s))
    assert not len(s), "requests left after the step limit"
    return outs


def test_prefill_is_chunked_by_the_budget_and_mixed_with_decodes() -> None:
    s = scheduler(step_tokens=16)  # 16 prompt tokens a step, and 2 of slack to finish a prompt
    short, long = request("short", [1, 2, 3]), request("long", list(range(10, 50)))  # 3 and 40 tokens
    s.add(short)
    step(s)  # short prefills alone and samples its first token
    s.add(long)
    out = step(s)
    # short decodes (1 token, listed first, outside the budget) while long prefills 16 tokens in the same step.
    assert [(c.request.request_id, c.num_tokens) for c in out.chunks] == [("short", 1), ("long", 16)]
    assert not out.chunks[1].samples
    out = step(s)
    assert out.num_scheduled_tokens == {"short": 1, "long": 16}
    out = step(s)  # short's 4th token ends it; long's last 8 prompt tokens, and its first sample
    assert out.num_scheduled_tokens == {"short": 1, "long": 8} and out.chunks[1].samples
    assert short.status == JobStatus.FINISHED_LENGTH and s.running == [long]
    run_all(s)
    assert long.output_ids == [7] * 4 and short.output_ids == [7] * 4


def test_decodes_do_not_take_a_prompt_s_place_and_a_prompt_is_not_left_a_stub() -> None:
    """Prompts of one budget each, arriving together, are each prefilled whole in one step: the decodes of those
    before them ride along outside the budget, and a prompt a token or two over it is finished rather than leave
    that token to delay its first output by a step."""
    s = scheduler(step_tokens=16)
    reqs = [request(f"r{i}", [i + 1] * (16 + i % 3)) for i in range(4)]  # 16, 17, 18, 16 tokens
    for r in reqs:
        s.add(r)
    firsts = []
    for _ in range(4):
        out = step(s)
        firsts += [c.request.request_id for c in out.chunks if c.num_tokens > 1 and c.samples]
    assert firsts == ["r0", "r1", "r2", "r3"]  # one whole prompt per step


def test_max_batch_limits_the_running_requests() -> None:
    s = scheduler(max_batch=2)
    reqs = [request(f"r{i}", [i + 1, 2, 3]) for i in range(5)]
    for r in reqs:
        s.add(r)
    out = step(s)
    assert len(out.chunks) == 2 and len(s.running) == 2
    run_all(s)
    assert all(r.num_output_tokens == 4 for r in reqs)


def test_a_full_pool_preempts_the_lowest_priority_newest_request_and_recomputes_it_later() -> None:
    # 8 usable blocks of 2 tokens; three 3-token prompts growing to 9 tokens (5 blocks each) cannot all fit.
    s = scheduler(blocks=9, block_size=2, max_batch=4, step_tokens=8, caching=False)
    vip = request("vip", [7, 8, 9], max_tokens=6, priority=1)
    old = request("old", [1, 2, 3], max_tokens=6)
    new = request("new", [4, 5, 6], max_tokens=6)
    for r in (vip, old, new):
        s.add(r)
    first = step(s)
    assert [c.request for c in first.chunks] == [vip, old, new]
    outs = [first, *run_all(s)]
    preempted = [r.request_id for o in outs for r in o.preempted]
    assert preempted[0] == "new"  # lowest priority, and of those the newest
    assert vip.num_preemptions == 0
    for r in (old, new, vip):
        assert r.output_ids == [7] * 6  # a preempted request keeps what it generated and goes on
    assert s.kv.pool.num_idle == 8  # every block came back


def test_a_preempted_request_keeps_its_place_in_the_queue() -> None:
    s = scheduler(blocks=6, block_size=2, max_batch=2, step_tokens=8, caching=False)
    first = request("first", [1, 2, 3], max_tokens=4)
    second = request("second", [4, 5, 6], max_tokens=4)
    s.add(first)
    s.add(second)
    while not second.num_preemptions:
        step(s)
    late = request("late", [7, 8], max_tokens=1)
    s.add(late)
    admissions = []
    for out in run_all(s):
        admissions += [c.request.request_id for c in out.chunks if c.start == 0]
    # late arrived after second was preempted, but second arrived first: it is readmitted first.
    assert admissions == ["second", "late"]


def test_priority_then_the_least_served_key_is_admitted_first() -> None:
    s = scheduler(max_batch=1)
    blocker = request("blocker", [1, 2], max_tokens=2, key="a")
    s.add(blocker)
    step(s)
    for rid, key, prio in [("a1", "a", 0), ("a2", "a", 0), ("b1", "b", 0), ("hi", "c", 5)]:
        s.add(request(rid, [3, 4], max_tokens=1, key=key, priority=prio))
    admitted = []
    for out in run_all(s):
        admitted += [c.request.request_id for c in out.chunks if c.request.request_id not in admitted]
    assert admitted == ["blocker", "hi", "b1", "a1", "a2"]


def test_a_cached_prefix_is_not_computed_again() -> None:
    s = scheduler(block_size=4, step_tokens=64)
    system = list(range(100, 120))  # 5 full blocks
    first = request("first", [*system, 1, 2], max_tokens=1)
    s.add(first)
    run_all(s)
    second = request("second", [*system, 3, 4, 5], max_tokens=1)
    s.add(second)
    out = step(s)
    assert out.num_scheduled_tokens == {"second": 3}  # only the question: 20 tokens came from the cache
    assert second.num_cached_tokens == 20


def test_choices_of_one_prompt_share_its_prefill() -> None:
    """n > 1: requests with the same prompt arriving together wait for the first to compute the shared blocks."""
    s = scheduler(block_size=4, step_tokens=64)
    prompt = list(range(200, 241))  # 41 tokens: 10 full blocks
    choices = [request(f"c{i}", prompt, max_tokens=2) for i in range(3)]
    for r in choices:
        s.add(r)
    outs = run_all(s)
    computed = sum(o.num_tokens for o in outs)
    # One prefill of 41 tokens, then each other choice computes only its last (partial) block: 1 token.
    assert computed == 41 + 2 * 1 + 3 * 1  # prefills, then one more decode each (2 tokens generated)
    assert [r.num_cached_tokens for r in choices] == [0, 40, 40]
    assert s.num_deferred > 0


def test_prefix_cache_off_computes_everything() -> None:
    s = scheduler(block_size=4, step_tokens=64, caching=False)
    prompt = list(range(200, 241))
    for i in range(2):
        s.add(request(f"c{i}", prompt, max_tokens=1))
    outs = run_all(s)
    assert sum(o.num_tokens for o in outs) == 2 * 41


def test_background_rows_sit_out_the_step_that_prefills_a_foreground_request() -> None:
    """A batch line (priority -1) decoding beside an interactive request's prompt would slow the step that
    brings the interactive request's first token: it waits that one step, then both decode together."""
    s = scheduler(step_tokens=16)
    line = request("line", [1, 2, 3], max_tokens=8, priority=-1)
    s.add(line)
    step(s)  # the batch line prefills alone (nothing else to wait for it)
    assert [c.request.request_id for c in step(s).chunks] == ["line"]  # and decodes
    s.add(request("chat", list(range(10, 20)), max_tokens=4))
    out = step(s)
    assert [(c.request.request_id, c.num_tokens) for c in out.chunks] == [("chat", 10)]
    out = step(s)
    assert sorted(c.request.request_id for c in out.chunks) == ["chat", "line"]  # both decode again
    run_all(s)
    assert line.num_output_tokens == 8


def test_the_rows_a_step_would_pad_go_to_the_prompts_that_wait() -> None:
    """A step with a prompt chunk runs at a padded size (64 tokens and a decode: 128 rows); the rows past its
    tokens compute prompt tokens that wait, the running prompts' first, rather than nothing."""
    s = scheduler(blocks=256, step_tokens=64, padded=True)
    reqs = [request("first", list(range(1, 65))), request("second", list(range(100, 164)))]
    reqs += [request("third", list(range(200, 300))), request("long", list(range(300, 500)))]
    s.add(reqs[0])
    assert step(s).num_scheduled_tokens == {"first": 64}  # 64 rows: nothing to pad
    s.add(reqs[1])
    s.add(reqs[2])
    out = step(s)
    # first decodes, second's whole prompt (the budget), and third's first 63 tokens where 63 rows would pad.
    assert out.num_scheduled_tokens == {"first": 1, "second": 64, "third": 63} and out.num_tokens == 128
    out = step(s)
    # third's last 37 tokens end its prompt: 39 tokens, padded to 48 with nothing left to fill them.
    assert out.num_scheduled_tokens == {"first": 1, "second": 1, "third": 37} and out.chunks[2].samples
    s.add(reqs[3])
    out = step(s)
    # A prompt the budget cuts grows into the padding itself: 64 of its 200 tokens, then 61 more to fill 128 rows.
    assert out.num_scheduled_tokens == {"first": 1, "second": 1, "third": 1, "long": 125}
    run_all(s)
    assert all(r.output_ids == [7] * 4 for r in reqs)


def test_without_padding_to_fill_the_budget_stands() -> None:
    s = scheduler(blocks=256, step_tokens=64, padded=False)
    s.add(request("first", list(range(1, 65))))
    step(s)
    s.add(request("second", list(range(100, 164))))
    s.add(request("third", list(range(200, 300))))
    assert step(s).num_scheduled_tokens == {"first": 1, "second": 64}
