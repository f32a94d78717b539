"""The gateway's side of API keys, through a real Starlette app with the real middleware, routes and store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ember.auth.keys import new_secret
from ember.auth.nats_kv import NatsKeyStore
from ember.config import Settings
from ember.gateway import app as ember_app
from ember.gateway.auth import current_key
from ember.gateway.routes import admin, health
from ember.gateway.state import GatewayState

ADMIN = "admin-" + "s3cret" * 4

Client = Callable[..., Awaitable[httpx.AsyncClient]]


async def whoami(request: Request) -> Response:
    key = current_key(request)
    return JSONResponse({"id": key.id, "tier": key.tier, "scopes": list(key.scopes)})


async def ready(request: Request) -> Response:
    return JSONResponse({"status": "ready"})


def gateway_app(settings: Settings, store: NatsKeyStore | None) -> Starlette:
    """The gateway's middleware and error handling as app.py sets them up, with a route that shows the key."""
    app = Starlette(
        routes=[
            Route("/healthz", health.healthz, methods=["GET"]),
            Route("/readyz", ready, methods=["GET"]),  # the real one needs the bus; the middleware goes by path
            Route("/v1/whoami", whoami, methods=["GET", "POST"]),
            *admin.routes(),
        ],
        middleware=ember_app.middleware(settings),
        exception_handlers=ember_app.EXCEPTION_HANDLERS,
    )
    app.state.gateway = GatewayState(settings, frozenset(), key_store=store)
    return app


@pytest.fixture
async def client(store: NatsKeyStore) -> AsyncIterator[Client]:
    """``await client(**auth_settings)``: an httpx client on a gateway app with those auth settings."""
    opened: list[httpx.AsyncClient] = []

    async def make(*, with_store: bool = True, **auth: Any) -> httpx.AsyncClient:
        settings = Settings(auth={"enabled": True, "admin_key": ADMIN, **auth})
        app = gateway_app(settings, store if with_store else None)
        c = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")
        opened.append(c)
        return c

    yield make
    for c in opened:
        await c.aclose()


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def as_admin(key: str = ADMIN) -> dict[str, str]:
    return bearer(key)


async def test_a_live_key_gets_in_and_lands_on_request_state(client: Client, store: NatsKeyStore) -> None:
    c = await client()
    key, secret = await store.create("developer", scopes=("chat",))
    r = await c.get("/v1/whoami", headers=bearer(secret))
    assert r.status_code == 200 and r.json() == {"id": key.id, "tier": "developer", "scopes": ["chat"]}
    assert (await c.get("/v1/whoami", headers={"authorization": f"bearer   {secret} "})).status_code == 200


