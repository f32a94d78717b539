"""API keys at the gateway: a pure ASGI middleware that lets a request in only with a live key.

Where it sits: inside ``RequestIdMiddleware`` (so a 401 carries ``x-request-id``) and outside the body limit and
the routes (so a request without a key is refused before its body is read)::

    RequestMetricsMiddleware -> RequestIdMiddleware -> AuthMiddleware -> BodyLimitMiddleware -> routes

What it does with ``Authorization: Bearer <secret>``:

- ``/healthz``, ``/readyz``, ``/metrics`` and the admin API (``/v1/admin/...``, which checks the admin key itself)
  pass as they are;
- so do ``/`` and ``/playground/...``, the web playground's static files (the page sends the key itself);
- every other request needs a live key: no header, a malformed secret, an unknown one and a revoked one all get
  the same 401, byte for byte, so a caller learns nothing about which keys exist;
- a good key lands on ``request.state.api_key`` (an ``ApiKey``) for the routes and the rate limiter;
- the admin key (``auth.admin_key``) also opens the files and batches of every key, to read, cancel and delete
  (``request.state.admin``); those routes refuse it what only a tenant does (uploading, creating a batch);
- with ``auth.enabled = false`` nothing is checked and every request carries ``anonymous_key(auth.anonymous_tier)``.

The key store is the ``GatewayState``'s, which the app's lifespan starts (it needs the NATS connection), so the
middleware finds it per request, as the routes find the job bus. ``KeyStore.authenticate`` answers from
memory, so this adds no network round trip to a request.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ember.auth.interface import KeyStore
from ember.auth.keys import ApiKey, anonymous_key
from ember.config import Settings
from ember.gateway.errors import AuthenticationError, ServiceUnavailable, error_response

# /metrics is for the operator's scraper, like the health checks: keep it off the public network.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/"})
# Images served for response_format=url: the random name in the URL is the credential, like a signed URL.
# The playground's static files (/ and /playground/...) hold no data: the page asks for a key and sends it itself.
OPEN_PREFIXES = ("/v1/images/files/", "/playground/")
ADMIN_PREFIX = "/v1/admin"
# Admin routes outside /v1/admin (OpenAI-style names); like those, they check the admin key themselves.
ADMIN_PATHS = frozenset({"/v1/usage"})
# The ASGI scope entry that marks a request made inside the gateway process for a key already resolved (a batch
# line, ``ember.batches.line_call``); an HTTP client cannot set scope entries, only headers.
INTERNAL = "ember.internal"
# Where the admin key may act on every key's data (see ``is_admin``).
ADMIN_READABLE = ("/v1/files", "/v1/batches")
ADMIN = ApiKey(id="admin", name="admin", tier="", scopes=(), created_at=0, revoked_at=None, prefix="")

# One message for every refusal: which of "missing", "malformed", "unknown" and "revoked" it was is not said.
INVALID_KEY_MESSAGE = "Incorrect API key provided. Send a valid Ember key as 'Authorization: Bearer em_...'."


def bearer_token(scope: Scope) -> str | None:
    """The credentials of the first ``Authorization: Bearer ...`` header, or None."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def key_store(app: object) -> KeyStore:
    """The app's running key store (503 if the app has none: auth is on but the store did not start)."""
    from ember.gateway.state import gateway_state  # state.py imports what imports this module

    store = gateway_state(app).key_store
    if store is None:
        raise ServiceUnavailable("the API key store is not running", code="key_store_unavailable")
    return store


def current_key(request: Request) -> ApiKey:
    """The key a request was let in with (the anonymous one when auth is off)."""
    key: ApiKey = request.state.api_key
    return key


def is_admin(request: Request) -> bool:
    """Whether the request came with the admin key, on a route that lets it see every key's files and batches."""
    return bool(getattr(request.state, "admin", False))


def _is_admin_key(secret: str | None, admin_key: str | None) -> bool:
    if secret is None or admin_key is None:
        return False
    return hmac.compare_digest(hashlib.sha256(secret.encode()).digest(), hashlib.sha256(admin_key.encode()).digest())


def _is_open(path: str) -> bool:
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return True
    return path in OPEN_PATHS or path in ADMIN_PATHS or path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


class AuthMiddleware:
    """Refuse requests without a live API key with 401; put the key on ``request.state.api_key``."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.enabled = settings.auth.enabled
        self.anonymous = anonymous_key(settings.auth.anonymous_tier)
        self.admin_key = settings.auth.admin_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        secret = bearer_token(scope)
        if scope.get(INTERNAL) and "api_key" in state:
            pass  # a call made inside this process (a batch line) for the key it runs under
        elif scope["path"].startswith(ADMIN_READABLE) and _is_admin_key(secret, self.admin_key):
            state["admin"] = True
            state["api_key"] = ADMIN
        elif not self.enabled:
            state["api_key"] = self.anonymous
        elif not _is_open(scope["path"]):
            try:
                key = None if secret is None else await key_store(scope.get("app")).authenticate(secret)
            except ServiceUnavailable as e:  # out here the app's exception handlers do not apply
                await error_response(e, state.get("request_id"))(scope, receive, send)
                return
            if key is None:
                error = AuthenticationError(INVALID_KEY_MESSAGE)
                await error_response(error, state.get("request_id"))(scope, receive, send)
                return
            state["api_key"] = key
        await self.app(scope, receive, send)
