"""Three runtimes in one process under a mixed load: does the shared device run out of memory, or keep growing?

One `ember worker gpu` process serves a text, an image and an audio model on one device (the GPU where there is
one: issue 18's goal is 5 minutes of mixed load on an H100 with no out-of-memory and no growth in reserved memory
after warm-up). Clients send a mix of chat completions, image generations and transcriptions through the real
gateway and NATS for ``--seconds``; the group's memory is sampled every ``--sample-s``:

    GPU   what torch's allocator holds for the group (reserved, allocated: ember_device_memory_bytes on /metrics)
    CPU   the group process's resident set (there the allocator keeps no count)

and each model's share (ember_runtime_memory_bytes: what its load took, its KV cache). The table gives, per
sample, the memory and the requests done and failed; the verdict compares the last sample with the first one after
``--warmup-s``. A failed request (out of memory included) counts against the run, whatever its memory.

    python benchmarks/device_group_soak.py                       # shipped models: SmolLM2, ember-shapes, tiny.en
    python benchmarks/device_group_soak.py --tiny --seconds 60   # the tests' tiny checkpoints (no packages needed)
    python benchmarks/device_group_soak.py --device cuda --seconds 300 --clients 3
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.helpers

from ember.bus import children
from ember.bus.nats_server import EmbeddedNats
from ember.config import load_settings
from ember.config.settings import DEFAULT_AUDIO_MODEL, DEFAULT_IMAGE_MODEL, SMOLLM2_MODEL
from tests.helpers.audio_files import tone_wav
from tests.helpers.cluster import GatewayThread, start_group, wait_for_model, write_config
from tests.helpers.metrics import scrape, total

TEXT, IMAGE, AUDIO = "soak-text", "soak-image", "soak-audio"


def model_specs(args: argparse.Namespace, root: Path) -> dict[str, dict[str, Any]]:
    """The three models' config entries, on ``args.device``."""
    common = {"device": args.device, "max_batch": 8}
    text: dict[str, Any] = {**common, "kv_cache_fraction": args.kv_fraction}
    image: dict[str, Any] = {**common, "modality": "image", "memory_budget_bytes": args.image_budget_mib * 2**20}
    audio: dict[str, Any] = {**common, "modality": "audio"}
    if args.tiny:
        from tests.helpers.tiny_checkpoint import write_tiny_llama
        from tests.helpers.tiny_diffusion import write_tiny_pixel
        from tests.helpers.tiny_whisper import write_tiny_whisper

        text["path"] = str(write_tiny_llama(root / "text"))
        image["path"] = str(write_tiny_pixel(root / "pixel", own_encoder=True))  # no package needed
        audio["path"] = str(write_tiny_whisper(root / "whisper.pt"))
    else:
        defaults = load_settings(None).models
        for entry, model_id in ((text, SMOLLM2_MODEL), (image, DEFAULT_IMAGE_MODEL), (audio, DEFAULT_AUDIO_MODEL)):
            shipped = defaults[model_id]
            entry |= {"package": shipped.package, "file": shipped.file}
    return {TEXT: text, IMAGE: image, AUDIO: audio}


