"""``ember worker gpu``: several models' runtimes in one process on one device (here the CPU, as every test runs).

Real parts throughout: a real ``ember worker gpu`` process with the tiny text model, a tiny pixel-diffusion model
and a tiny Whisper, on the session's real NATS, behind the real gateway; requests over loopback HTTP.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from ember.bus import children
from ember.bus.nats_server import free_port
from ember.config import ConfigError, load_settings
from ember.runtimes.device_group.host import Member, plan_group
from ember.runtimes.device_group.ledger import DeviceLedger
from ember.runtimes.device_group.slot import RuntimeSlot, kv_budget
from tests.helpers.audio_files import tone_wav
from tests.helpers.cluster import GatewayThread, start_group, wait_for_model, write_config
from tests.helpers.metrics import scrape, total
from tests.helpers.serve_process import ServeProcess
from tests.helpers.tiny_diffusion import write_tiny_pixel
from tests.helpers.tiny_whisper import write_tiny_whisper

TEXT, IMAGE, AUDIO = "group-text", "group-image", "group-audio"
# The image model's budget: set aside from the text model's KV cache, which takes a fraction of the rest.
IMAGE_BUDGET = 64 * 2**20
KV_FRACTION = 0.002


async def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError("plan_group does not run members")


def test_plan_puts_text_last_and_keeps_the_others_order(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "ember.toml",
        {
            "t": {"path": str(tmp_path), "device": "cpu"},
            "i": {"modality": "image", "path": str(tmp_path), "device": "cpu"},
            "a": {"modality": "audio", "path": str(tmp_path), "device": "cpu"},
        },
    )
    settings = load_settings(config)
    members = [Member("t", "text", _never), Member("i", "image", _never), Member("a", "audio", _never)]
    device, ordered = plan_group(settings, members)
    assert device == torch.device("cpu")
    assert [m.model_id for m in ordered] == ["i", "a", "t"]


def test_plan_refuses_groups_that_cannot_share(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "ember.toml",
        {
            "t": {"path": str(tmp_path), "device": "cpu"},
            "gpu": {"modality": "image", "path": str(tmp_path), "device": "cuda:0"},
        },
    )
    settings = load_settings(config)
    with pytest.raises(ConfigError, match="at least one"):
        plan_group(settings, [])
    with pytest.raises(ConfigError, match="each model once"):
        plan_group(settings, [Member("t", "text", _never), Member("t", "text", _never)])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"model 'gpu'.*no CUDA GPU"):
            plan_group(settings, [Member("t", "text", _never), Member("gpu", "image", _never)])


def test_the_kv_cache_leaves_the_other_runtimes_budgets_free() -> None:
    cpu = torch.device("cpu")
    ledger = DeviceLedger(cpu)
    text = RuntimeSlot("t", "text", cpu)
    image = RuntimeSlot("i", "image", cpu, budget_bytes=3 * 2**30)
    audio = RuntimeSlot("a", "audio", cpu, budget_bytes=2**30)
    for slot in (image, audio, text):
        ledger.add(slot)
    assert text.reserved_for_others == 4 * 2**30
    assert image.reserved_for_others == 2**30  # a runtime's own budget is not set aside from itself
    assert kv_budget(free=10 * 2**30, reserved=4 * 2**30, fraction=0.5) == 3 * 2**30
    assert kv_budget(free=2**30, reserved=4 * 2**30, fraction=0.5) == 0
    with pytest.raises(ValueError, match="not on the group's"):
        ledger.add(RuntimeSlot("g", "image", torch.device("cuda", 0)))


@pytest.fixture(scope="module")
def group(
    tiny_model: Path, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """A real `ember worker gpu` process serving three models; yields (gateway url, its log, the process). SIGTERM
    stops it cleanly at the end."""
    root = tmp_path_factory.mktemp("group")
    config = write_config(
        root / "ember.toml",
        {
            TEXT: {"path": str(tiny_model), "device": "cpu", "max_batch": 2, "kv_cache_fraction": KV_FRACTION},
            IMAGE: {
                "modality": "image",
                "path": str(write_tiny_pixel(root / "pixel")),
                "device": "cpu",
                "memory_budget_bytes": IMAGE_BUDGET,
            },
            AUDIO: {"modality": "audio", "path": str(write_tiny_whisper(root / "tiny.pt")), "device": "cpu"},
        },
        audio={"beam_size": 1, "best_of": 1},
        auth={"enabled": False},
    )
    gw = GatewayThread(load_settings(config), nats_url).start()
    log = root / "group.log"
    proc = start_group(config, [TEXT, IMAGE, AUDIO], nats_url, log=log)
    try:
        for model in (TEXT, IMAGE, AUDIO):
            try:
                wait_for_model(gw.url, model, timeout=120)
            except TimeoutError:
                raise RuntimeError(log.read_text()[-4000:]) from None
        yield gw.url, log, proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-4000:]
        assert "Traceback" not in log.read_text(), log.read_text()[-4000:]
    finally:
        children.stop(proc, 15)
        gw.stop()


def child_processes(pid: int) -> list[str]:
    return [c for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def test_one_process_serves_every_model(group: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    base, log, proc = group
    chat = httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": TEXT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=60,
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["usage"]["completion_tokens"] >= 1
    image = httpx.post(
        f"{base}/v1/images/generations",
        json={"model": IMAGE, "prompt": "a red square", "num_inference_steps": 2, "response_format": "b64_json"},
        timeout=60,
    )
    assert image.status_code == 200, image.text
    assert image.json()["data"][0]["b64_json"]
    speech = httpx.post(
        f"{base}/v1/audio/transcriptions",
        files={"file": ("a.wav", tone_wav(1.0), "audio/wav")},
        data={"model": AUDIO},
        timeout=60,
    )
    assert speech.status_code == 200, speech.text
    # Three workers, each with its own id, all announced by the one process, which started no other.
    workers = {r.headers["x-ember-worker"] for r in (chat, image, speech)}
    assert len(workers) == 3
    ready = [line for line in log.read_text().splitlines() if line.startswith("ember worker: ")]
    assert all(any(f"({w})" in line for line in ready) for w in workers), ready
    assert child_processes(proc.pid) == []


def test_metrics_show_each_models_share(group: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    base, log, _ = group
    samples = scrape(base)
    for model in (TEXT, IMAGE, AUDIO):
        assert total(samples, "ember_runtime_memory_bytes", model=model, part="load") > 0, model
    kv = total(samples, "ember_runtime_memory_bytes", model=TEXT, part="kv_cache")
    assert kv > 0
    assert total(samples, "ember_runtime_memory_bytes", model=IMAGE, part="kv_cache") == 0
    # The KV cache is its fraction of what was free, less the image model's budget.
    with open("/proc/meminfo") as f:
        mem_total = int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) * 1024
    assert kv <= KV_FRACTION * (mem_total - IMAGE_BUDGET)
    assert total(samples, "ember_runtime_memory_budget_bytes", model=IMAGE) == IMAGE_BUDGET
    reclaimed = [labels for (name, labels) in samples if name == "ember_runtime_kv_reclaimed_bytes_total"]
    assert len(reclaimed) == 3  # one per model: nothing ran out of memory, nothing was given back
    assert total(samples, "ember_runtime_kv_reclaimed_bytes_total") == 0
    # The device as a whole, reported by one of the three workers only.
    device = [labels for (name, labels) in samples if name == "ember_device_memory_bytes"]
    assert len(device) == 1 and ("kind", "free") in device[0]
    assert "KV cache" in log.read_text()


def test_a_model_that_fails_to_load_fails_the_group(tmp_path: Path, nats_url: str) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    config = write_config(
        tmp_path / "ember.toml",
        {
            "ok-image": {"modality": "image", "path": str(write_tiny_pixel(tmp_path / "pixel")), "device": "cpu"},
            "broken": {"path": str(broken), "device": "cpu"},
        },
    )
    log = tmp_path / "group.log"
    proc = start_group(config, ["broken", "ok-image"], nats_url, log=log)
    try:
        code = proc.wait(timeout=120)
    finally:
        children.stop(proc, 5)
    printed = log.read_text()
    assert code == 1, printed
    assert "ember worker gpu: model 'broken' failed: " in printed and "is not a readable GGUF file" in printed
    assert "Traceback" not in printed
    # The image model loaded first (text models load last) but never served: a group serves all its models or none.
    assert "ok-image" not in "".join(line for line in printed.splitlines() if "ready" in line)


def test_serve_runs_a_device_group_as_one_process(tiny_model: Path, tmp_path: Path) -> None:
    """`ember serve` with two models naming one device_group: one `ember worker gpu` child serves both."""
    port = free_port()
    config = write_config(
        tmp_path / "ember.toml",
        {
            "first": {"path": str(tiny_model), "device": "cpu", "max_batch": 2, "device_group": "box"},
            "second": {"path": str(tiny_model), "device": "cpu", "max_batch": 2, "device_group": "box"},
        },
        gateway={"port": port},
        nats={"port": 0, "data_dir": str(tmp_path / "nats-data")},
        functions={"builtins": False},
    )
    serve = ServeProcess(config)
    try:
        serve.wait_for_line("all models ready", timeout=90)
        printed = serve.output()
        assert "model 'first' ready" in printed and "model 'second' ready" in printed
        workers = [pid for pid in serve.children() if "\0worker\0" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(workers) == 1
        cmdline = Path(f"/proc/{workers[0]}/cmdline").read_text().split("\0")
        assert cmdline[cmdline.index("worker") + 1] == "gpu"
        for model in ("first", "second"):
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
                timeout=60,
            )
            assert r.status_code == 200, r.text
    finally:
        code = serve.interrupt()
    assert code == 0


def test_a_grouped_model_has_one_worker(tmp_path: Path) -> None:
    config = write_config(tmp_path / "ember.toml", {"m": {"path": str(tmp_path), "device_group": "g", "workers": 2}})
    with pytest.raises(ConfigError, match="one worker"):
        load_settings(config)
