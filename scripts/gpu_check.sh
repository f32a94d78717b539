#!/usr/bin/env bash
# The GPU check: ember._C built with its CUDA kernels (csrc/cuda/), the gpu-marked tests, and the GPU benchmark,
# each step's output kept under $OUT. What runs on a GPU machine whenever one is available.
#   bash scripts/gpu_check.sh        # needs a CUDA GPU, nvcc, and a CUDA build of torch already installed
#   SOAK_S=240 bash scripts/gpu_check.sh   # also the three-runtime soak (its wheels: SOAK=1 gpu_wheels.sh)
# Where the machine cannot reach a package index, the wheels of Ember's other needs go in .whl/ beside this
# checkout first (bash scripts/gpu_wheels.sh, on a machine that can); they are installed from there, and Ember
# itself with --no-deps, so that nothing replaces the machine's torch. Where there is no GPU, scripts/cuda_check.py
# compile-checks the same sources (the CPU suite runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/ember-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nvcc --version | tail -1
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"

if [ -d .whl ]; then
    echo "== Ember's other needs from .whl/"
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --upgrade \
        --target /tmp/ember-site .whl/*.whl
    export PYTHONPATH=/tmp/ember-site${PYTHONPATH:+:$PYTHONPATH}
fi

echo "== build (EMBER_CUDA=1: fail rather than build without the CUDA kernels)"
# For this GPU's architecture only, unless TORCH_CUDA_ARCH_LIST says otherwise.
ARCH=$("$PY" -c "import torch; print('.'.join(map(str, torch.cuda.get_device_capability())))")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$ARCH}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
START=$(date +%s)
EMBER_NATIVE=1 EMBER_CUDA=1 "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
    -e . > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - START )) s for sm_${ARCH/./}"

echo "== tests: the CUDA kernels, the GPU runner, a KV cache giving memory back, and the CPU kernels on this CPU"
# The CUDA kernels' host-emulated runs are the CPU suite's (they build against ember[cuda-check]'s wheels): here
# the same tests run on the GPU itself.
set +e
"$PY" -m pytest -q -p no:cacheprovider --timeout 600 -k "not host and not emulator" \
    tests/runtimes/text/test_cuda_kernels.py tests/runtimes/text/test_kernels.py tests/runtimes/test_devices.py \
    "tests/runtimes/text/test_model.py::test_mixed_steps_on_cuda_equal_the_cpu" \
    "tests/runtimes/text/test_kv_resize.py::test_a_real_out_of_memory_on_the_gpu_takes_kv_memory_back" \
    2>&1 | tee "$OUT/tests.log"
TESTS=${PIPESTATUS[0]}
set -e

echo "== benchmark"
"$PY" benchmarks/gpu_kernels.py --rounds 3 2>&1 | tee "$OUT/bench.md"

if [ -n "${SOAK_S:-}" ]; then
    # Issue 18's soak: text, image and audio in one `ember worker gpu` process under a mixed load for SOAK_S
    # seconds, its reserved memory sampled (the tests' tiny models: real ones cannot travel here). Needs the
    # wheels of SOAK=1 bash scripts/gpu_wheels.sh.
    echo "== soak: three runtimes on one GPU for $SOAK_S s"
    set +e
    "$PY" benchmarks/device_group_soak.py --tiny --device cuda --seconds "$SOAK_S" --warmup-s $((SOAK_S / 5)) \
        --sample-s 10 --clients 2 2>&1 | tee "$OUT/soak.md"
    set -e
fi
exit "$TESTS"