def requests(base: str, max_tokens: int) -> dict[str, Callable[[httpx.Client, int], httpx.Response]]:
    wav = tone_wav(3.0)  # a tone: any Whisper turns it into some text, every window decoded

    def chat(c: httpx.Client, i: int) -> httpx.Response:
        body = {
            "model": TEXT,
            "messages": [{"role": "user", "content": f"Write a short story about the number {i}."}],
            "max_tokens": max_tokens,
        }
        return c.post(f"{base}/v1/chat/completions", json=body)

    def image(c: httpx.Client, i: int) -> httpx.Response:
        body = {"model": IMAGE, "prompt": "a red circle on the left", "seed": i, "response_format": "b64_json"}
        return c.post(f"{base}/v1/images/generations", json=body)

    def audio(c: httpx.Client, i: int) -> httpx.Response:
        return c.post(
            f"{base}/v1/audio/transcriptions", files={"file": ("a.wav", wav, "audio/wav")}, data={"model": AUDIO}
        )

    return {"text": chat, "image": image, "audio": audio}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="the group's device: auto, cpu, cuda or cuda:N")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny checkpoints instead of shipped models")
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--sample-s", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=2, help="concurrent clients per modality")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--kv-fraction", type=float, default=0.5, help="the text model's kv_cache_fraction")
    parser.add_argument("--image-budget-mib", type=int, default=1024, help="the image model's memory_budget_bytes")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(data_dir=Path(tmp) / "nats") as nats:
        root = Path(tmp)
        config = write_config(
            root / "ember.toml", model_specs(args, root), auth={"enabled": False}, audio={"beam_size": 1}
        )
        gateway = GatewayThread(load_settings(config), nats.url).start()
        log = root / "group.log"
        group = start_group(config, [TEXT, IMAGE, AUDIO], nats.url, log=log)
        try:
            for model in (TEXT, IMAGE, AUDIO):
                try:
                    wait_for_model(gateway.url, model, timeout=600)
                except TimeoutError:
                    raise SystemExit(log.read_text()[-4000:]) from None
            soak(args, gateway.url, group.pid)
        finally:
            children.stop(group, 30)
            gateway.stop()
        print("\n".join(line for line in log.read_text().splitlines() if "loaded on" in line or "KV" in line))


def soak(args: argparse.Namespace, base: str, pid: int) -> None:
    calls = requests(base, args.max_tokens)
    done: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    errors: list[str] = []
    stop = threading.Event()
    counter = itertools.count()

    def client(kind: str) -> None:
        with httpx.Client(timeout=600) as c:
            while not stop.is_set():
                try:
                    r = calls[kind](c, next(counter))
                    ok = r.status_code == 200
                    if not ok:
                        errors.append(f"{kind} {r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as e:
                    ok = False
                    errors.append(f"{kind}: {e!r}")
                (done if ok else failed)[kind] += 1

    setup = f"{args.clients} clients per modality, {args.seconds:.0f} s, warm-up {args.warmup_s:.0f} s"
    print(f"device {args.device}, {setup}")
    head = ("t s", "memory MiB", "reserved MiB", "allocated MiB", "text", "image", "audio", "failed")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    samples: list[tuple[float, float]] = []
    start = time.monotonic()
    with ThreadPoolExecutor(3 * args.clients) as pool:
        for kind in calls:
            for _ in range(args.clients):
                pool.submit(client, kind)
        try:
            while (t := time.monotonic() - start) < args.seconds:
                time.sleep(min(args.sample_s, max(args.seconds - t, 0.1)))
                t = time.monotonic() - start
                page = scrape(base)
                reserved = total(page, "ember_device_memory_bytes", kind="reserved")
                allocated = total(page, "ember_device_memory_bytes", kind="allocated")
                memory = reserved if reserved else rss_bytes(pid)
                samples.append((t, memory))
                row = (f"{t:.0f}", f"{memory / 2**20:.0f}", f"{reserved / 2**20:.0f}", f"{allocated / 2**20:.0f}")
                counts = (str(done["text"]), str(done["image"]), str(done["audio"]), str(sum(failed.values())))
                print("| " + " | ".join((*row, *counts)) + " |", flush=True)
        finally:
            stop.set()
    page = scrape(base)
    print("\n| model | load MiB | KV cache MiB |\n|---|---|---|")
    for model in (TEXT, IMAGE, AUDIO):
        load = total(page, "ember_runtime_memory_bytes", model=model, part="load") / 2**20
        kv = total(page, "ember_runtime_memory_bytes", model=model, part="kv_cache") / 2**20
        print(f"| {model} | {load:.0f} | {kv:.0f} |")
    after = [m for t, m in samples if t >= args.warmup_s]
    if after:
        growth = (after[-1] - after[0]) / 2**20
        print(
            f"\nafter warm-up: {after[0] / 2**20:.0f} -> {after[-1] / 2**20:.0f} MiB ({growth:+.0f} MiB), "
            f"peak {max(after) / 2**20:.0f} MiB"
        )
    print(f"requests: {dict(done)} done, {sum(failed.values())} failed")
    for e in errors[:5]:
        print("  " + e)


if __name__ == "__main__":
    main()
