"""The text worker: takes text jobs off the bus, turns them into token ids, and streams the engine's output back."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import llguidance
import torch
from nats.aio.client import Client as NATS
from prometheus_client.metrics_core import Metric

from ember.bus.messages import (
    ErrorInfo,
    JobStatus,
    Modality,
    OutputConstraint,
    SamplingDefaults,
    SamplingParams,
    TextChunk,
    TextJob,
    ToolCallDelta,
    Usage,
)
from ember.bus.worker import JobHandler, ReplySink
from ember.config import ConfigError, ModelSpec, Settings
from ember.config.weights import resolve_weights
from ember.runtimes.device_group.slot import current_slot
from ember.runtimes.devices import free_memory, resolve_device
from ember.runtimes.dtypes import resolve_dtype
from ember.runtimes.engine_thread import start_engine_thread
from ember.runtimes.serving import LatencyWindow, run_worker
from ember.runtimes.text.call_gate import CallGate, call_start_tokens
from ember.runtimes.text.engine import (
    EngineConfig,
    EngineOverloaded,
    GenerateRequest,
    OutputStream,
    StepOutput,
    TextEngine,
)
from ember.runtimes.text.engine_metrics import text_metrics
from ember.runtimes.text.grammar import GrammarCompiler, GrammarError, response_grammar
from ember.runtimes.text.loader import LoadedModel, load_model
from ember.runtimes.text.runner import CacheConfig, ModelRunner, padded_rows
from ember.runtimes.text.scheduler import SchedulerConfig
from ember.runtimes.text.spec_decode import Drafter, PromptLookupDrafter
from ember.runtimes.text.spec_decode.draft_model import DRAFT_PREFILL_BUDGET, DraftModelDrafter
from ember.runtimes.text.tokenizer import TextTokenizer
from ember.runtimes.text.tool_format import ToolFormat, answered_calls, choose_format
from ember.runtimes.text.tool_parser import ToolCallParser

log = logging.getLogger("ember.text.worker")


class RequestError(Exception):
    """A job the worker refuses before running it; carries the error the client sees."""

    def __init__(self, message: str, code: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.info = ErrorInfo(status=status, type="invalid_request_error", code=code, message=message, param=param)


@dataclass
class PreparedJob:
    prompt_ids: list[int]
    max_tokens: int
    # The job's sampling with the model's defaults filled in.
    sampling: SamplingParams
    # The grammar the reply is decoded under (tools or response_format), compiled.
    matcher: llguidance.LLMatcher | None = None
    # Splits the reply into text and tool calls when the job has tools.
    parser: ToolCallParser | None = None
    # When the turn already holds tool results: the text-only grammar of the answer decoded instead of a call the
    # model began to repeat (see TextJobHandler.handle).
    answer_grammar: str | None = None
    # Under tool_choice auto: whether the reply may begin with a call, decided on the model's first-token odds.
    call_gate: CallGate | None = None
    # Whether the reply's first call name has been checked against the gate's name_threshold (call_gate.py).
    name_checked: bool = False


def sampling_defaults(spec: ModelSpec, model_dir: Path) -> SamplingDefaults:
    """The config's defaults, else the ones in the model's generation_config.json, else OpenAI's."""
    if spec.sampling is not None:
        return spec.sampling
    try:
        gen = json.loads((model_dir / "generation_config.json").read_text())
    except (OSError, ValueError):
        return SamplingDefaults()
    found = {k: gen[k] for k in ("temperature", "top_p", "top_k") if isinstance(gen.get(k), int | float)}
    if gen.get("do_sample") is False:
        found = {"temperature": 0.0}  # the model's authors want greedy decoding
    try:
        return SamplingDefaults(**found)
    except ValueError:
        log.warning("ignoring out-of-range sampling defaults in %s: %s", model_dir, found)
        return SamplingDefaults()


