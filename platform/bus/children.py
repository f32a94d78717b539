"""Child processes that die with their parent: ``ember serve``'s nats-server and workers, and the tests' own.

Each child starts a session of its own, so a Ctrl-C at the terminal reaches the parent alone, which then stops its
children in order; and the parent kills each child's process group (``kill_group``) on any exit it lives through.

A parent killed with -9 lives through nothing. On Linux every child also gets ``PR_SET_PDEATHSIG``: the kernel sends
it SIGKILL when the parent dies, however it dies. Two limits of that call:

- the signal follows the thread that started the child, not the process: start children from a thread that lives
  as long as they should (``ember serve`` and the test fixtures start them from the main thread);
- there is no such call elsewhere (macOS, the BSDs): there a parent killed with -9 leaves its children running, and
  their ports held, until they are stopped by hand or by a supervisor that owns the whole tree (launchd, systemd).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@functools.cache
def _prctl() -> Any:
    """libc's prctl, resolved once in the parent: after fork the child only calls it."""
    fn = ctypes.CDLL(None, use_errno=True).prctl
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when this process dies (Linux); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    prctl, parent = _prctl(), os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl: no signal will ever come
            os._exit(1)

    return preexec


def spawn(cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(cmd, **kwargs)``, in a session of its own and dying with this process (module docstring)."""
    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=die_with_parent(), **kwargs)


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL ``proc``'s process group (the child and whatever it started) and reap the child."""
    # NOTE: only while the child is unreaped is its pid, and so its group id, sure not to name someone else's.
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def stop(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM ``proc``, wait up to ``timeout`` seconds for it to exit, then ``kill_group`` (always)."""
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    kill_group(proc)
