"""Image serving on this machine: images/s at 1, 4 and 8 concurrent requests, Ember against a plain loop, one run.

    ember      POST /v1/images/generations through the real gateway, NATS and an `ember worker image` process
               (step-level batching: images join the running batch between denoising steps)
    diffusers  the plain per-request loop: the folder loaded the usual diffusers way (float32, NCHW) and its
               pipeline called once per request, one request at a time, in a process of its own
    loop       Ember's own runner (its loader: --dtype, NHWC), still one request at a time: the difference to
               Ember is the batching alone

Every run uses the same model (default: the shipped ember-shapes), size, step count and guidance; every request
is one image with its own seed and its own caption (none repeats within a run, so Ember's prompt cache saves
nothing). Peak memory is each process's peak resident set (VmHWM). The goal is Ember >= 2x
the diffusers loop at 8 concurrent.

    python benchmarks/image_serving.py
    python benchmarks/image_serving.py --concurrency 1 4 8 --rounds 3 --steps 20 --size 32x32 --dtype auto
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.helpers

from ember.bus.nats_server import EmbeddedNats
from ember.config import load_settings
from ember.runtimes.dtypes import resolve_dtype
from ember.runtimes.image.train.shapes import all_scenes
from tests.helpers.cluster import GatewayThread, start_worker, stop_process, wait_for_model, write_config

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "runtimes" / "image" / "weights" / "ember-shapes"
# 90 captions ("a red circle", "a blue square on the left", ...), taken in turn by every run.
PROMPTS = [scene.caption() for scene in all_scenes()]


def captions() -> itertools.cycle[str]:
    return itertools.cycle(PROMPTS)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def plain_pipeline(model: Path) -> Callable[[str, int, int, float], None]:
    """The folder loaded the usual diffusers way; returns generate(prompt, seed, steps, guidance)."""
    import torch
    from diffusers import DiffusionPipeline

    from ember.runtimes.image.pipeline import EmberPixelPipeline
    from ember.runtimes.image.text_encoder import PromptEncoder

    index = json.loads((model / "model_index.json").read_text())
    if index["_class_name"] == EmberPixelPipeline.__name__:
        pipe = EmberPixelPipeline.from_pretrained(str(model), local_files_only=True)
        extra = json.loads((model / "ember_pipeline.json").read_text())
        pipe.prompt_encoder = PromptEncoder.from_package(extra["text_encoder_package"], extra["text_encoder_subdir"])
    else:
        pipe = DiffusionPipeline.from_pretrained(str(model), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)

    def generate(prompt: str, seed: int, steps: int, guidance: float) -> None:
        gen = [torch.Generator().manual_seed(seed)]
        pipe(prompt=[prompt], num_inference_steps=steps, guidance_scale=guidance, generator=gen)

    return generate


def ember_runner(model: Path, size: str, dtype: str) -> Callable[[str, int, int, float], None]:
    """Ember's loader and runner, one request per call."""
    from ember.runtimes.dtypes import resolve_dtype
    from ember.runtimes.image.loader import load_pipeline
    from ember.runtimes.image.pipeline import BatchInput, BatchSpec

    loaded = load_pipeline(model, dtype=resolve_dtype(dtype))
    w, h = (int(v) for v in size.split("x"))

    def generate(prompt: str, seed: int, steps: int, guidance: float) -> None:
        loaded.runner.generate(BatchInput(BatchSpec(w, h, steps, guidance), [prompt], [seed]))

    return generate


def run_loop(args: argparse.Namespace) -> dict[str, float]:
    """A per-request baseline (runs in its own process): {concurrency: seconds for the whole level}."""
    import os

    generate = (
        plain_pipeline(args.model) if args.loop == "diffusers" else ember_runner(args.model, args.size, args.dtype)
    )
    generate("warm up", 0, args.steps, args.guidance)
    prompt = captions()
    out: dict[str, float] = {}
    for c in args.concurrency:
        start = time.perf_counter()
        for r in range(args.rounds):
            for i in range(c):  # requests that arrived together, served one after another
                generate(next(prompt), r * 100 + i, args.steps, args.guidance)
        out[str(c)] = time.perf_counter() - start
    out["peak_mb"] = peak_rss_mb(os.getpid())
    return out


def run_ember(
    url: str, model_id: str, size: str, steps: int, guidance: float, levels: list[int], rounds: int
) -> dict[str, float]:
    prompts = captions()

    def one(seed: int) -> None:
        body = {
            "model": model_id,
            "prompt": next(prompts),
            "size": size,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "seed": seed,
            "response_format": "b64_json",
        }
        r = httpx.post(f"{url}/v1/images/generations", json=body, timeout=600)
        r.raise_for_status()

    one(0)  # warm up
    out: dict[str, float] = {}
    with ThreadPoolExecutor(max(levels)) as pool:
        for c in levels:
            start = time.perf_counter()
            for r in range(rounds):
                list(pool.map(one, [r * 100 + i for i in range(c)]))
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
    ap.add_argument("--dtype", default="auto", help="Ember's model dtype, as in the config (the loop's too)")
    ap.add_argument("--loop", choices=["diffusers", "ember"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loop:
        print(json.dumps(run_loop(args)))
        return

    levels, rounds = args.concurrency, args.rounds

    def loop_of(kind: str) -> dict[str, float]:
        cmd = [sys.executable, __file__, "--loop", kind, "--model", str(args.model), "--size", args.size]
        cmd += ["--steps", str(args.steps), "--guidance", str(args.guidance), "--rounds", str(rounds)]
        cmd += ["--concurrency", *map(str, levels), "--dtype", args.dtype]
        return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])

    plain, loop = loop_of("diffusers"), loop_of("ember")

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

    dtype = str(resolve_dtype(args.dtype)).removeprefix("torch.")
    print(f"model {args.model.name}, {args.size}, {args.steps} steps, guidance {args.guidance}, {rounds} rounds")
    print(f"ember and loop: {dtype}, NHWC; diffusers: float32, NCHW")
    head = ("concurrent", "ember img/s", "diffusers", "loop", "vs diffusers", "vs loop", "ember s/img")
    print(" ".join(f"{h:>13}" for h in head))
    for c in levels:
        n = c * rounds
        e, d, b = n / ember[str(c)], n / plain[str(c)], n / loop[str(c)]
        print(f"{c:>13} {e:>13.2f} {d:>13.2f} {b:>13.2f} {e / d:>12.2f}x {e / b:>12.2f}x {1 / e:>13.3f}")
    mb = {name: f"{run['peak_mb']:.0f} MB" for name, run in (("ember", ember), ("diffusers", plain), ("loop", loop))}
    print(f"peak memory: ember worker {mb['ember']}, diffusers {mb['diffusers']}, loop {mb['loop']}")


if __name__ == "__main__":
    main()
