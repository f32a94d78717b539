"""The key store: where API keys live, shared by every gateway, the admin API and ``ember keys``.

A store's life::

    store = NatsKeyStore(nc)              # built on a connection its owner made (and will close)
    await store.start()                   # open the backing storage; returns once the store can answer
    key, secret = await store.create("free", name="ci", scopes=("chat",))
                                          # hand the secret to the caller now: it is not kept anywhere
    await store.authenticate(secret)      # on every request: the ApiKey, or None (malformed, unknown, revoked)
    await store.list() / get(key_id)      # what the CLI and the admin API show (never a secret)
    await store.set_tier(key_id, "pro")   # takes effect on every gateway within a few seconds
    await store.revoke(key_id)            # so does this: authenticate() refuses the key from then on
    await store.stop()

Rules every implementation keeps:

- A secret is never stored or logged; only ``hash_secret(secret)`` is. ``authenticate`` compares digests with
  ``hmac.compare_digest``.
- ``authenticate`` is on the hot path of every request: it answers from memory once ``start()`` returned, and
  a change made through any store instance (any gateway, the CLI) reaches it within a few seconds.
- ``revoke`` is idempotent and keeps the key's record (lists show it as revoked); there is no un-revoke.
- Tier names are checked against ``Settings.tiers`` by the caller (CLI, admin API), not the store: a key whose
  tier was later removed from the config still exists, and the gateway decides what to do with it.
- Methods that address a key by id return None when no key has that id.
"""

from __future__ import annotations

import abc

from ember.auth.keys import ApiKey


class KeyStoreError(Exception):
    """The store cannot do its job (its backing storage is unreachable or unusable); the message says why."""


class KeyStore(abc.ABC):
    """Issues, finds, revokes and re-tiers API keys. See the module docstring for the call cycle."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Open the backing storage; once this returns, ``authenticate`` answers without I/O."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop following changes; the connection the store was given stays open."""

    @abc.abstractmethod
    async def create(self, tier: str, name: str = "", scopes: tuple[str, ...] = ()) -> tuple[ApiKey, str]:
        """Issue a key.

        Args:
            tier: a tier name the caller has already checked against ``Settings.tiers``.
            name: a label for people; may be empty.
            scopes: labels stored with the key.

        Returns:
            The new key and its secret. The secret is returned this once and stored nowhere.
        """

    @abc.abstractmethod
    async def authenticate(self, secret: str) -> ApiKey | None:
        """The live key whose secret this is; None for a malformed, unknown or revoked secret."""

    @abc.abstractmethod
    async def list(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""

    @abc.abstractmethod
    async def get(self, key_id: str) -> ApiKey | None:
        """The key with this id (revoked or not), or None."""

    @abc.abstractmethod
    async def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke a key for good; returns it as revoked (revoking twice keeps the first time), or None."""

    @abc.abstractmethod
    async def set_tier(self, key_id: str, tier: str) -> ApiKey | None:
        """Move a key to another tier; returns the updated key, or None."""