class TextJobHandler(JobHandler):
    modality = Modality.TEXT

    def __init__(
        self,
        model_id: str,
        loaded: LoadedModel,
        engine: TextEngine,
        defaults: SamplingDefaults | None = None,
        tool_format: ToolFormat | None = None,
        *,
        constrain: bool = True,
        tool_call_threshold: float = 0.5,
        tool_name_threshold: float = 0.0,
    ) -> None:
        self.model = model_id
        self.loaded = loaded
        self.engine = engine
        self.defaults = defaults or SamplingDefaults()
        self.max_batch = engine.config.max_batch
        self.context_length = engine.max_context
        self.tool_format = tool_format or choose_format(loaded.tokenizer.chat_template)
        self.grammars = GrammarCompiler(loaded.tokenizer, engine.runner.vocab_size)
        # The tool format's tags that are special tokens of this vocabulary. Finding them builds llguidance's view
        # of the vocabulary, here rather than on the first constrained job: for Qwen's 151k tokens that takes
        # seconds without releasing the GIL, long enough for the gateway to give up on a worker it probes.
        self._tags = self.grammars.special([self.tool_format.open, self.tool_format.close])
        # False only to measure what the grammar buys (benchmarks/tool_call_eval.py): tool calls are then parsed
        # from unconstrained text and may be malformed.
        self.constrain = constrain
        # The gate's token mask walks the whole vocabulary (about 0.8 s for Qwen's 151k): only for a gate that is on.
        self.call_gate: CallGate | None = None
        if tool_call_threshold > 0:
            starts = call_start_tokens(loaded.tokenizer, engine.runner.vocab_size, (self.tool_format.open,))
            self.call_gate = CallGate(starts, tool_call_threshold, tool_name_threshold)
        # Each job's time from arriving here to its first output: queue wait + prefill, the scaler's latency signal.
        self.ttft = LatencyWindow()

    def load(self) -> tuple[int, int]:
        return self.engine.load()

    def ttft_p90_s(self) -> float | None:
        return self.ttft.p90()

    def stalled_s(self) -> float:
        return self.engine.clock.stalled_s()

    def metrics(self) -> Iterable[Metric]:
        yield from super().metrics()
        yield from text_metrics(self.engine)

    def cancel(self, request_id: str) -> None:
        self.engine.abort(request_id)

    async def release(self, request_id: str) -> bool:
        return await self.engine.withdraw(request_id)

    def prepare(self, job: TextJob) -> PreparedJob:
        """Render and tokenize the prompt and check it against the context; raises RequestError."""
        tok = self.loaded.tokenizer
        use_tools = bool(job.tools) and job.tool_choice.mode != "none"
        openai_messages: list[dict[str, Any]] = []
        if job.messages is not None:
            if not job.messages:
                raise RequestError("messages must not be empty", "invalid_value", "messages")
            openai_messages = [m.model_dump(exclude_none=True) for m in job.messages]
            if use_tools and job.tool_choice.mode == "auto":
                openai_messages = self.tool_format.with_guidance(openai_messages)
            messages, tools = self.tool_format.template_inputs(
                openai_messages, list(job.tools or ()) if use_tools else None
            )
            try:
                text = tok.apply_chat_template(messages, tools=tools)
            except ValueError as e:
                raise RequestError(
                    f"cannot render these messages with the model's chat template: {e}", "invalid_value", "messages"
                ) from e
            ids = tok.encode(text, add_special_tokens=False)
        elif job.prompt is not None:
            if job.tools:
                raise RequestError("tools need chat messages, not a raw prompt", "invalid_value", "tools")
            ids = tok.encode(job.prompt, add_special_tokens=True)
        else:
            raise RequestError("a text job needs messages or a prompt", "invalid_value")
        if not ids:
            raise RequestError("the prompt is empty after tokenization", "invalid_value", "prompt")
        ctx = self.context_length
        requested = job.sampling.max_tokens
        if len(ids) + (requested or 1) > ctx:
            raise RequestError(
                f"This model's maximum context length is {ctx} tokens. However, you requested "
                f"{len(ids) + (requested or 0)} tokens ({len(ids)} in the prompt, {requested or 0} in the "
                "completion). Please reduce the length of the prompt or max_tokens.",
                "context_length_exceeded",
                "max_tokens" if requested else "messages",
            )
        sampling = job.sampling.with_defaults(self.defaults)
        prepared = PreparedJob(prompt_ids=ids, max_tokens=requested or ctx - len(ids), sampling=sampling)
        if use_tools:
            # Under auto only: a client that requires a call gets one, even one the model made before.
            answered = answered_calls(openai_messages) if job.tool_choice.mode == "auto" else []
            prepared.parser = self.tool_format.parser(answered)
            if answered and self.constrain:
                prepared.answer_grammar = self.tool_format.text_grammar()
            grammar = self.tool_format.grammar(
                list(job.tools or ()), job.tool_choice, job.parallel_tool_calls, self._tags
            )
            prepared.matcher = self._compile_tools(grammar, job) if self.constrain else None
            if job.tool_choice.mode == "auto" and prepared.matcher is not None:
                prepared.call_gate = self.call_gate
        elif job.response_format is not None:
            try:
                grammar = response_grammar(job.response_format)
            except GrammarError as e:
                raise RequestError(f"invalid response_format: {e}", "invalid_value", "response_format") from e
            prepared.matcher = self._compile(grammar, "response_format")
        return prepared

    def _compile_tools(self, grammar: str, job: TextJob) -> llguidance.LLMatcher:
        """The matcher of a tools grammar; when it does not compile, the 400 names the tool at fault."""
        try:
            return self.grammars.matcher(grammar)
        except GrammarError as e:
            for i, t in enumerate(job.tools or ()):
                try:
                    self.grammars.matcher(response_grammar(_schema_constraint(t)))
                except GrammarError as bad:
                    name = t.get("function", {}).get("name")
                    raise RequestError(
                        f"the parameters of tool {name!r} cannot be enforced: {bad}",
                        "invalid_value",
                        f"tools.{i}.function.parameters",
                    ) from bad
            raise RequestError(f"tools cannot be enforced: {e}", "invalid_value", "tools") from e

    def _compile(self, grammar: str, param: str) -> llguidance.LLMatcher:
        """The matcher of ``grammar``; a grammar that does not compile (a bad schema or regex) is a 400."""
        try:
            return self.grammars.matcher(grammar)
        except GrammarError as e:
            raise RequestError(f"{param} cannot be enforced: {e}", "invalid_value", param) from e

    async def handle(self, job: TextJob, sink: ReplySink) -> None:
        arrived = time.monotonic()
        try:
            # Off the event loop: a long prompt's template + tokenization must not delay pings and other jobs.
            prepared = await asyncio.to_thread(self.prepare, job)
        except RequestError as e:
            await sink.failed(e.info)
            return
        stream = await self._generate(job, prepared, sink, prepared.max_tokens, prepared.matcher, prepared.call_gate)
        if stream is None:
            return
        try:
            await sink.accepted(len(prepared.prompt_ids), prepared.max_tokens)
            first = True
            # The tokens of a call's opening while its name is still to be checked (call_gate.py): sent with the
            # name if the call stands, never if it is dropped (their logprobs would show it).
            held: list[StepOutput] = []
            async for out in stream:
                if first:
                    first = False
                    self.ttft.add(time.monotonic() - arrived)
                if out.error is not None:
                    await sink.failed(out.error)
                    return
                if prepared.parser is not None:
                    text, deltas, finish = split_output(out, prepared.parser)
                    if out.status.finished and _answers_instead(out, prepared):
                        assert prepared.answer_grammar is not None
                        await self._answer(job, prepared, sink, out.usage, prepared.answer_grammar)
                        return
                    if _unsure_of_call(out, deltas, prepared):
                        # Nothing of the call has been sent: its opening is held, its first delta is this one.
                        log.debug("%s: call name forced (%.3f): text instead", job.request_id, out.call_confidence)
                        spent = out.usage
                        if not out.status.finished:
                            self.engine.stop_request(job.request_id)
                            async for rest in stream:  # to its end, so that the answer can take the request id
                                spent = rest.usage or spent
                        await self._answer(job, prepared, sink, spent, self.tool_format.text_grammar())
                        return
                    if _name_pending(out, prepared) and not (text or deltas or out.status.finished):
                        held.append(out)
                        continue
                    if held:
                        out, held = _joined([*held, out]), []
                    await send_with_tool_calls(sink, out, text, deltas, finish)
                    if prepared.parser.repeated and not out.status.finished:
                        self.engine.stop_request(job.request_id)  # idempotent: later outputs are ignored
                else:
                    await sink.chunk(out.text, out.token_ids, logprobs=out.logprobs, status=out.status, usage=out.usage)
        finally:
            await stream.aclose()  # stops the generation if sending failed (e.g. NATS went away)

    async def _generate(
        self,
        job: TextJob,
        prepared: PreparedJob,
        sink: ReplySink,
        max_tokens: int,
        matcher: llguidance.LLMatcher | None,
        call_gate: CallGate | None = None,
    ) -> OutputStream | None:
        """The job's generation queued on the engine; None (and a 503 sent) when the engine is full."""
        request = GenerateRequest(
            request_id=job.request_id,
            prompt_ids=prepared.prompt_ids,
            sampling=prepared.sampling,
            max_tokens=max_tokens,
            priority=job.priority,
            key=job.key_id or "",
            matcher=matcher,
            call_gate=call_gate,
        )
        try:
            return self.engine.generate(request)
        except EngineOverloaded as e:
            await sink.failed(ErrorInfo(status=503, type="server_error", code="overloaded", message=str(e)))
            return None

    async def _answer(
        self, job: TextJob, prepared: PreparedJob, sink: ReplySink, spent: Usage | None, grammar: str
    ) -> None:
        """Decode the reply again as text only, from the same prompt (its KV from the prefix cache), under
        ``grammar``. Either the model began its reply by repeating a call of this turn whose result the
        conversation already holds (small models do, and a client's tool loop would then never end), or under auto
        the grammar forced the name of a call the model was not sure of (call_gate.py)."""
        used = spent.completion_tokens if spent is not None else 0
        # Under the same request id: the first generation has ended, and a cancel reaches this one.
        matcher = self._compile(grammar, "tools")
        stream = await self._generate(job, prepared, sink, prepared.max_tokens - used, matcher)
        if stream is None:
            return
        try:
            async for out in stream:
                if out.error is not None:
                    await sink.failed(out.error)
                    return
                usage = out.usage
                if usage is not None:  # the tokens of the dropped call were computed too
                    usage = usage.model_copy(update={"completion_tokens": usage.completion_tokens + used})
                await sink.chunk(out.text, out.token_ids, logprobs=out.logprobs, status=out.status, usage=usage)
        finally:
            await stream.aclose()


