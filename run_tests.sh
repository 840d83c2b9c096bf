#!/usr/bin/env bash
# Install what the tests need (first run only), lint, and run the whole test suite offline.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh test
bash scripts/ensure_chromium.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
.venv/bin/ruff check webui tests benchmarks scripts extensions tools
.venv/bin/mypy  # type-checks webui/ (configured in pyproject.toml)
exec .venv/bin/python -m pytest "$@"
