#!/usr/bin/env bash
# The test command: install (idempotent), lint, type-check, then the whole suite on real NATS and real models.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
"$PY" -m ruff check .
"$PY" -m ruff format --check .
"$PY" -m mypy  # platform, sdk and runtimes (pyproject.toml)
"$PY" -m pytest -q -p no:cacheprovider --durations=60 "$@"
