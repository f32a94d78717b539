"""Tool-call validity on a real model, with and without the grammar: 52 prompts, 4 kinds.

    simple      one tool offered, and it fits
    multiple    four tools offered, one fits
    parallel    four tools offered, the prompt asks for two calls
    no_fit      four tools offered, none fits (the right answer is text)

Prompts where a tool fits run with ``tool_choice=required``, the no-fit ones with ``auto``: SmolLM2-135M never
opens a call on its own (0 calls on the 39 fitting prompts under ``auto``, measured), so ``auto`` alone would
measure nothing. Every prompt runs twice in the same engine: constrained (Ember's default) and unconstrained
(the same prompt and format, calls parsed from free text). The table shows, per kind, how many returned calls
parse and validate against their tool's schema, and how often the right function was chosen.
``CASES`` is also the set tests/e2e/test_tool_calls.py runs through the whole platform.

    python benchmarks/tool_call_eval.py [--model smollm2-135m-instruct] [--batch 16] [--grammar on|off|both]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import jsonschema


def tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


_STR = {"type": "string"}
TOOLS: dict[str, dict[str, Any]] = {
    t["function"]["name"]: t
    for t in (
        tool(
            "get_weather",
            "Get the current weather in a city",
            {"city": _STR, "unit": {"enum": ["celsius", "fahrenheit"]}},
            ["city"],
        ),
        tool(
            "convert_currency",
            "Convert an amount of money between currencies",
            {"amount": {"type": "number"}, "from": _STR, "to": _STR},
            ["amount", "from", "to"],
        ),
        tool("send_email", "Send an email", {"to": _STR, "subject": _STR, "body": _STR}, ["to", "subject"]),
        tool("set_timer", "Set a timer", {"minutes": {"type": "integer", "minimum": 1, "maximum": 1440}}, ["minutes"]),
        tool("get_stock_price", "Get the latest price of a stock", {"ticker": _STR}, ["ticker"]),
        tool(
            "translate", "Translate text into another language", {"text": _STR, "language": _STR}, ["text", "language"]
        ),
    )
}
_SET_A = ["get_weather", "convert_currency", "set_timer", "send_email"]
_SET_B = ["get_stock_price", "translate", "get_weather", "set_timer"]


@dataclass(frozen=True)
class Case:
    kind: str
    prompt: str
    tools: list[str]
    # The functions a right answer calls (in any order); () means a text answer.
    expected: tuple[str, ...]

    def openai_tools(self) -> list[dict[str, Any]]:
        return [TOOLS[n] for n in self.tools]

    @property
    def tool_choice(self) -> str:
        return "required" if self.expected else "auto"


def _simple(name: str, *prompts: str) -> list[Case]:
    return [Case("simple", p, [name], (name,)) for p in prompts]


CASES: list[Case] = [
    *_simple("get_weather", "What's the weather in Paris?", "Is it raining in London right now?"),
    *_simple("get_weather", "Tell me the temperature in Tokyo in fahrenheit.", "How hot is it in Cairo today?"),
    *_simple("convert_currency", "Convert 100 US dollars to euros.", "How many yen is 50 pounds?"),
    *_simple("set_timer", "Set a timer for 10 minutes.", "Remind me in 25 minutes with a timer."),
    *_simple("get_stock_price", "What is Apple's stock price?", "Price of TSLA please."),
    *_simple("translate", "Translate 'good morning' into Spanish.", "How do you say 'thank you' in German?"),
    *_simple("send_email", "Email bob@example.com with subject 'Lunch' to ask about lunch."),
    Case("multiple", "What's the weather like in Berlin?", _SET_A, ("get_weather",)),
    Case("multiple", "Convert 20 euros to dollars.", _SET_A, ("convert_currency",)),
    Case("multiple", "Set a 5 minute timer for my tea.", _SET_A, ("set_timer",)),
    Case("multiple", "Send an email to ann@example.com titled 'Report'.", _SET_A, ("send_email",)),
    Case("multiple", "Is it sunny in Madrid?", _SET_A, ("get_weather",)),
    Case("multiple", "How much is 300 Swiss francs in pounds?", _SET_A, ("convert_currency",)),
    Case("multiple", "Start a timer for one hour.", _SET_A, ("set_timer",)),
    Case("multiple", "What's Microsoft trading at?", _SET_B, ("get_stock_price",)),
    Case("multiple", "Translate 'where is the station' into French.", _SET_B, ("translate",)),
    Case("multiple", "What's the forecast for Rome?", _SET_B, ("get_weather",)),
    Case("multiple", "Give me the NVDA share price.", _SET_B, ("get_stock_price",)),
    Case("multiple", "Put 'I love books' in Italian.", _SET_B, ("translate",)),
    Case("multiple", "Set a timer for 45 minutes.", _SET_B, ("set_timer",)),
    Case("multiple", "Weather in Sydney, in celsius.", _SET_B, ("get_weather",)),
    Case("multiple", "Email team@example.com with the subject 'Standup moved'.", _SET_A, ("send_email",)),
    Case("parallel", "What's the weather in Paris and in Oslo?", _SET_A, ("get_weather", "get_weather")),
    Case("parallel", "Convert 10 dollars to euros and 10 dollars to yen.", _SET_A, ("convert_currency",) * 2),
    Case("parallel", "Set a timer for 5 minutes and another for 20 minutes.", _SET_A, ("set_timer", "set_timer")),
    Case("parallel", "Weather in Lima, and set a 15 minute timer.", _SET_A, ("get_weather", "set_timer")),
    Case("parallel", "Stock prices of AAPL and GOOG?", _SET_B, ("get_stock_price", "get_stock_price")),
    Case("parallel", "Translate 'hello' into French and into German.", _SET_B, ("translate", "translate")),
    Case("parallel", "What's the weather in Rome and Milan?", _SET_B, ("get_weather", "get_weather")),
    Case("parallel", "Price of AMZN, and the weather in Seattle.", _SET_B, ("get_stock_price", "get_weather")),
    Case(
        "parallel", "Convert 5 pounds to dollars and set a 3 minute timer.", _SET_A, ("convert_currency", "set_timer")
    ),
    Case("parallel", "Weather in Delhi and in Mumbai, please.", _SET_A, ("get_weather", "get_weather")),
    Case("parallel", "Set timers for 1 minute and 2 minutes.", _SET_B, ("set_timer", "set_timer")),
    Case("no_fit", "Write a haiku about autumn.", _SET_A, ()),
    Case("no_fit", "What is the capital of France?", _SET_A, ()),
    Case("no_fit", "Tell me a joke.", _SET_A, ()),
    Case("no_fit", "Who wrote Romeo and Juliet?", _SET_B, ()),
    Case("no_fit", "Explain what photosynthesis is in one sentence.", _SET_B, ()),
    Case("no_fit", "What is 2 plus 2?", _SET_A, ()),
    Case("no_fit", "Say hello.", _SET_B, ()),
    Case("no_fit", "Name three primary colors.", _SET_A, ()),
    Case("no_fit", "What does a cat say?", _SET_B, ()),
    Case("no_fit", "Give me a synonym for happy.", _SET_A, ()),
    Case("no_fit", "How many legs does a spider have?", _SET_B, ()),
    Case("no_fit", "Describe the ocean in five words.", _SET_A, ()),
    Case("no_fit", "Thanks, that is all.", _SET_B, ()),
]
assert len(CASES) >= 50


def call_is_valid(name: str, arguments: str, offered: list[str]) -> bool:
    """Whether a call names an offered tool and its arguments are JSON matching that tool's schema."""
    if name not in offered:
        return False
    try:
        jsonschema.validate(json.loads(arguments), TOOLS[name]["function"]["parameters"])
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def right_function(case: Case, names: list[str]) -> bool:
    """No call for a no-fit prompt; otherwise the expected functions (extra calls of them are tolerated)."""
    if not case.expected:
        return not names
    return bool(names) and set(names) == set(case.expected)