def _answers_instead(out: StepOutput, prepared: PreparedJob) -> bool:
    """Whether a finished reply is only the repeat of an answered call, and room is left to answer in text."""
    parser = prepared.parser
    assert parser is not None
    spent = out.usage.completion_tokens if out.usage is not None else 0
    return (
        prepared.answer_grammar is not None
        and parser.repeated
        and not parser.calls
        and out.status == JobStatus.FINISHED_STOPPED
        and spent < prepared.max_tokens
    )


def _checking_name(prepared: PreparedJob) -> bool:
    """Whether the reply's first call name is yet to be checked against the gate's name_threshold (call_gate.py)."""
    gate = prepared.call_gate
    return gate is not None and gate.name_threshold > 0 and not prepared.name_checked


def _name_pending(out: StepOutput, prepared: PreparedJob) -> bool:
    """Whether the reply began with a call whose name is still to be checked (_unsure_of_call)."""
    return _checking_name(prepared) and out.call_confidence is not None


def _joined(outs: list[StepOutput]) -> StepOutput:
    """Consecutive outputs of one request as one: their text, tokens and logprobs in order, the last one's rest."""
    logprobs = [lp for o in outs for lp in o.logprobs or ()]
    return replace(
        outs[-1],
        text="".join(o.text for o in outs),
        token_ids=[t for o in outs for t in o.token_ids],
        logprobs=logprobs or None,
    )


