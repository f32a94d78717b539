"""Function declarations on the bus: workers write them, gateways read them (JetStream KV ``ember_functions``).

Liveness is not kept here: a declaration is shown only while a worker announces the function (``WorkerInfo``
with modality ``function``); the entry just carries the schemas that announcements have no room for. A worker
that starts with a changed function overwrites its entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from ember.bus.kv_records import open_bucket
from ember.bus.messages import FunctionInfo, WireVersionError, decode_function_info, encode

BUCKET = "ember_functions"


@dataclass
class FunctionCatalog:
    kv: KeyValue

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str = BUCKET) -> FunctionCatalog:
        return cls(await open_bucket(js, bucket))

    async def publish(self, info: FunctionInfo) -> None:
        # Names are letters, digits, "_", "-" and "." (ember._functions.NAME_PATTERN): valid KV keys as they are.
        await self.kv.put(info.name, encode(info))

    async def get(self, name: str) -> FunctionInfo | None:
        try:
            entry = await self.kv.get(name)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError, nats.js.errors.InvalidKeyError):
            return None
        try:
            return decode_function_info(entry.value or b"")
        except (ValueError, WireVersionError):
            return None
