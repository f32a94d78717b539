"""Image serving on this machine: images/s at 1, 4 and 8 concurrent requests, Ember against a plain loop, one run.

    ember      POST /v1/images/generations through the real gateway, NATS and an `ember worker image` process
               (step-level batching: images join the running batch between denoising steps)
    diffusers  the plain per-request loop: the folder loaded the usual diffusers way (float32, NCHW) and its
               pipeline called once per request, one request at a time, in a process of its own
    loop       Ember's own runner (its loader: --dtype, NHWC), still one request at a time: the difference to
               Ember is the batching alone

Every run uses the same model (default: the shipped ember-shapes), size, step count and guidance; every request
is one image with its own seed and its own caption (none repeats within a run, so Ember's prompt cache saves
nothing). The three take turns: each round's wave of requests runs on Ember, then on each loop, so a slow minute
on a shared machine falls on all of them alike. Peak memory is each process's peak resident set (VmHWM). The goal
is Ember >= 2x the diffusers loop at 8 concurrent.

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


def serve_loop(args: argparse.Namespace) -> None:
    """A per-request baseline in its own process: after "ready", each line "c r" on stdin runs round r's c
    requests one after another (as if they arrived together) and answers their seconds; at EOF, its peak MB."""
    import os

    generate = (
        plain_pipeline(args.model) if args.loop == "diffusers" else ember_runner(args.model, args.size, args.dtype)
    )
    generate("warm up", 0, args.steps, args.guidance)
    prompt = captions()
    print("ready", flush=True)
    for line in sys.stdin:
        c, r = map(int, line.split())
        start = time.perf_counter()
        for i in range(c):
            generate(next(prompt), r * 100 + i, args.steps, args.guidance)
        print(time.perf_counter() - start, flush=True)
    print(peak_rss_mb(os.getpid()), flush=True)


class Loop:
    """A baseline process driven wave by wave, so that it and Ember take turns through the same minutes of a
    noisy machine rather than each getting minutes of its own."""

    def __init__(self, kind: str, args: argparse.Namespace) -> None:
        cmd = [sys.executable, __file__, "--loop", kind, "--model", str(args.model), "--size", args.size]
        cmd += ["--steps", str(args.steps), "--guidance", str(args.guidance), "--dtype", args.dtype]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _answer(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the loop process ended (exit {self.proc.wait()})")
        return line.strip()

    def ready(self) -> None:
        while self._answer() != "ready":  # anything a library printed while loading
            pass

    def wave(self, c: int, r: int) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{c} {r}\n")
        self.proc.stdin.flush()
        return float(self._answer())

    def close(self) -> float:
        """Ends the process; returns its peak memory in MB."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        peak = float(self._answer())
        self.proc.wait()
        return peak


class EmberClient:
    """Round r's c requests at once through the gateway."""

    def __init__(self, url: str, model_id: str, args: argparse.Namespace, pool: ThreadPoolExecutor) -> None:
        self.url, self.model_id, self.args, self.pool = url, model_id, args, pool
        self.prompts = captions()

    def one(self, seed: int) -> None:
        body = {
            "model": self.model_id,
            "prompt": next(self.prompts),
            "size": self.args.size,
            "num_inference_steps": self.args.steps,
            "guidance_scale": self.args.guidance,
            "seed": seed,
            "response_format": "b64_json",
        }
        r = httpx.post(f"{self.url}/v1/images/generations", json=body, timeout=600)
        r.raise_for_status()

    def wave(self, c: int, r: int) -> float:
        start = time.perf_counter()
        list(self.pool.map(self.one, [r * 100 + i for i in range(c)]))
        return time.perf_counter() - start


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
        serve_loop(args)
        return

    levels, rounds = args.concurrency, args.rounds
    names = ("ember", "diffusers", "loop")
    seconds = {name: dict.fromkeys(levels, 0.0) for name in names}
    loops = {"diffusers": Loop("diffusers", args), "loop": Loop("ember", args)}
    peak: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(data_dir=Path(tmp) / "nats") as nats:
        model_id = "bench-image"
        spec = {"modality": "image", "path": str(args.model), "max_batch": max(levels), "dtype": args.dtype}
        config = write_config(Path(tmp) / "ember.toml", {model_id: spec}, auth={"enabled": False})
        gateway = GatewayThread(load_settings(config), nats.url).start()
        worker = start_worker(config, model_id, nats.url, modality="image", log=Path(tmp) / "worker.log")
        try:
            for loop in loops.values():
                loop.ready()
            wait_for_model(gateway.url, model_id)
            with ThreadPoolExecutor(max(levels)) as pool:
                ember = EmberClient(gateway.url, model_id, args, pool)
                ember.one(0)  # warm up
                # Each round's wave runs on all three in turn.
                for c in levels:
                    for r in range(rounds):
                        seconds["ember"][c] += ember.wave(c, r)
                        for name, loop in loops.items():
                            seconds[name][c] += loop.wave(c, r)
            peak["ember"] = peak_rss_mb(worker.pid)
            peak |= {name: loop.close() for name, loop in loops.items()}
        finally:
            stop_process(worker)
            gateway.stop()
            for loop in loops.values():
                loop.proc.kill()

    dtype = str(resolve_dtype(args.dtype)).removeprefix("torch.")
    print(f"model {args.model.name}, {args.size}, {args.steps} steps, guidance {args.guidance}, {rounds} rounds")
    print(f"ember and loop: {dtype}, NHWC; diffusers: float32, NCHW")
    head = ("concurrent", "ember img/s", "diffusers", "loop", "vs diffusers", "vs loop", "ember s/img")
    print(" ".join(f"{h:>13}" for h in head))
    for c in levels:
        e, d, b = (c * rounds / seconds[name][c] for name in names)
        print(f"{c:>13} {e:>13.2f} {d:>13.2f} {b:>13.2f} {e / d:>12.2f}x {e / b:>12.2f}x {1 / e:>13.3f}")
    print("peak memory: " + ", ".join(f"{name} {peak[name]:.0f} MB" for name in names))


if __name__ == "__main__":
    main()