def _unsure_of_call(out: StepOutput, deltas: list[ToolCallDelta], prepared: PreparedJob) -> bool:
    """Whether this output names the reply's first call (under auto) and the model was not sure enough of writing
    it: its call_confidence is below the gate's name_threshold (call_gate.py). Checked once per reply."""
    if not _checking_name(prepared) or not any(d.name for d in deltas):
        return False
    prepared.name_checked = True
    assert prepared.call_gate is not None  # _checking_name
    return out.call_confidence is not None and out.call_confidence < prepared.call_gate.name_threshold


def _schema_constraint(tool: dict[str, Any]) -> OutputConstraint:
    """One tool's parameters as a response_format, to compile it alone."""
    return OutputConstraint(type="json_schema", json_schema=tool.get("function", {}).get("parameters") or {})


def split_output(out: StepOutput, parser: ToolCallParser) -> tuple[str, list[ToolCallDelta], str | None]:
    """One engine output as (text, tool-call deltas, finish_reason override).

    The reply ends with "tool_calls" when it stopped after complete calls, or when the parser found the model
    repeating one (``parser.repeated``: whoever runs the engine then stops the request, ``TextEngine.stop_request``).
    A reply cut by max_tokens keeps its status's "length", a call it cut included.
    """
    text, deltas = parser.feed(out.text)
    if out.status.finished:
        more_text, more = parser.finish()
        text, deltas = text + more_text, deltas + more
    ended = out.status == JobStatus.FINISHED_STOPPED or (parser.repeated and out.status.finished)
    finish = "tool_calls" if ended and parser.calls else None
    return text, deltas, finish


