"""`ember worker functions` and `ember serve`'s functions worker: the command lines, and a bad module's error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ember.cli.serve import functions_command
from ember.config import ConfigError, Settings


def test_a_module_that_cannot_load_stops_the_worker_with_the_reason() -> None:
    cmd = [sys.executable, "-m", "ember.cli", "worker", "functions", "--module", "no_such_mod_42"]
    out = subprocess.run([*cmd, "--nats", "nats://127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "cannot import function module 'no_such_mod_42'" in out.stderr
    # Every other modality still needs its model.
    out = subprocess.run([sys.executable, "-m", "ember.cli", "worker", "text"], capture_output=True, text=True)
    assert out.returncode == 2 and "needs --model" in out.stderr


def test_serve_runs_one_functions_worker_with_the_configured_modules() -> None:
    settings = Settings(functions={"modules": ["tests.helpers.user_functions"]})
    w = functions_command(settings, "nats://h:4222", None)
    assert w is not None and w.modality == "functions"
    assert w.model == "generate_image"  # what `ember serve` waits for before it says ready
    assert w.cmd[w.cmd.index("worker") :] == ["worker", "functions", "--nats", "nats://h:4222"]
    user_only = Settings(functions={"builtins": False, "modules": ["tests.helpers.user_functions"]})
    only_user = functions_command(user_only, "n", None)
    assert only_user is not None and only_user.model == "user_functions.lookup_order"
    assert functions_command(Settings(functions={"builtins": False}), "n", None) is None
    with pytest.raises(ConfigError, match="no_such_mod_42"):
        functions_command(Settings(functions={"modules": ["no_such_mod_42"]}), "n", None)
