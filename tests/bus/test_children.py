"""Child processes die with their parent, even one killed with -9, and kill_group takes what they started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from ember.bus import children
from tests.helpers.serve_process import is_gone

# A parent that starts `sleep` through children.spawn, prints its pid and waits to be killed.
PARENT = """
import sys, time
from ember.bus import children
child = children.spawn(["sleep", "60"])
print(child.pid, flush=True)
time.sleep(60)
"""


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_gone(pid):
            return True
        time.sleep(0.02)
    return False


def test_a_child_dies_with_a_parent_killed_with_9() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert not is_gone(child)
        assert os.getpgid(child) == child  # a session, so a group, of its own
        parent.kill()
        parent.wait()
        assert wait_gone(child, 2.0)
    finally:
        parent.stdout.close()
        if not is_gone(child):
            os.kill(child, signal.SIGKILL)


def test_kill_group_takes_the_grandchildren_too() -> None:
    proc = children.spawn(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    grandchild = int(proc.stdout.readline())
    children.kill_group(proc)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert wait_gone(grandchild, 2.0)
