"""``ember keys``: issue, list, revoke and re-tier API keys, straight on the NATS key bucket.

ember keys create --tier NAME [--name LABEL] [--scopes a,b]   prints the secret, once
ember keys list                                               id, prefix, name, tier, created, revoked
ember keys revoke ID
ember keys set-tier ID NAME

Each takes ``--nats URL`` (default: ``nats.url`` from config). An unknown tier or key id exits with 2.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ember.auth.interface import KeyStore, KeyStoreError
from ember.auth.keys import ApiKey, check_scopes
from ember.config import ConfigError, Settings

T = TypeVar("T")
# A CLI should fail, not wait forever, when NATS is not there.
_CONNECT_TIMEOUT_S = 5.0


def add_parser(sub: Any) -> None:
    """The ``keys`` command group, on the top-level subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--nats", help="NATS URL (default: nats.url from config)")

    keys = sub.add_parser("keys", help="manage API keys")
    actions = keys.add_subparsers(dest="keys_command", required=True)

    create = actions.add_parser("create", parents=[common], help="issue a key and print its secret once")
    create.add_argument("--tier", required=True, help="a tier name from the config (free, developer, ...)")
    create.add_argument("--name", default="", help="a label for people")
    create.add_argument("--scopes", default="", help="comma-separated labels stored with the key")
    create.add_argument("--json", action="store_true", help="print the key and its secret as JSON")

    listing = actions.add_parser("list", parents=[common], help="list every key (never a secret)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")

    revoke = actions.add_parser("revoke", parents=[common], help="revoke a key on every gateway")
    revoke.add_argument("key_id", metavar="ID")

    set_tier = actions.add_parser("set-tier", parents=[common], help="move a key to another tier")
    set_tier.add_argument("key_id", metavar="ID")
    set_tier.add_argument("tier", metavar="NAME")


def run(args: argparse.Namespace, settings: Settings, nats_url: Callable[[], str]) -> int:
    """Run one ``ember keys`` command.

    Args:
        args: the parsed command line (``args.keys_command`` and its options).
        settings: for the tier table.
        nats_url: finds the NATS URL (raising ConfigError if there is none); called after the arguments are checked.

    Returns:
        The exit status: 0, 2 for an unknown tier or key id or a bad scope, 1 if NATS cannot be used.
    """
    try:
        return _run(args, settings, nats_url)
    except KeyStoreError as e:
        print(f"ember: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, settings: Settings, url: Callable[[], str]) -> int:
    command = args.keys_command
    if command == "create":
        settings.tier(args.tier)  # an unknown tier fails here, as a ConfigError (exit 2), before any I/O
        try:
            scopes = check_scopes(tuple(s.strip() for s in args.scopes.split(",") if s.strip()))
        except ValueError as e:
            raise ConfigError(f"--scopes: {e}") from None
        key, secret = _on_store(url(), lambda s: s.create(args.tier, name=args.name, scopes=scopes))
        if args.json:
            print(json.dumps({**dataclasses.asdict(key), "secret": secret}))
        else:
            print(f"id:      {key.id}\ntier:    {key.tier}\nname:    {key.name}\nsecret:  {secret}")
            print("Keep the secret now: it is not stored, and cannot be shown again.", file=sys.stderr)
        return 0
    if command == "list":
        keys = _on_store(url(), lambda s: s.list())
        if args.json:
            print(json.dumps([dataclasses.asdict(k) for k in keys]))
        else:
            _print_table(keys)
        return 0
    if command == "set-tier":
        settings.tier(args.tier)
        found = _on_store(url(), lambda s: s.set_tier(args.key_id, args.tier))
    else:
        found = _on_store(url(), lambda s: s.revoke(args.key_id))
    if found is None:
        print(f"ember: no API key has the id {args.key_id!r} (see `ember keys list`)", file=sys.stderr)
        return 2
    state = f"revoked at {_when(found.revoked_at)}" if found.revoked_at else "active"
    print(f"{found.id}\t{found.prefix}\ttier={found.tier}\t{state}")
    return 0


def _on_store(nats_url: str, call: Callable[[KeyStore], Awaitable[T]]) -> T:
    """Connect, start the store, make one call, and close everything."""
    import nats
    import nats.errors

    from ember.auth.nats_kv import NatsKeyStore

    async def go() -> T:
        async def quiet(e: Exception) -> None:  # the one error that matters is raised below, once
            pass

        try:
            nc = await nats.connect(
                nats_url,
                name="ember-keys",
                connect_timeout=_CONNECT_TIMEOUT_S,
                allow_reconnect=False,
                # NOTE: nats-py retries even the first connect max_reconnect_attempts times (default 60, 2 s
                # apart; 0 means forever), so: one retry, soon.
                max_reconnect_attempts=1,
                reconnect_time_wait=0.2,
                error_cb=quiet,
            )
        except (OSError, nats.errors.NoServersError, TimeoutError) as e:
            raise KeyStoreError(f"cannot reach NATS at {nats_url}: {e or type(e).__name__}") from None
        try:
            store = NatsKeyStore(nc)
            await store.start()
            try:
                return await call(store)
            finally:
                await store.stop()
        finally:
            await nc.drain()

    return asyncio.run(go())


def _when(ts: int | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def _print_table(keys: list[ApiKey]) -> None:
    rows = [("ID", "PREFIX", "NAME", "TIER", "CREATED", "REVOKED")]
    rows += [(k.id, k.prefix, k.name or "-", k.tier, _when(k.created_at), _when(k.revoked_at)) for k in keys]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
