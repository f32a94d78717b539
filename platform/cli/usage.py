"""``ember usage [--key ID] [--since 1h|2026-11-01T00:00]``: totals from the usage stream."""

from __future__ import annotations

import argparse
import json

from ember.bus.connection import connect
from ember.usage import stream
from ember.usage.stream import parse_since


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("usage", help="summarise recorded usage per key and model")
    p.add_argument("--nats", help="NATS URL (default: nats.url from config)")
    p.add_argument("--key", help="only this key id")
    p.add_argument("--since", help="a duration back from now (90m, 24h, 7d) or an ISO date")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


async def run(args: argparse.Namespace, nats_url: str) -> int:
    since = parse_since(args.since)
    nc = await connect(nats_url, name="ember-cli-usage")
    try:
        js = nc.jetstream()
        await stream.ensure_stream(js)
        totals = await stream.summarize(js, key_id=args.key, since=since)
    finally:
        await nc.close()
    if args.json:
        print(json.dumps([t.as_dict() for t in totals], indent=2))
        return 0
    header = (
        "key",
        "model",
        "requests",
        "errors",
        "batch",
        "prompt_tok",
        "completion_tok",
        "billed_tok",
        "images",
        "audio_s",
    )
    rows = [
        (
            t.key_id,
            t.model,
            t.requests,
            t.errors,
            t.batch_requests,
            t.prompt_tokens,
            t.completion_tokens,
            round(t.billed_tokens, 1),
            t.images,
            t.audio_seconds,
        )
        for t in totals
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)))
    if not rows:
        print("(no usage recorded" + (f" since {since.isoformat()}" if since else "") + ")")
    return 0
