"""Progress of long loading work: a bar on a terminal, a few plain lines anywhere else."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from ember.config.progress import Progress, track
from ember.config.split_weights import joined_file


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_at_the_start_each_quarter_and_the_end() -> None:
    out = io.StringIO()
    assert list(track(range(22), "joining m.gguf", 22, "parts", stream=out)) == list(range(22))
    lines = out.getvalue().splitlines()
    assert lines[0] == "ember: joining m.gguf: 0/22 parts"
    assert lines[1:4] == [
        "ember: joining m.gguf: 6/22 parts (27%)",
        "ember: joining m.gguf: 11/22 parts (50%)",
        "ember: joining m.gguf: 17/22 parts (77%)",
    ]
    assert lines[4].startswith("ember: joining m.gguf: 22/22 parts, done in ") and len(lines) == 5


def test_a_bar_redrawn_in_place_on_a_terminal() -> None:
    out = Terminal()
    with Progress("loading m.gguf", 4, "tensors", stream=out) as p:
        p.advance(2)
    text = out.getvalue()
    assert text.startswith("\rember: loading m.gguf: 0/4 tensors [" + "." * 30 + "]")
    assert text.count("\n") == 1 and text.endswith("\x1b[K\n")  # one line, ended once
    assert "\rember: loading m.gguf: 2/4 tensors, done in " in text


def test_a_failure_ends_the_bar_without_saying_done() -> None:
    out = Terminal()
    with pytest.raises(RuntimeError), Progress("loading m.gguf", 4, "tensors", stream=out):
        raise RuntimeError("bad tensor")
    assert "done" not in out.getvalue() and out.getvalue().endswith("\n")


def test_joining_parts_reports_each_quarter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chunks = []
    for i in range(8):
        chunks.append(tmp_path / f"part{i}.bin")
        chunks[-1].write_bytes(bytes([i]) * 1000)
    sha = hashlib.sha256(b"".join(c.read_bytes() for c in chunks)).hexdigest()
    joined_file(chunks, sha, tmp_path / "cache" / "model.gguf")
    err = capsys.readouterr().err
    assert "ember: joining model.gguf: 0/8 parts\n" in err and "ember: joining model.gguf: 4/8 parts (50%)\n" in err
    assert "ember: joining model.gguf: 8/8 parts, done in " in err
