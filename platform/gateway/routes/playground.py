"""GET / and /playground/{name}: the web playground, static files shipped in the package (``ember/gateway/playground``).

The page is plain HTML, CSS and one JavaScript module with no build step. It calls only the public API on its own
origin, with the API key the user typed (kept in the browser's localStorage, never sent anywhere else), so whatever
it does, curl can. These routes need no key (``ember.gateway.auth`` lets them through): the page holds no data.

Every response carries a Content-Security-Policy that loads nothing from elsewhere: scripts, styles and requests
go to this origin only; images and audio may also be ``data:`` and ``blob:`` URLs, which the page makes from the
API's base64 images and audio bytes in the browser.
"""

from __future__ import annotations

import functools
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from ember.gateway.errors import NotFound

# The files the page is made of, with their media types; nothing else under the folder is served.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' data: blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # Small files: the browser revalidates on each load, so an upgraded gateway is never served a stale page.
    "cache-control": "no-cache",
}


@functools.cache
def _read(name: str) -> bytes:
    """One of the page's files, from the installed package (read once per process)."""
    return (resources.files("ember.gateway") / "playground" / name).read_bytes()


def _file(name: str) -> Response:
    if name not in FILES:
        raise NotFound(f"the playground has no file {name!r}", code="not_found")
    return Response(_read(name), media_type=FILES[name], headers=HEADERS)


async def index(request: Request) -> Response:
    return _file("index.html")


async def asset(request: Request) -> Response:
    return _file(request.path_params["name"])
