"""What an API key is: the secret a client holds, the record a store keeps, and the crypto between them.

A secret looks like ``em_`` followed by 43 base62 characters (32 random bytes, 256 bits). Stores keep only its
SHA-256 (``hash_secret``): with that much entropy a salt or a slow hash adds nothing, and a fast hash lets every
gateway check a key without a round trip. The secret itself is shown once, when the key is created, and never
stored or logged; ``prefix`` (the first characters) is what lists show so a person can tell keys apart.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

SECRET_PREFIX = "em_"
_SECRET_BYTES = 32
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# 62**43 > 2**256, so 43 base62 digits hold any 32-byte value; shorter values are left-padded with "0".
_SECRET_CHARS = 43
_SECRET = re.compile(rf"^{SECRET_PREFIX}[0-9A-Za-z]{{{_SECRET_CHARS}}}$")
# How much of the secret lists show: 8 base62 characters (~48 bits) of 256, enough to tell keys apart.
_PREFIX_CHARS = 8

KEY_ID = re.compile(r"^key_[0-9a-f]{12}$")
# Scopes are labels for now ("chat", "images:write"); nothing enforces them yet.
SCOPE = re.compile(r"^[A-Za-z0-9_.:*-]{1,64}$")
MAX_SCOPES = 32
MAX_NAME_CHARS = 128


@dataclass(frozen=True)
class ApiKey:
    """One key as stores and gateways see it: everything but the secret."""

    id: str  # "key_" + 12 hex digits; what the CLI and the admin API address a key by
    name: str  # the operator's label, free text; may be empty
    tier: str  # a name in Settings.tiers (checked by whoever sets it, not by the store)
    scopes: tuple[str, ...]
    created_at: int  # unix seconds
    revoked_at: int | None  # unix seconds; None while the key works
    prefix: str  # "em_" + the secret's first characters, for display

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def new_secret() -> str:
    """A fresh secret: ``em_`` + 32 random bytes in base62."""
    n = int.from_bytes(secrets.token_bytes(_SECRET_BYTES), "big")
    digits = []
    for _ in range(_SECRET_CHARS):
        n, d = divmod(n, 62)
        digits.append(_ALPHABET[d])
    return SECRET_PREFIX + "".join(reversed(digits))


def new_key_id() -> str:
    return f"key_{secrets.token_hex(6)}"


def well_formed(secret: str) -> bool:
    """Whether ``secret`` has the shape of an Ember secret (not whether any store knows it)."""
    return _SECRET.match(secret) is not None


def hash_secret(secret: str) -> str:
    """The SHA-256 of a secret, in hex: what stores keep and look keys up by."""
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    return secret[: len(SECRET_PREFIX) + _PREFIX_CHARS]


def check_scopes(scopes: tuple[str, ...]) -> tuple[str, ...]:
    """``scopes`` without duplicates, in order; ValueError naming the first bad one."""
    if len(scopes) > MAX_SCOPES:
        raise ValueError(f"{len(scopes)} scopes is more than the limit of {MAX_SCOPES}")
    for scope in scopes:
        if not SCOPE.match(scope):
            raise ValueError(f"scope {scope!r} is not 1-64 of A-Z a-z 0-9 _ . : * -")
    return tuple(dict.fromkeys(scopes))


def now() -> int:
    return int(time.time())


def anonymous_key(tier: str) -> ApiKey:
    """The key that requests carry when ``auth.enabled`` is false (dev mode)."""
    return ApiKey(id="key_anonymous", name="anonymous", tier=tier, scopes=(), created_at=0, revoked_at=None, prefix="")
