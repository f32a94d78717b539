"""A functions worker stops cleanly on SIGTERM, even with a plain function still blocked in its thread."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.functions.cluster import USER_MODULE, start_functions_worker, wait_for_functions
from tests.helpers.cluster import GatewayThread, stop_process


def test_a_hung_plain_function_does_not_keep_the_worker_alive(
    cluster_config: Path, nats_url: str, gateway: GatewayThread, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    proc = start_functions_worker(cluster_config, nats_url, [USER_MODULE], log=log)
    try:
        wait_for_functions(gateway.url, ["user_functions.hang_sync"])
        r = httpx.post(
            f"{gateway.url}/v1/functions/user_functions.hang_sync/invoke",
            json={"input": {"seconds": 600}, "timeout_s": 0.2},
            timeout=30,
        )
        assert r.status_code == 504
        proc.send_signal(signal.SIGTERM)
        # Its thread is still asleep for ten minutes; the process exits anyway, by itself.
        assert proc.wait(timeout=20) == 0, log.read_text()[-3000:]
    except BaseException:
        stop_process(proc)
        raise
    with pytest.raises(httpx.HTTPStatusError):
        httpx.get(f"{gateway.url}/v1/functions/user_functions.hang_sync").raise_for_status()
