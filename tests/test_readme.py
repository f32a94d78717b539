"""The README's code blocks run: TOML loads as Ember's settings, Python runs, JSON parses and `ember` commands exit 0.

A block that cannot run offline (it needs a running gateway or NATS, or serves until stopped) says why in an HTML
comment on the line before its fence: ``<!-- not run by tests/test_readme.py: REASON -->``. A block in no language
(a tree, a diagram) is text, not code.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ember.config import load_settings

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- not run by tests/test_readme.py: "
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
RUNNERS = ("bash", "python", "toml", "json")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    skip: str | None  # why it is not run, from the marker before it


def blocks() -> list[Block]:
    text = README.read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].splitlines()
        last = before[-1] if before else ""
        skip = last.removeprefix(MARKER).removesuffix(" -->") if last.startswith(MARKER) else None
        out.append(Block(len(before) + 1, m.group(1), m.group(2), skip))
    return out


def runnable() -> list[Block]:
    return [b for b in blocks() if b.lang and b.skip is None]


def test_every_block_is_run_or_says_why() -> None:
    found = blocks()
    assert len(found) >= 20
    for b in found:
        assert not b.lang or b.lang in RUNNERS, f"README.md:{b.line}: no runner for a {b.lang} block"
        assert b.skip is None or b.skip.strip(), f"README.md:{b.line}: a marker with no reason"
    # Every marker sits right before a fence (a stray one would mark nothing).
    assert README.read_text().count(MARKER) == sum(b.skip is not None for b in found)
    assert {"bash", "python", "toml"} <= {b.lang for b in runnable()}


@pytest.mark.parametrize("block", runnable(), ids=lambda b: f"README.md:{b.line}:{b.lang}")
def test_block_runs(block: Block, tmp_path: Path) -> None:
    if block.lang == "toml":
        (tmp_path / "ember.toml").write_text(block.code)
        load_settings(tmp_path / "ember.toml")
    elif block.lang == "json":
        json.loads(block.code)
    elif block.lang == "python":
        exec(compile(block.code, f"README.md:{block.line}", "exec"), {"__name__": "readme"})
    else:
        run_shell(block, tmp_path)


def run_shell(block: Block, cwd: Path) -> None:
    """Each command of the block, `ember ...` as ``python -m ember.cli ...`` in an empty folder, with no config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    for command in block.code.replace("\\\n", " ").splitlines():
        argv = shlex.split(command, comments=True)
        if not argv:
            continue
        assert argv[0] == "ember", f"README.md:{block.line}: only `ember` commands run here, not {argv[0]!r}"
        out = subprocess.run(
            [sys.executable, "-m", "ember.cli", *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, f"README.md:{block.line}: {command!r} exited {out.returncode}:\n{out.stderr}"