async def test_every_refusal_is_the_same_401(client: Client, store: NatsKeyStore) -> None:
    c = await client()
    revoked, revoked_secret = await store.create("free")
    await store.revoke(revoked.id)
    cases = {
        "missing": {},
        "empty bearer": {"authorization": "Bearer "},
        "wrong scheme": {"authorization": f"Basic {revoked_secret}"},
        "malformed": bearer("sk-not-an-ember-key"),
        "admin key": bearer(ADMIN),
        "unknown": bearer(new_secret()),
        "revoked": bearer(revoked_secret),
    }
    replies = {name: await c.post("/v1/whoami", headers=headers, json={"x": 1}) for name, headers in cases.items()}
    first = replies["missing"]
    assert first.status_code == 401
    assert first.json() == {
        "error": {
            "message": "Incorrect API key provided. Send a valid Ember key as 'Authorization: Bearer em_...'.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    for name, r in replies.items():
        assert r.status_code == 401, name
        assert r.content == first.content, name
        assert r.headers["x-request-id"].startswith("req_"), name
        assert {k: v for k, v in r.headers.items() if k != "x-request-id"} == {
            k: v for k, v in first.headers.items() if k != "x-request-id"
        }, name
    # The client's own request id comes back on a refusal too.
    assert (await c.get("/v1/whoami", headers={"x-request-id": "mine-1"})).headers["x-request-id"] == "mine-1"


async def test_health_and_readiness_stay_open(client: Client) -> None:
    c = await client()
    assert (await c.get("/healthz")).json() == {"status": "ok"}
    assert (await c.get("/readyz")).status_code == 200
    assert (await c.get("/v1/unknown")).status_code == 401  # anything else needs a key, even to learn it is a 404


async def test_dev_mode_lets_everyone_in_as_the_anonymous_tier(client: Client) -> None:
    c = await client(enabled=False, anonymous_tier="pro", with_store=False)
    for headers in ({}, bearer("garbage"), bearer(new_secret())):
        r = await c.get("/v1/whoami", headers=headers)
        assert r.status_code == 200 and r.json() == {"id": "key_anonymous", "tier": "pro", "scopes": []}


async def test_no_store_is_503_not_a_crash(client: Client) -> None:
    c = await client(with_store=False)
    r = await c.get("/v1/whoami", headers=bearer(new_secret()))
    assert r.status_code == 503 and r.json()["error"]["code"] == "key_store_unavailable" and r.headers["x-request-id"]


async def test_the_admin_api_issues_shows_retiers_and_revokes_keys(client: Client) -> None:
    c = await client()
    r = await c.post("/v1/admin/keys", headers=as_admin(), json={"tier": "free", "name": "ci", "scopes": ["chat"]})
    assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
    made = r.json()
    secret = made.pop("secret")
    key_id = made["id"]
    assert made == {
        "object": "api_key",
        "id": key_id,
        "name": "ci",
        "tier": "free",
        "scopes": ["chat"],
        "prefix": secret[:11],
        "created_at": made["created_at"],
        "revoked_at": None,
    }
    assert (await c.get("/v1/whoami", headers=bearer(secret))).json()["tier"] == "free"

    listed = await c.get("/v1/admin/keys", headers=as_admin())
    assert listed.status_code == 200 and listed.json() == {"object": "list", "data": [made]}
    assert secret not in listed.text and "secret" not in listed.text
    assert (await c.get(f"/v1/admin/keys/{key_id}", headers=as_admin())).json() == made

    patched = await c.patch(f"/v1/admin/keys/{key_id}", headers=as_admin(), json={"tier": "enterprise"})
    assert patched.status_code == 200 and patched.json()["tier"] == "enterprise"
    assert (await c.get("/v1/whoami", headers=bearer(secret))).json()["tier"] == "enterprise"

    revoked = await c.delete(f"/v1/admin/keys/{key_id}", headers=as_admin())
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert (await c.get("/v1/whoami", headers=bearer(secret))).status_code == 401
    again = await c.delete(f"/v1/admin/keys/{key_id}", headers=as_admin())
    assert again.status_code == 200 and again.json() == revoked.json()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "param"),
    [
        ("POST", "/v1/admin/keys", {"tier": "platinum"}, 400, "unknown_tier", "tier"),
        ("POST", "/v1/admin/keys", {"tier": "free", "bogus": 1}, 400, "invalid_value", "bogus"),
        ("POST", "/v1/admin/keys", {"name": "x"}, 400, "invalid_value", "tier"),
        ("POST", "/v1/admin/keys", {"tier": "free", "scopes": ["has space"]}, 400, "invalid_value", "scopes"),
        ("POST", "/v1/admin/keys", {"tier": "free", "name": "x" * 129}, 400, "invalid_value", "name"),
        ("POST", "/v1/admin/keys", [1], 400, "invalid_json", None),
        ("GET", "/v1/admin/keys/key_000000000000", None, 404, "key_not_found", None),
        ("GET", "/v1/admin/keys/not-an-id", None, 404, "key_not_found", None),
        ("DELETE", "/v1/admin/keys/key_000000000000", None, 404, "key_not_found", None),
        ("PATCH", "/v1/admin/keys/key_000000000000", {"tier": "pro"}, 404, "key_not_found", None),
        ("PATCH", "/v1/admin/keys/key_000000000000", {"tier": "platinum"}, 400, "unknown_tier", "tier"),
        ("PATCH", "/v1/admin/keys/key_000000000000", {}, 400, "invalid_value", "tier"),
        ("PUT", "/v1/admin/keys/key_000000000000", {}, 405, "method_not_allowed", None),
    ],
)
async def test_admin_api_errors(
    client: Client, method: str, path: str, body: Any, status: int, code: str, param: str | None
) -> None:
    c = await client()
    r = await c.request(method, path, headers=as_admin(), json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code and error["param"] == param
    assert r.headers["x-request-id"]


async def test_the_admin_api_needs_the_admin_key(client: Client, store: NatsKeyStore) -> None:
    c = await client()
    _, api_secret = await store.create("enterprise")
    for headers in ({}, as_admin("wrong"), as_admin(ADMIN + "x"), as_admin(ADMIN[:-1]), bearer(api_secret)):
        for method, path in (("GET", "/v1/admin/keys"), ("POST", "/v1/admin/keys"), ("DELETE", "/v1/admin/keys/x")):
            r = await c.request(method, path, headers=headers, json={"tier": "free"})
            assert r.status_code == 401, (headers, method, path)
            assert r.json()["error"]["code"] == "invalid_admin_key"
    latin1 = {"authorization": f"Bearer {ADMIN}é".encode("latin-1")}  # not ASCII: still a plain 401
    assert (await c.get("/v1/admin/keys", headers=latin1)).status_code == 401


async def test_the_admin_api_is_off_without_an_admin_key(client: Client) -> None:
    c = await client(admin_key=None)
    for headers in ({}, as_admin()):
        r = await c.post("/v1/admin/keys", headers=headers, json={"tier": "free"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"
        assert "EMBER_AUTH__ADMIN_KEY" in r.json()["error"]["message"]
