"""The web playground in a real browser: Playwright drives the system's headless Chromium against a real stack on
loopback (the session's gateway and tiny-llama worker, plus the shipped image, Whisper and piper models), the way a
user would: chat and see the answer stream in, call a tool, generate an image, transcribe a clip (uploaded and
recorded), hear speech, and watch the metrics move.

Each view is saved as a screenshot in ``$EMBER_SCREENSHOTS`` (else a temporary folder, printed) for the closing
note. Without Playwright or a Chromium this module skips, saying so loudly; ``scripts/setup.sh`` installs both
where it can.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ember.config import DEFAULT_AUDIO_MODEL, DEFAULT_IMAGE_MODEL, DEFAULT_SPEECH_MODEL
from tests.conftest import TINY
from tests.helpers.cluster import GatewayThread, start_worker, stop_process, wait_for_model, write_config
from tests.helpers.speech import SHORT, speak, word_error_rate

pytestmark = pytest.mark.slow

# Generous: two shared CPU cores, and other test runs beside this one.
WAIT_MS = 90_000
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
]


def chromium_path() -> str | None:
    """The system's Chromium (Debian's `chromium`, Ubuntu's `chromium-browser`), or $EMBER_CHROMIUM."""
    for candidate in (os.environ.get("EMBER_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


def skip_loudly(reason: str) -> None:
    print(f"\n{'!' * 100}\nPLAYGROUND BROWSER TEST SKIPPED: {reason}\n{'!' * 100}", file=sys.stderr)
    pytest.skip(f"PLAYGROUND BROWSER TEST SKIPPED: {reason}")


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("EMBER_SCREENSHOTS") or tmp_path_factory.mktemp("playground-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nplayground screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def stack(
    tiny_worker: str, gateway: GatewayThread, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The session's gateway (dev mode) with tiny-llama, and the default image, audio and speech models' workers,
    started together; yields the gateway's URL."""
    root = tmp_path_factory.mktemp("playground-stack")
    models = {DEFAULT_IMAGE_MODEL: "image", DEFAULT_AUDIO_MODEL: "audio", DEFAULT_SPEECH_MODEL: "speech"}
    config = write_config(root / "ember.toml", {m: {} for m in models})
    procs = {m: start_worker(config, m, nats_url, log=root / f"{m}.log", modality=kind) for m, kind in models.items()}
    try:
        for model in models:
            try:
                wait_for_model(gateway.url, model, timeout=300)
            except TimeoutError:
                raise RuntimeError(f"{model} did not come up:\n{(root / f'{model}.log').read_text()[-4000:]}") from None
        yield gateway.url
    finally:
        for proc in procs.values():
            stop_process(proc)


@pytest.fixture(scope="module")
def clip() -> Path:
    """A WAV of SHORT spoken by piper (whisper-tiny.en hears it word for word)."""
    return speak(SHORT)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium, checked for first: without one nothing else of this module starts."""
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_loudly("the playwright package is not installed (pip install -e '.[dev]')")
    if executable is None:
        skip_loudly("no Chromium on this machine (scripts/setup.sh installs Debian's `chromium` where apt-get can)")
    args = [
        # The microphone is Chromium's fake device, which plays the clip once: recording is tested without hardware.
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={speak(SHORT)}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    ]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True, args=args)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, stack: str) -> Iterator[Any]:
    context = browser.new_context(base_url=stack, viewport={"width": 1280, "height": 860})
    context.grant_permissions(["microphone"], origin=stack)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # (Chromium also logs every 4xx answer as an error: those are the API's, and the tests expect some.)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "status of 4" not in m.text else None)
    page.goto("/")
    page.wait_for_function("() => document.querySelector('#chat-model').options.length > 0")
    yield page
    context.close()
    # No script errors and nothing refused by the Content-Security-Policy, whatever the test did.
    assert errors == []


def select_model(page: Any, select: str, model: str) -> None:
    page.wait_for_function(
        "([s, m]) => [...document.querySelector(s).options].some((o) => o.value === m)", arg=[select, model]
    )
    page.select_option(select, model)


def count_mutations(page: Any, selector: str) -> None:
    """Count the changes under ``selector`` from now on, in ``window.mutations``."""
    page.evaluate(
        """(s) => { window.mutations = 0;
        new MutationObserver((l) => { window.mutations += l.length; }).observe(document.querySelector(s),
          {subtree: true, childList: true, characterData: true, attributes: true}); }""",
        selector,
    )


def test_chat_streams_the_answer_in(page: Any, screenshots: Path) -> None:
    select_model(page, "#chat-model", TINY)
    page.fill("#chat-max-tokens", "24")
    page.fill("#chat-input", "Tell me about the sea.")
    count_mutations(page, "#chat-log")
    page.click("#chat-send")
    page.wait_for_selector("#chat-stop:enabled", timeout=10_000)  # a stream is running, and can be stopped
    page.wait_for_function("() => document.querySelector('#chat-status').textContent.startsWith('done')")
    answer = page.inner_text(".message.assistant .content")
    assert answer.strip(), "no answer text"
    # It arrived in pieces: the bubble changed more than once while the stream ran.
    assert page.evaluate("() => window.mutations") > 3
    status = page.inner_text("#chat-status")
    assert re.search(r"\d+ prompt \+ \d+ completion tokens", status), status
    assert page.inner_text(".message.user .content") == "Tell me about the sea."
    assert page.is_disabled("#chat-stop") and page.is_enabled("#chat-send")
    page.screenshot(path=screenshots / "chat.png", full_page=True)


def test_chat_stop_ends_a_stream_and_errors_come_from_the_api(page: Any) -> None:
    select_model(page, "#chat-model", TINY)
    page.fill("#chat-max-tokens", "400")
    page.fill("#chat-input", "Go on and on.")
    page.click("#chat-send")
    page.wait_for_function("() => document.querySelector('.message.assistant .content')?.textContent.length > 0")
    page.click("#chat-stop")
    page.wait_for_function("() => document.querySelector('#chat-status').textContent.startsWith('stopped')")
    assert page.is_enabled("#chat-send")
    # A bad request: the API's own message is shown, with its status and code.
    page.fill("#chat-max-tokens", "100000000")
    page.fill("#chat-input", "Hello")
    page.click("#chat-send")
    page.wait_for_selector("#chat-error:not([hidden])")
    error = page.inner_text("#chat-error")
    assert error.startswith("400: ") and "max_tokens" in error, error
    # ...and a bad tools box is refused before anything is sent.
    page.click("#chat-tools-box summary")
    page.fill("#chat-tools", "[{not json")
    page.click("#chat-send")
    page.wait_for_function("() => document.querySelector('#chat-error').textContent.startsWith('Tools: not valid')")


def test_tool_calls_are_shown(page: Any, screenshots: Path) -> None:
    select_model(page, "#chat-model", TINY)
    page.click("#chat-tools-box summary")
    page.fill("#chat-tools", json.dumps(TOOLS, indent=2))
    page.select_option("#chat-tool-choice", "required")
    page.fill("#chat-max-tokens", "90")
    page.fill("#chat-input", "What is the weather in Paris?")
    page.click("#chat-send")
    page.wait_for_function("() => document.querySelector('#chat-status').textContent.startsWith('done')")
    assert page.inner_text(".tool-call .tool-name") == "get_weather"
    status = page.inner_text("#chat-status")
    if "finish: tool_calls" in status:  # the noise of a random model may run into max_tokens inside the arguments
        args = json.loads(page.inner_text(".tool-call .tool-args"))
        assert args["city"] in ("Paris", "Oslo")
    page.fill(".tool-call .tool-result", '{"temperature": 21}')
    page.screenshot(path=screenshots / "tools.png", full_page=True)
    # The result goes back as a `tool` message (the API checks it answers the call), and the model answers it.
    page.select_option("#chat-tool-choice", "none")
    page.fill("#chat-max-tokens", "8")
    page.click("#chat-send")
    page.wait_for_function("() => document.querySelectorAll('.message.assistant').length === 2")
    page.wait_for_function("() => document.querySelector('#chat-status').textContent.startsWith('done')")
    assert page.is_hidden("#chat-error") and page.is_disabled(".tool-call .tool-result")


def test_image_generation_shows_previews_then_the_image(page: Any, screenshots: Path) -> None:
    page.click("#tab-images")
    select_model(page, "#image-model", DEFAULT_IMAGE_MODEL)
    page.fill("#image-prompt", "a red circle")
    page.fill("#image-size", "128x128")
    page.fill("#image-steps", "12")
    page.fill("#image-seed", "0")
    page.fill("#image-partials", "2")
    count_mutations(page, "#image-results")
    page.click("#image-generate")
    page.wait_for_selector("figure.done img")
    img = page.evaluate(
        """() => { const i = document.querySelector('figure.done img');
        return {src: i.src, width: i.naturalWidth, height: i.naturalHeight, complete: i.complete}; }"""
    )
    assert img["src"].startswith("data:image/png;base64,") and len(img["src"]) > 200
    page.wait_for_function("() => document.querySelector('figure.done img').naturalWidth > 0")
    assert page.evaluate("() => document.querySelector('figure.done img').naturalWidth") == 128
    assert page.evaluate("() => window.mutations") >= 3  # two previews, then the image
    assert "1 of 1 image in" in page.inner_text("#image-status")
    assert "seed 0" in page.inner_text("figure.done figcaption")
    page.screenshot(path=screenshots / "images.png", full_page=True)


def test_an_uploaded_clip_is_transcribed_as_it_streams(page: Any, screenshots: Path, clip: Path) -> None:
    page.click("#tab-audio")
    select_model(page, "#transcribe-model", DEFAULT_AUDIO_MODEL)
    page.set_input_files("#transcribe-file", str(clip))
    page.click("#transcribe-send")
    page.wait_for_selector("#transcript.done")
    page.wait_for_function("() => document.querySelector('#transcribe-status').textContent.startsWith('done')")
    text = page.inner_text("#transcript")
    print(f"\nplayground transcript: {text!r}")
    assert word_error_rate(SHORT, text) <= 0.1, text
    assert page.locator("#transcript .segment").count() >= 1
    # Speech: the answer plays in an <audio> from a blob of the audio bytes.
    select_model(page, "#speech-model", DEFAULT_SPEECH_MODEL)
    page.fill("#speech-input", "The library opens at nine in the morning.")
    page.select_option("#speech-format", "wav")
    page.click("#speech-send")
    page.wait_for_selector("#speech-audio:not([hidden])")
    assert page.get_attribute("#speech-audio", "src").startswith("blob:")
    kilobytes = re.match(r"(\d+) KB of wav in", page.inner_text("#speech-status"))
    assert kilobytes and int(kilobytes.group(1)) > 10, page.inner_text("#speech-status")
    page.wait_for_function("() => document.querySelector('#speech-audio').duration > 1")
    page.screenshot(path=screenshots / "audio.png", full_page=True)


def test_a_recording_from_the_microphone_is_transcribed(page: Any) -> None:
    page.click("#tab-audio")
    select_model(page, "#transcribe-model", DEFAULT_AUDIO_MODEL)
    page.click("#transcribe-record")
    page.wait_for_function("() => document.querySelector('#transcribe-record').textContent === 'Stop recording'")
    page.wait_for_timeout(6500)  # the fake microphone plays the clip (about 5 s)
    page.click("#transcribe-record")
    page.wait_for_selector("#transcript.done")
    text = page.inner_text("#transcript")
    print(f"\nplayground transcript of the recording: {text!r}")
    assert "quick brown fox" in text.lower(), text


def test_metrics_view_shows_the_requests_rise(page: Any, screenshots: Path, stack: str) -> None:
    if httpx.get(f"{stack}/metrics", timeout=30).status_code == 404:
        page.click("#tab-metrics")
        page.wait_for_function("() => document.querySelector('#metrics-status').textContent.includes('not available')")
        pytest.skip("this gateway has no /metrics yet: the view says so")
    page.click("#tab-metrics")
    page.wait_for_function("() => /^\\d+$/.test(document.querySelector('#metric-requests').textContent)")
    before = int(page.inner_text("#metric-requests"))
    # A chat from the page itself...
    page.click("#tab-chat")
    select_model(page, "#chat-model", TINY)
    page.fill("#chat-max-tokens", "16")
    page.fill("#chat-input", "Count to three.")
    page.click("#chat-send")
    page.wait_for_function("() => document.querySelector('#chat-status').textContent.startsWith('done')")
    # ...shows in the counter, and as a rate once two scrapes have seen it.
    page.click("#tab-metrics")
    page.wait_for_function(f"() => Number(document.querySelector('#metric-requests').textContent) > {before}")
    page.wait_for_function("() => /^\\d+\\.\\d+$/.test(document.querySelector('#metric-rps').textContent)")
    page.wait_for_function(f"() => document.querySelector('#metrics-models').textContent.includes('{TINY}')")
    page.wait_for_function("() => Number(document.querySelector('#metrics-chart').dataset.points) >= 3")
    page.screenshot(path=screenshots / "metrics.png", full_page=True)


def test_the_api_key_stays_in_the_browser_and_goes_with_every_call(page: Any) -> None:
    sent: list[str | None] = []
    page.on("request", lambda r: sent.append(r.headers.get("authorization")) if "/v1/" in r.url else None)
    page.fill("#api-key", "em_playground_test")
    page.dispatch_event("#api-key", "change")  # saves it and lists the models again, with the key
    page.wait_for_function("() => localStorage.getItem('ember.apiKey') === 'em_playground_test'")
    page.reload()
    assert page.input_value("#api-key") == "em_playground_test"
    page.wait_for_function("() => document.querySelector('#chat-model').options.length > 0")
    assert sent and sent[-1] == "Bearer em_playground_test"
    page.click("#api-key-forget")
    assert page.evaluate("() => localStorage.getItem('ember.apiKey')") is None