async def send_with_tool_calls(
    sink: ReplySink, out: StepOutput, text: str, deltas: list[ToolCallDelta], finish: str | None
) -> None:
    """One engine output as a chunk of its text and its tool-call deltas (``split_output``'s parts)."""
    await sink.send(
        TextChunk,
        out.status,
        text=text,
        token_ids=out.token_ids,
        logprobs=out.logprobs,
        usage=out.usage,
        tool_calls=deltas or None,
        finish_reason=finish,
    )


def build_engine(
    spec: ModelSpec, loaded: LoadedModel, device: torch.device, dtype: torch.dtype, drafter: Drafter | None = None
) -> TextEngine:
    """The engine for a loaded model: a KV pool of the configured budget, a runner sized for the largest step.
    ``drafter`` (a draft model's) drafts for the requests prompt lookup finds nothing for: lookup's drafts are free
    and, where the text repeats, long and right, while Qwen2.5-Coder-0.5B's forward costs ~40 % of the 1.5B's step
    on a 2-core CPU."""
    budget = spec.kv_cache_bytes
    slot = current_slot.get()
    if spec.kv_cache_fraction is not None:
        # In a device group, of what the other runtimes left free and did not set aside (device_group).
        fraction = spec.kv_cache_fraction
        budget = slot.kv_memory(fraction) if slot is not None else int(free_memory(device) * fraction)
    cache = CacheConfig.from_bytes(budget, loaded.config, dtype, spec.kv_block_size)
    runner = ModelRunner(
        loaded.model,
        loaded.config,
        cache=cache,
        max_context=min(loaded.context_length, spec.max_context or loaded.context_length),
        # Up to the matmul shape the largest step runs at anyway, so the scheduler may fill all its padding.
        max_step_tokens=padded_rows(SchedulerConfig(spec.max_batch, spec.max_step_tokens).step_capacity),
        max_batch=spec.max_batch,
        device=device,
        dtype=dtype,
    )
    config = EngineConfig(
        max_batch=spec.max_batch,
        max_waiting=spec.max_waiting,
        max_step_tokens=spec.max_step_tokens,
        prefix_cache=spec.prefix_cache,
        speculative=spec.speculative,
        num_speculative_tokens=spec.num_speculative_tokens,
    )
    log.info(
        "KV cache: %d blocks of %d tokens (%.0f MiB, %s), context %d, prefix cache %s, speculative %s (%d tokens)",
        cache.num_blocks,
        cache.block_size,
        budget / 2**20,
        dtype,
        runner.max_context,
        spec.prefix_cache,
        spec.speculative,
        spec.num_speculative_tokens,
    )
    drafters = [PromptLookupDrafter(), drafter] if drafter is not None else []
    engine = TextEngine(runner, loaded.tokenizer, config, drafters)
    if slot is not None:
        slot.add_kv_cache(lambda: runner.cache.nbytes)
        slot.attach_kv_pool(engine)
    return engine


