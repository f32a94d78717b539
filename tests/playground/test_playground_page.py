"""The playground's files as the gateway serves them, in-process: no key needed, a strict CSP, nothing from elsewhere,
and every file shipped in the wheel."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from ember.config import Settings
from ember.gateway.app import create_app
from ember.gateway.routes import playground

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "platform" / "gateway" / "playground"


@pytest.fixture
def client() -> Iterator[TestClient]:
    """The real app with API keys on; its lifespan (NATS) is not started, which these routes do not need."""
    app = create_app(Settings(auth={"enabled": True}), "nats://127.0.0.1:1")
    yield TestClient(app)


def test_the_page_needs_no_key_and_forbids_everything_from_elsewhere(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    csp = dict(d.strip().split(" ", 1) for d in r.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == csp["script-src"] == csp["style-src"] == csp["connect-src"] == "'self'"
    # Generated images and audio are shown from data: and blob: URLs that the page makes itself.
    assert csp["img-src"] == csp["media-src"] == "'self' data: blob:"
    assert csp["object-src"] == csp["base-uri"] == csp["frame-ancestors"] == "'none'"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/playground/app.js">' in r.text
    # The API itself still wants a key: only the static files are open.
    assert client.get("/v1/models").status_code == 401


@pytest.mark.parametrize(
    ("name", "media"), [("app.js", "text/javascript; charset=utf-8"), ("style.css", "text/css; charset=utf-8")]
)
def test_assets_are_served_with_their_types_and_the_same_policy(client: TestClient, name: str, media: str) -> None:
    r = client.get(f"/playground/{name}")
    assert r.status_code == 200 and r.headers["content-type"] == media
    assert r.content == (FOLDER / name).read_bytes()
    assert r.headers["content-security-policy"] == playground.CSP


def test_only_the_pages_files_are_served(client: TestClient) -> None:
    for path in ("/playground/nope.js", "/playground/..%2Fapp.py", "/playground/", "/playground/%2e%2e"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_the_page_loads_nothing_from_elsewhere() -> None:
    for name in playground.FILES:
        text = (FOLDER / name).read_text()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), name
        assert not re.search(r"""(fetch|import)\s*\(\s*["'`](https?:)?//""", text), name
        assert "@import" not in text and "url(" not in text, name
        # No inline script or style: the CSP would refuse them.
        if name == "index.html":
            assert "<style" not in text and " style=" not in text
            assert not re.search(r"<[^>]*\son[a-z]+\s*=", text), "an inline event handler"
            assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", text))


def test_every_file_of_the_folder_is_served_and_shipped() -> None:
    on_disk = {p.name for p in FOLDER.iterdir() if p.is_file()}
    assert on_disk == set(playground.FILES)
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    globs = package_data["ember.gateway"]
    assert all(any(fnmatch.fnmatch(f"playground/{name}", g) for g in globs) for name in on_disk)
