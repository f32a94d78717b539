"""`ember keys ...` as an operator runs it: real processes against a real nats-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.auth.keys import well_formed
from ember.bus.nats_server import EmbeddedNats, free_port
from tests.helpers.cluster import write_config


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server of its own, so the default bucket (ember_keys) is this module's alone."""
    with EmbeddedNats(data_dir=tmp_path_factory.mktemp("keys-cli-nats")) as server:
        yield server.url


def ember(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ember.cli", *(["--config", str(config)] if config else []), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd="/")


def test_create_list_set_tier_revoke(nats: str) -> None:
    made = ember("keys", "create", "--tier", "developer", "--name", "ci bot", "--scopes", "chat,images", "--nats", nats)
    assert made.returncode == 0, made.stderr
    fields = dict(line.split(":", 1) for line in made.stdout.strip().splitlines())
    key_id, secret = fields["id"].strip(), fields["secret"].strip()
    assert well_formed(secret) and fields["tier"].strip() == "developer" and "shown again" in made.stderr
    assert secret not in made.stderr  # the log line names the key, never its secret

    listed = ember("keys", "list", "--nats", nats)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.strip().splitlines()
    assert header.split() == ["ID", "PREFIX", "NAME", "TIER", "CREATED", "REVOKED"]
    row = next(r for r in rows if r.startswith(key_id))
    assert secret[:11] in row and "ci bot" in row and "developer" in row and row.endswith("-")
    assert secret not in listed.stdout

    moved = ember("keys", "set-tier", key_id, "pro", "--nats", nats)
    assert moved.returncode == 0 and "tier=pro" in moved.stdout and "active" in moved.stdout

    revoked = ember("keys", "revoke", key_id, "--nats", nats)
    assert revoked.returncode == 0 and "revoked at" in revoked.stdout

    as_json = json.loads(ember("keys", "list", "--json", "--nats", nats).stdout)
    mine = next(k for k in as_json if k["id"] == key_id)
    assert mine["tier"] == "pro" and mine["revoked_at"] and mine["scopes"] == ["chat", "images"]
    assert "secret" not in mine


def test_create_json_and_the_url_from_config(nats: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "ember.toml", {}, nats={"url": nats})
    made = ember("keys", "create", "--tier", "free", "--json", config=config)
    assert made.returncode == 0, made.stderr
    out = json.loads(made.stdout)
    assert well_formed(out["secret"]) and out["tier"] == "free" and out["revoked_at"] is None


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["keys", "create", "--tier", "platinum"], "tier 'platinum' is not configured"),
        (["keys", "set-tier", "key_000000000000", "platinum"], "tier 'platinum' is not configured"),
        (["keys", "set-tier", "key_000000000000", "pro"], "no API key has the id 'key_000000000000'"),
        (["keys", "revoke", "key_000000000000"], "no API key has the id 'key_000000000000'"),
        (["keys", "revoke", "garbage"], "no API key has the id 'garbage'"),
        (["keys", "create", "--tier", "free", "--scopes", "a b"], "--scopes: scope 'a b'"),
    ],
)
def test_unknown_tiers_and_ids_exit_2(nats: str, args: list[str], needle: str) -> None:
    r = ember(*args, "--nats", nats)
    assert r.returncode == 2 and needle in r.stderr, r.stderr


def test_no_nats_is_a_clear_error() -> None:
    r = ember("keys", "list")
    assert r.returncode == 2 and "pass --nats URL or set nats.url" in r.stderr
    r = ember("keys", "list", "--nats", f"nats://127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "cannot reach NATS" in r.stderr and "Traceback" not in r.stderr
