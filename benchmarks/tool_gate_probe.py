"""How sure a model is that it should call a tool, on prompts that a tool fits and prompts none does: the two numbers
the call gate of ``tool_choice: auto`` decides on (ember.runtimes.text.call_gate).

Each prompt goes through the worker's own preparation (TextJobHandler.prepare: the chat template, the tools, the
guidance that auto adds). First, one forward of the model: the gate sums the probability of the tokens that begin a
call over the whole vocabulary (``p_call``). Then the engine decodes a call greedily under the grammar (as
``required`` would) up to the function's name, and reports its call_confidence there: the raw probability the model
put on the tokens the grammar allowed (``confidence``, and the ``name`` it wrote). The tables give each category's
spread, and the thresholds that separate them: what ``tool_call_threshold`` and ``tool_name_threshold`` in a model's
config are chosen from. Choose them on the tuning set (the default,
benchmarks/data/tool_gate_cases.py) and score them with benchmarks/tool_call_eval.py, whose prompts they were not
chosen on; ``--cases eval`` probes those too, to see where a threshold lands on them.

    python benchmarks/tool_gate_probe.py --model qwen2.5-coder-1.5b-instruct
    python benchmarks/tool_gate_probe.py --model qwen2.5-coder-0.5b-instruct --cases eval --out probe.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for benchmarks.data

from benchmarks.data.tool_cases import CASES, Case
from benchmarks.data.tool_gate_cases import GATE_CASES

FITS = ("fits", "simple", "multiple", "parallel")


async def probe(model_id: str, cases: list[Case]) -> list[dict[str, Any]]:
    from ember.bus.messages import ChatMessage, SamplingParams, TextJob, ToolChoice
    from ember.config.settings import load_settings
    from ember.runtimes.text.tool_format import choose_format
    from ember.runtimes.text.worker import TextJobHandler, sampling_defaults, start_model_thread

    settings = load_settings()
    spec = settings.model(model_id)
    loaded, engine = await start_model_thread(model_id, settings)
    try:
        handler = TextJobHandler(
            model_id,
            loaded,
            engine,
            sampling_defaults(spec, loaded.path),
            choose_format(loaded.tokenizer.chat_template, spec.tool_format),
            tool_call_threshold=spec.tool_call_threshold or 0.5,
        )
        assert handler.call_gate is not None
        rows = []
        for case in cases:
            job = TextJob(
                request_id=case.id,
                model=model_id,
                messages=tuple(ChatMessage.model_validate(m) for m in case.messages()),
                tools=case.openai_tools(),
                tool_choice=ToolChoice(mode="auto"),
                sampling=SamplingParams(),
            )
            ids = handler.prepare(job).prompt_ids
            with torch.inference_mode():
                hidden = loaded.model(torch.tensor(ids), torch.arange(len(ids)))
                logits = loaded.model.logits(hidden[-1:])[0]
            p = handler.call_gate.call_probability(logits)
            name, confidence = await first_call(handler, job)
            rows.append(
                {
                    "id": case.id,
                    "category": case.category,
                    "prompt": case.prompt,
                    "p_call": round(p, 4),
                    "name": name,
                    "confidence": None if confidence is None else round(confidence, 4),
                }
            )
            shown = "-" if confidence is None else f"{confidence:.3f}"
            print(f"{case.category:12} {case.id:16} {p:.3f} {shown:>6} {name or '-':20} {case.prompt}", flush=True)
        return rows
    finally:
        engine.stop()


async def first_call(handler: Any, job: Any) -> tuple[str | None, float | None]:
    """The function a greedy call names, under the grammar, and the engine's call_confidence at its name."""
    from dataclasses import replace

    from ember.bus.messages import SamplingParams, ToolChoice
    from ember.runtimes.text.request import GenerateRequest
    from ember.runtimes.text.worker import split_output

    forced = job.model_copy(update={"tool_choice": ToolChoice(mode="required"), "parallel_tool_calls": False})
    prepared = handler.prepare(forced)
    # Open at any odds and never dropping a call: this only measures.
    gate = replace(handler.call_gate, threshold=1e-9, name_threshold=1e-300)
    request = GenerateRequest(
        request_id=f"probe-{job.request_id}",
        prompt_ids=prepared.prompt_ids,
        sampling=SamplingParams(temperature=0.0, max_tokens=64),
        max_tokens=64,
        matcher=prepared.matcher,
        call_gate=gate,
    )
    name, confidence = None, None
    async for out in handler.engine.generate(request):
        _, deltas, _ = split_output(out, prepared.parser)
        named = next((d.name for d in deltas if d.name), None)
        if named is not None and name is None:
            name, confidence = named, out.call_confidence
            handler.engine.stop_request(request.request_id)
    return name, confidence


def summary(rows: list[dict[str, Any]], threshold: float, name_threshold: float) -> None:
    spread(rows, "p_call", "first-token call probability", threshold)
    spread(rows, "confidence", "call_confidence at the name", name_threshold)


def spread(rows: list[dict[str, Any]], key: str, what: str, threshold: float) -> None:
    fits = sorted(r[key] for r in rows if r["category"] in FITS and r[key] is not None)
    none = sorted(r[key] for r in rows if r["category"] == "irrelevance" and r[key] is not None)
    print(f"\n{what}:\n\n| prompts | n | min | median | max | at or above {threshold} |")
    print("|---|---|---|---|---|---|")
    for name, ps in (("a tool fits", fits), ("no tool fits", none)):
        if ps:
            above = sum(p >= threshold for p in ps)
            print(f"| {name} | {len(ps)} | {ps[0]:.3f} | {statistics.median(ps):.3f} | {ps[-1]:.3f} | {above} |")
    if fits and none:
        if none[-1] < fits[0]:
            print(f"\nseparated: any threshold in ({none[-1]:.3f}, {fits[0]:.3f}]")
        else:
            best = min((sum(p >= t for p in none) + sum(p < t for p in fits), t) for t in sorted({*fits, *none, 1.0}))
            print(f"\nnot separated: fewest wrong decisions ({best[0]}) at threshold {best[1]:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-1.5b-instruct", help="a configured text model")
    p.add_argument("--cases", choices=["gate", "eval", "both"], default="gate", help="the tuning set, the eval's")
    p.add_argument("--threshold", type=float, help="the one to count against (default: the model's configured)")
    p.add_argument("--name-threshold", type=float, help="call_confidence's (default: the model's configured)")
    p.add_argument("--out", type=Path, help="write the per-prompt probabilities here (JSON)")
    args = p.parse_args()
    evaluated = [c for c in CASES if c.category in (*FITS, "irrelevance")]
    cases = {"gate": GATE_CASES, "eval": evaluated, "both": [*GATE_CASES, *evaluated]}[args.cases]
    rows = asyncio.run(probe(args.model, cases))
    from ember.config.settings import load_settings

    spec = load_settings().model(args.model)
    threshold = spec.tool_call_threshold if args.threshold is None else args.threshold
    name_threshold = spec.tool_name_threshold if args.name_threshold is None else args.name_threshold
    summary(rows, threshold, name_threshold)
    if args.out:
        found = {"model": args.model, "threshold": threshold, "name_threshold": name_threshold, "prompts": rows}
        args.out.write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
