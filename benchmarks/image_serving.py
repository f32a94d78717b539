"""Image serving on this machine: images/s at 1, 4 and 8 concurrent requests, Ember against a plain loop, one run.

    ember      POST /v1/images/generations through the real gateway, NATS and an `ember worker image` process
               (dynamic batching: concurrent requests with one size/steps/guidance share a pipeline call)
    loop       the same pipeline called once per request, one request at a time, in a process of its own
               (what serving diffusers without a batcher does), in float32: the model as shipped
    loop@dt    the same loop in Ember's dtype (with --dtype auto on a CPU with native bfloat16: bfloat16), to
               show how much of Ember's lead is the dtype and how much the batching

Both run the same model (default: the shipped ember-shapes), size, step count and guidance; every request is
one image with its own seed. Both load through Ember's loader, so the loop gets the NHWC layout too. Peak memory
is each process's peak resident set (VmHWM): the worker's for Ember, the loop's own. The goal is Ember >= 2x
the loop at 8 concurrent.

    python benchmarks/image_serving.py
    python benchmarks/image_serving.py --concurrency 1 4 8 --rounds 3 --steps 20 --size 32x32 --dtype auto
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.helpers

from ember.bus.nats_server import EmbeddedNats
from ember.config import load_settings
from tests.helpers.cluster import GatewayThread, start_worker, stop_process, wait_for_model, write_config

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "runtimes" / "image" / "weights" / "ember-shapes"
PROMPTS = ["a red circle", "a blue square on the left", "a green triangle", "a yellow circle at the top"]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_loop(
    model: Path, size: str, steps: int, guidance: float, levels: list[int], rounds: int, dtype: str
) -> dict[str, float]:
    """The per-request baseline (runs in its own process): {concurrency: seconds for the whole level}."""
    import os

    from ember.runtimes.dtypes import resolve_dtype
    from ember.runtimes.image.loader import load_pipeline
    from ember.runtimes.image.pipeline import BatchInput, BatchSpec

    loaded = load_pipeline(model, dtype=resolve_dtype(dtype))
    w, h = (int(v) for v in size.split("x"))
    spec = BatchSpec(width=w, height=h, steps=steps, guidance_scale=guidance)
    loaded.runner.generate(BatchInput(spec, ["warm up"], [0]))
    out: dict[str, float] = {}
    for c in levels:
        start = time.perf_counter()
        for r in range(rounds):
            for i in range(c):  # requests that arrived together, served one after another
                loaded.runner.generate(BatchInput(spec, [PROMPTS[i % len(PROMPTS)]], [r * 100 + i]))
        out[str(c)] = time.perf_counter() - start
    out["peak_mb"] = peak_rss_mb(os.getpid())
    return out


def run_ember(
    url: str, model_id: str, size: str, steps: int, guidance: float, levels: list[int], rounds: int
) -> dict[str, float]:
    def one(i: int, seed: int) -> None:
        body = {
            "model": model_id,
            "prompt": PROMPTS[i % len(PROMPTS)],
            "size": size,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "seed": seed,
            "response_format": "b64_json",
        }
        r = httpx.post(f"{url}/v1/images/generations", json=body, timeout=600)
        r.raise_for_status()

    one(0, 0)  # warm up
    out: dict[str, float] = {}
    with ThreadPoolExecutor(max(levels)) as pool:
        for c in levels:
            start = time.perf_counter()
            for r in range(rounds):
                list(pool.map(one, range(c), [r * 100 + i for i in range(c)]))
            out[str(c)] = time.perf_counter() - start
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=1.5)  # the shipped model's default
    ap.add_argument("--size", default="32x32")
    ap.add_argument("--dtype", default="auto", help="Ember's model dtype, as in the config (the loop@dt's too)")
    ap.add_argument("--loop-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loop_only:
        levels = args.concurrency
        print(json.dumps(run_loop(args.model, args.size, args.steps, args.guidance, levels, args.rounds, args.dtype)))
        return

    from ember.runtimes.dtypes import resolve_dtype

    levels, rounds = args.concurrency, args.rounds
    dtype = str(resolve_dtype(args.dtype)).removeprefix("torch.")

    def loop_in(loop_dtype: str) -> dict[str, float]:
        cmd = [sys.executable, __file__, "--loop-only", "--model", str(args.model), "--size", args.size]
        cmd += ["--steps", str(args.steps), "--guidance", str(args.guidance), "--rounds", str(rounds)]
        cmd += ["--concurrency", *map(str, levels), "--dtype", loop_dtype]
        return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])

    loop = loop_in("float32")
    loop_dt = loop if dtype == "float32" else loop_in(dtype)

    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(data_dir=Path(tmp) / "nats") as nats:
        model_id = "bench-image"
        spec = {"modality": "image", "path": str(args.model), "max_batch": max(levels), "dtype": args.dtype}
        config = write_config(Path(tmp) / "ember.toml", {model_id: spec}, auth={"enabled": False})
        gateway = GatewayThread(load_settings(config), nats.url).start()
        worker = start_worker(config, model_id, nats.url, modality="image", log=Path(tmp) / "worker.log")
        try:
            wait_for_model(gateway.url, model_id)
            ember = run_ember(gateway.url, model_id, args.size, args.steps, args.guidance, levels, rounds)
            ember["peak_mb"] = peak_rss_mb(worker.pid)
        finally:
            stop_process(worker)
            gateway.stop()

    print(f"model {args.model.name}, {args.size}, {args.steps} steps, guidance {args.guidance}, {rounds} rounds")
    print(f"ember and loop@dt in {dtype}; loop in float32")
    head = ("concurrent", "ember img/s", "loop img/s", "loop@dt img/s", "vs loop", "vs loop@dt", "ember s/img")
    print(" ".join(f"{h:>13}" for h in head))
    for c in levels:
        n = c * rounds
        e, b, d = n / ember[str(c)], n / loop[str(c)], n / loop_dt[str(c)]
        print(f"{c:>13} {e:>13.2f} {b:>13.2f} {d:>13.2f} {e / b:>12.2f}x {e / d:>12.2f}x {1 / e:>13.3f}")
    mb = {name: f"{run['peak_mb']:.0f} MB" for name, run in (("ember", ember), ("loop", loop), ("loop@dt", loop_dt))}
    print(f"peak memory: ember worker {mb['ember']}, loop {mb['loop']}, loop@dt {mb['loop@dt']}")


if __name__ == "__main__":
    main()
