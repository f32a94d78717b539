"""How sure a model is, at the first token of its reply, that it should call a tool: the number the call gate of
``tool_choice: auto`` decides on (ember.runtimes.text.call_gate), on prompts that a tool fits and prompts none does.

Each prompt goes through the worker's own preparation (TextJobHandler.prepare: the chat template, the tools, the
guidance that auto adds), then one forward of the model; the gate sums the probability of the tokens that begin a
call over the whole vocabulary. The table gives each category's spread, and the thresholds that separate them:
what ``tool_call_threshold`` in a model's config is chosen from. Choose it on the tuning set (the default,
benchmarks/data/tool_gate_cases.py) and score it with benchmarks/tool_call_eval.py, whose prompts it was not
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
            rows.append({"id": case.id, "category": case.category, "prompt": case.prompt, "p_call": round(p, 4)})
            print(f"{case.category:12} {case.id:16} {p:.3f}  {case.prompt}", flush=True)
        return rows
    finally:
        engine.stop()


def summary(rows: list[dict[str, Any]], threshold: float) -> None:
    fits = sorted(r["p_call"] for r in rows if r["category"] in FITS)
    none = sorted(r["p_call"] for r in rows if r["category"] == "irrelevance")
    print(f"\n| prompts | n | min | median | max | at or above {threshold} |")
    print("|---|---|---|---|---|---|")
    for name, ps in (("a tool fits", fits), ("no tool fits", none)):
        if ps:
            above = sum(p >= threshold for p in ps)
            print(f"| {name} | {len(ps)} | {ps[0]:.2f} | {statistics.median(ps):.2f} | {ps[-1]:.2f} | {above} |")
    if fits and none:
        if none[-1] < fits[0]:
            print(f"\nseparated: any threshold in ({none[-1]:.2f}, {fits[0]:.2f}]")
        else:
            best = min((sum(p >= t for p in none) + sum(p < t for p in fits), t) for t in sorted({*fits, *none, 1.0}))
            print(f"\nnot separated: fewest wrong decisions ({best[0]}) at threshold {best[1]:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-1.5b-instruct", help="a configured text model")
    p.add_argument("--cases", choices=["gate", "eval", "both"], default="gate", help="the tuning set, the eval's")
    p.add_argument("--threshold", type=float, help="the one to count against (default: the model's configured)")
    p.add_argument("--out", type=Path, help="write the per-prompt probabilities here (JSON)")
    args = p.parse_args()
    evaluated = [c for c in CASES if c.category in (*FITS, "irrelevance")]
    cases = {"gate": GATE_CASES, "eval": evaluated, "both": [*GATE_CASES, *evaluated]}[args.cases]
    rows = asyncio.run(probe(args.model, cases))
    if args.threshold is None:
        from ember.config.settings import load_settings

        args.threshold = load_settings().model(args.model).tool_call_threshold
    summary(rows, args.threshold)
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "threshold": args.threshold, "prompts": rows}, indent=1))


if __name__ == "__main__":
    main()
