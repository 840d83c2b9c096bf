#!/usr/bin/env bash
# Install what is needed (first run only) and launch the Atelier web UI on http://127.0.0.1:7860.
# Flags pass through: ./webui.sh --port 7861 --listen --no-autolaunch --models-dir DIR --outputs-dir DIR
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
exec .venv/bin/python -m webui "$@"
