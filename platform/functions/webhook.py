"""Webhooks of async jobs: the finished job, POSTed to the URL its submitter gave, signed, retried with backoff.

Only hosts named in ``functions.webhook_hosts`` may be called: the gateway refuses any other URL (400) and the
worker that sends checks again, so that a job never makes Ember reach a host of the submitter's choosing.

The body is the job as ``GET /v1/jobs/{id}`` shows it. Its ``Ember-Signature`` header is
``t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>" under functions.webhook_secret>``; a receiver recomputes it
(``verify``) and refuses an old ``t`` to stop replays. A delivery that gets no 2xx is sent again after
``webhook_backoff_s``, doubling, up to ``webhook_attempts`` deliveries in all.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from ember.config.settings import FunctionsSettings

log = logging.getLogger("ember.functions.webhook")

SIGNATURE_HEADER = "Ember-Signature"


class WebhookRefused(ValueError):
    """A webhook URL that may not be called; the message says why."""


def check_url(url: str, allowed_hosts: list[str]) -> str:
    """``url`` itself when it is http(s) to an allowed host; WebhookRefused otherwise."""
    if not allowed_hosts:
        raise WebhookRefused("webhooks are not enabled on this server (functions.webhook_hosts is empty)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused(f"webhook_url={url!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise WebhookRefused("webhook_url may not carry credentials")
    if parts.hostname.lower() not in {h.lower() for h in allowed_hosts}:
        raise WebhookRefused(f"webhook_url's host {parts.hostname!r} is not one this server may call")
    return url


def sign(secret: str, body: bytes, at: int) -> str:
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def verify(secret: str, body: bytes, header: str, tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """Whether ``header`` signs ``body`` under ``secret`` and is at most ``tolerance_s`` old."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        at = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - at) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, at), f"t={at},v1={fields.get('v1', '')}")


@dataclass
class WebhookSender:
    settings: FunctionsSettings

    async def deliver(self, url: str, job_id: str, payload: dict[str, Any]) -> bool:
        """POST ``payload`` to ``url`` until a 2xx answer or the attempts run out; whether it was delivered."""
        s = self.settings
        try:
            check_url(url, s.webhook_hosts)
        except WebhookRefused as e:  # this worker's config differs from the gateway's
            log.warning("job %s: webhook not sent: %s", job_id, e)
            return False
        if not s.webhook_secret:
            log.warning("job %s: webhook not sent: functions.webhook_secret is not set on this worker", job_id)
            return False
        body = json.dumps(payload, separators=(",", ":")).encode()
        wait = s.webhook_backoff_s
        # No redirects: a 3xx to another host would get around the allow-list.
        async with httpx.AsyncClient(timeout=s.webhook_timeout_s, follow_redirects=False) as client:
            for attempt in range(1, s.webhook_attempts + 1):
                headers = {
                    "Content-Type": "application/json",
                    SIGNATURE_HEADER: sign(s.webhook_secret, body, int(time.time())),
                    "Ember-Job-Id": job_id,
                    "Ember-Delivery-Attempt": str(attempt),
                }
                try:
                    r = await client.post(url, content=body, headers=headers)
                    if r.is_success:
                        return True
                    why = f"HTTP {r.status_code}"
                except httpx.HTTPError as e:
                    why = f"{type(e).__name__}: {e}"
                log.info("job %s: webhook delivery %d of %d failed (%s)", job_id, attempt, s.webhook_attempts, why)
                if attempt < s.webhook_attempts:
                    await asyncio.sleep(wait)
                    wait *= 2
        return False
