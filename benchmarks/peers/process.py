"""What every peer server process needs: a build/install lock, a free port, its log's tail, waiting for it to serve."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (another process may take it before the server binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until_serving(
    proc: subprocess.Popen[bytes],
    url: str,
    *,
    name: str,
    log_path: Path,
    timeout_s: float,
    error: type[Exception],
) -> None:
    """Poll ``url`` until it answers 200; raise ``error`` with the log's tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            rc = proc.poll()
            if rc is not None:
                status = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with status {rc}"
                raise error(f"{name} {status} during start-up; log {log_path}:\n" + log_tail(log_path))
            with contextlib.suppress(httpx.TransportError):
                if client.get(url).status_code == 200:
                    return
            time.sleep(0.3)
    raise error(f"{name} was not serving after {timeout_s:.0f} s; log {log_path}:\n" + log_tail(log_path))


class ServerProcess:
    """A server started with its output in a log file, stopped (its whole process group with ``group``) on ``stop``."""

    def __init__(self, argv: list[str], *, env: dict[str, str], log_path: Path, group: bool = False) -> None:
        self.log_path = log_path
        self.group = group
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=group,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_serving(self, url: str, *, name: str, timeout_s: float, error: type[Exception]) -> None:
        """``wait_until_serving``; the process is stopped if it does not come up."""
        try:
            wait_until_serving(self.proc, url, name=name, log_path=self.log_path, timeout_s=timeout_s, error=error)
        except BaseException:
            self.stop()
            raise

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def temp_log(prefix: str) -> Path:
    """A new, empty log file in the temporary folder (kept afterwards, for reading after a failure)."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".log")
    os.close(fd)
    return Path(name)


class PeerServer:
    """A peer server for a ``with`` block: the subclass's ``__enter__`` starts ``_process``; leaving stops it."""

    _process: ServerProcess | None = None
    stop_timeout_s: float = 10.0

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is not None:
            self._process.stop(self.stop_timeout_s)
