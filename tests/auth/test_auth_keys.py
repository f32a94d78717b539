"""The secret's format and the crypto around it: no NATS needed."""

from __future__ import annotations

import hashlib

import pytest

from ember.auth.keys import (
    KEY_ID,
    anonymous_key,
    check_scopes,
    display_prefix,
    hash_secret,
    new_key_id,
    new_secret,
    well_formed,
)


def test_a_secret_is_em_plus_256_random_bits_in_base62() -> None:
    secrets = {new_secret() for _ in range(2000)}
    assert len(secrets) == 2000
    for s in secrets:
        assert s.startswith("em_") and len(s) == 3 + 43 and s[3:].isalnum() and s.isascii()
        assert well_formed(s)
    # Every base62 digit shows up, so no bits are lost to a narrow alphabet.
    assert {c for s in secrets for c in s[3:]} == set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "em_",
        "sk-" + "a" * 43,
        "em_" + "a" * 42,
        "em_" + "a" * 44,
        "em_" + "a" * 42 + "-",
        "em_" + "a" * 42 + "\n",
        " em_" + "a" * 43,
        "EM_" + "a" * 43,
        "em_" + "é" * 43,
    ],
)
def test_malformed_secrets(candidate: str) -> None:
    assert not well_formed(candidate)


def test_hash_is_sha256_hex_and_the_prefix_is_short() -> None:
    s = new_secret()
    assert hash_secret(s) == hashlib.sha256(s.encode()).hexdigest() and len(hash_secret(s)) == 64
    assert display_prefix(s) == s[:11] and len(display_prefix(s)) == 11


def test_key_ids() -> None:
    ids = {new_key_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(KEY_ID.match(i) for i in ids)
    assert not KEY_ID.match(anonymous_key("free").id), "the anonymous key must not look like a real one"


def test_scopes_are_checked_and_deduplicated() -> None:
    assert check_scopes(("chat", "images:write", "chat")) == ("chat", "images:write")
    for bad in (("has space",), ("",), ("x" * 65,), tuple(f"s{i}" for i in range(33))):
        with pytest.raises(ValueError):
            check_scopes(bad)