@dataclass
class Tally:
    prompts: int = 0
    calls: int = 0
    valid: int = 0
    right: int = 0
    seconds: list[float] = field(default_factory=list)

    def add(self, case: Case, calls: list[tuple[str, str]]) -> None:
        self.prompts += 1
        self.calls += len(calls)
        self.valid += sum(call_is_valid(n, a, case.tools) for n, a in calls)
        self.right += right_function(case, [n for n, _ in calls])


async def run_case(handler: Any, case: Case, index: int, max_tokens: int) -> list[tuple[str, str]]:
    """One prompt through the worker's preparation, the engine and the call parser, in process."""
    from ember.bus.messages import ChatMessage, SamplingParams, TextJob, ToolChoice
    from ember.runtimes.text.engine import GenerateRequest
    from ember.runtimes.text.worker import split_output

    job = TextJob(
        request_id=f"eval-{index}-{handler.constrain}",
        model=handler.model,
        messages=(ChatMessage(role="user", content=case.prompt),),
        tools=tuple(case.openai_tools()),
        tool_choice=ToolChoice(mode=case.tool_choice),  # type: ignore[arg-type]
        sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens),
    )
    prepared = await asyncio.to_thread(handler.prepare, job)
    req = GenerateRequest(
        request_id=job.request_id,
        prompt_ids=prepared.prompt_ids,
        sampling=prepared.sampling,
        max_tokens=prepared.max_tokens,
        matcher=prepared.matcher,
    )
    calls: dict[int, list[str]] = {}
    async for out in handler.engine.generate(req):
        _, deltas, _ = split_output(out, prepared.parser)
        for d in deltas:
            calls.setdefault(d.index, [d.name or "", ""])[1] += d.arguments
    return [(n, a) for n, a in (calls[i] for i in sorted(calls))]