def build_drafter(
    settings: Settings, spec: ModelSpec, target: LoadedModel, device: torch.device
) -> DraftModelDrafter | None:
    """The draft model's drafter when ``spec`` names one: loaded with its own settings, on the target's device and
    context, with a KV pool of its own. Raises ConfigError when its tokenizer is not the target's."""
    if spec.draft_model is None or spec.speculative == "off":
        return None
    draft_spec = settings.model(spec.draft_model)
    dtype = resolve_dtype(draft_spec.dtype, device)
    draft = load_model(
        resolve_weights(draft_spec, settings.cache_dir),
        dtype=dtype,
        device=device,
        cache_dir=settings.cache_dir,
        quantization=draft_spec.quantization,
    )
    if not same_vocabulary(draft.tokenizer, target.tokenizer):
        raise ConfigError(f"draft_model {spec.draft_model!r} does not share the tokenizer of the model it drafts for")
    budget = draft_spec.kv_cache_bytes
    cache = CacheConfig.from_bytes(budget, draft.config, dtype, draft_spec.kv_block_size)
    runner = ModelRunner(
        draft.model,
        draft.config,
        cache=cache,
        max_context=min(target.context_length, spec.max_context or target.context_length),
        max_step_tokens=DRAFT_PREFILL_BUDGET + spec.max_batch,
        max_batch=spec.max_batch,
        device=device,
        dtype=dtype,
    )
    slot = current_slot.get()
    if slot is not None:
        slot.add_kv_cache(lambda: runner.cache.nbytes)
    log.info("drafting with %s (%s, KV cache %.0f MiB)", spec.draft_model, dtype, budget / 2**20)
    return DraftModelDrafter(runner, vocab_size=target.tokenizer.vocab_size, prefill_budget=DRAFT_PREFILL_BUDGET)


def same_vocabulary(a: TextTokenizer, b: TextTokenizer) -> bool:
    """Whether two tokenizers give every token id the same bytes (a draft's ids mean the same to the target)."""
    if a.vocab_size != b.vocab_size:
        return False
    return all(a.token_bytes(i) == b.token_bytes(i) for i in range(a.vocab_size))


async def start_model_thread(model_id: str, settings: Settings) -> tuple[LoadedModel, TextEngine]:
    """Load the model and run its engine on one dedicated thread (see the NOTE in TextEngine)."""
    spec = settings.model(model_id)
    path = resolve_weights(spec, settings.cache_dir)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)

    def load() -> tuple[LoadedModel, TextEngine]:
        loaded = load_model(
            path,
            dtype=dtype,
            device=device,
            cache_dir=settings.cache_dir,
            quantization=spec.quantization,
            activations=spec.activations,
        )
        formats = ", ".join(f"{name} {count / 1e6:.1f}M" for name, count in loaded.weight_formats.items())
        log.info("%s weights: %s; %.0f MiB read per forward", model_id, formats, loaded.weight_bytes / 2**20)
        for line in loaded.kernel_choices:
            log.info("%s kernels: %s", model_id, line)
        drafter = build_drafter(settings, spec, loaded, device)
        return loaded, build_engine(spec, loaded, device, dtype, drafter)

    log.info("loading %s from %s on %s (%s, quantization %s)", model_id, path, device, dtype, spec.quantization)
    return await start_engine_thread("ember-text-model", load)


async def run_text_worker(
    settings: Settings,
    model_id: str,
    nats_url: str,
    *,
    worker_id: str | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Load the model, join its queue group and serve until ``stop`` is set, or SIGINT/SIGTERM without one."""
    loaded, engine = await start_model_thread(model_id, settings)
    spec = settings.model(model_id)

    async def handler(nc: NATS) -> TextJobHandler:
        tool_format = choose_format(loaded.tokenizer.chat_template, spec.tool_format)
        return TextJobHandler(
            model_id,
            loaded,
            engine,
            sampling_defaults(spec, loaded.path),
            tool_format,
            tool_call_threshold=spec.tool_call_threshold,
            tool_name_threshold=spec.tool_name_threshold,
        )

    await run_worker(settings, model_id, nats_url, handler, engine.stop, worker_id=worker_id, stop=stop)
