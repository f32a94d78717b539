"""The admin API: issue, list, revoke and re-tier API keys over HTTP.

Every route wants ``Authorization: Bearer <auth.admin_key>``; with no admin key configured the whole API is off
(403), and a wrong or missing one gets 401. API keys do not open it, and it does not need one.

POST   /v1/admin/keys         {"tier", "name"?, "scopes"?}   201, the key and its secret (shown this once)
GET    /v1/admin/keys                                        the keys, revoked ones included, oldest first
GET    /v1/admin/keys/{id}
PATCH  /v1/admin/keys/{id}    {"tier"}                       move a key to another tier
DELETE /v1/admin/keys/{id}                                   revoke it (for good); returns it as revoked
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ember.auth.keys import MAX_NAME_CHARS, MAX_SCOPES, ApiKey, check_scopes
from ember.config import ConfigError
from ember.gateway.auth import bearer_token, key_store
from ember.gateway.errors import AuthenticationError, InvalidRequest, NotFound, PermissionDenied
from ember.gateway.routes.common import parse_body, settings


class CreateKey(BaseModel):
    """POST /v1/admin/keys."""

    model_config = ConfigDict(extra="forbid")
    tier: str = Field(min_length=1)
    name: str = Field(default="", max_length=MAX_NAME_CHARS)
    scopes: list[str] = Field(default_factory=list, max_length=MAX_SCOPES)


class UpdateKey(BaseModel):
    """PATCH /v1/admin/keys/{id}."""

    model_config = ConfigDict(extra="forbid")
    tier: str = Field(min_length=1)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def require_admin(request: Request) -> None:
    """401/403 unless the request carries the configured admin key."""
    admin_key = settings(request).auth.admin_key
    if admin_key is None:
        raise PermissionDenied(
            "the admin API is disabled: set auth.admin_key (EMBER_AUTH__ADMIN_KEY) to enable it", code="admin_disabled"
        )
    # Comparing digests keeps the time independent of the length of either value, and of non-ASCII input.
    if not hmac.compare_digest(_digest(bearer_token(request.scope) or ""), _digest(admin_key)):
        raise AuthenticationError("Incorrect admin key provided.", code="invalid_admin_key")


def _check_tier(request: Request, tier: str) -> None:
    try:
        settings(request).tier(tier)
    except ConfigError as e:
        raise InvalidRequest(str(e), code="unknown_tier", param="tier") from None


def key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "object": "api_key",
        "id": key.id,
        "name": key.name,
        "tier": key.tier,
        "scopes": list(key.scopes),
        "prefix": key.prefix,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
    }


def _found(key: ApiKey | None, key_id: str) -> ApiKey:
    if key is None:
        raise NotFound(f"no API key has the id {key_id!r}", code="key_not_found")
    return key


async def create_key(request: Request) -> Response:
    require_admin(request)
    body = await parse_body(request, CreateKey)
    _check_tier(request, body.tier)
    try:
        scopes = check_scopes(tuple(body.scopes))
    except ValueError as e:
        raise InvalidRequest(str(e), code="invalid_value", param="scopes") from None
    key, secret = await key_store(request.app).create(body.tier, name=body.name, scopes=scopes)
    # The secret is in this response and nowhere else; ask caches not to keep it either.
    return JSONResponse({**key_json(key), "secret": secret}, status_code=201, headers={"cache-control": "no-store"})


async def list_keys(request: Request) -> Response:
    require_admin(request)
    keys = await key_store(request.app).list()
    return JSONResponse({"object": "list", "data": [key_json(k) for k in keys]})


async def retrieve_key(request: Request) -> Response:
    require_admin(request)
    key_id = request.path_params["key_id"]
    return JSONResponse(key_json(_found(await key_store(request.app).get(key_id), key_id)))


async def update_key(request: Request) -> Response:
    require_admin(request)
    key_id = request.path_params["key_id"]
    body = await parse_body(request, UpdateKey)
    _check_tier(request, body.tier)
    return JSONResponse(key_json(_found(await key_store(request.app).set_tier(key_id, body.tier), key_id)))


async def revoke_key(request: Request) -> Response:
    require_admin(request)
    key_id = request.path_params["key_id"]
    return JSONResponse(key_json(_found(await key_store(request.app).revoke(key_id), key_id)))


def routes() -> list[BaseRoute]:
    """The admin API's routes, for the app's route list."""
    return [
        Route("/v1/admin/keys", create_key, methods=["POST"]),
        Route("/v1/admin/keys", list_keys, methods=["GET"]),
        Route("/v1/admin/keys/{key_id}", retrieve_key, methods=["GET"]),
        Route("/v1/admin/keys/{key_id}", update_key, methods=["PATCH"]),
        Route("/v1/admin/keys/{key_id}", revoke_key, methods=["DELETE"]),
    ]