async def evaluate(
    model: str, config: str | None, batch: int, max_tokens: int, modes: tuple[bool, ...] = (True, False)
) -> dict[bool, dict[str, Tally]]:
    from ember.config import load_settings
    from ember.runtimes.text.tool_format import choose_format
    from ember.runtimes.text.worker import TextJobHandler, start_model_thread

    settings = load_settings(config)
    settings.models[model] = settings.model(model).model_copy(update={"max_batch": batch, "max_context": 1024})
    loaded, engine = await start_model_thread(model, settings)
    fmt = choose_format(loaded.tokenizer.chat_template, settings.model(model).tool_format)
    results: dict[bool, dict[str, Tally]] = {}
    try:
        for constrain in modes:
            handler = TextJobHandler(model, loaded, engine, tool_format=fmt, constrain=constrain)
            tallies = results.setdefault(constrain, {})
            start = time.perf_counter()
            outs = await asyncio.gather(*(run_case(handler, c, i, max_tokens) for i, c in enumerate(CASES)))
            for case, calls in zip(CASES, outs, strict=True):
                tallies.setdefault(case.kind, Tally()).add(case, calls)
            tallies["all"] = Tally(seconds=[time.perf_counter() - start])
            for kind, t in list(tallies.items()):
                if kind != "all":
                    for attr in ("prompts", "calls", "valid", "right"):
                        setattr(tallies["all"], attr, getattr(tallies["all"], attr) + getattr(t, attr))
            print_table({constrain: tallies}, header=constrain == modes[0])
    finally:
        engine.stop()
    return results


def print_table(results: dict[bool, dict[str, Tally]], header: bool = True) -> None:
    if header:
        print(f"{'grammar':<8} {'kind':<9} {'prompts':>7} {'calls':>6} {'valid calls':>12} {'right function':>15}")
    for constrain, tallies in results.items():
        for kind, t in tallies.items():
            valid = f"{t.valid}/{t.calls} {100 * t.valid / t.calls:.0f}%" if t.calls else "-"
            right = f"{t.right}/{t.prompts} {100 * t.right / t.prompts:.0f}%"
            print(f"{'on' if constrain else 'off':<8} {kind:<9} {t.prompts:>7} {t.calls:>6} {valid:>12} {right:>15}")
        if "all" in tallies:
            print(f"{'':<8} wall time {tallies['all'].seconds[0]:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--config", default=None)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--grammar", choices=["on", "off", "both"], default="both")
    args = parser.parse_args()
    modes = {"on": (True,), "off": (False,), "both": (True, False)}[args.grammar]
    asyncio.run(evaluate(args.model, args.config, args.batch, args.max_tokens, modes))  # prints a table per mode


if __name__ == "__main__":
    main()
