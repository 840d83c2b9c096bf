#!/usr/bin/env bash
# Install what is needed (first run only) and launch the Atelier web UI on http://127.0.0.1:7860.
# Flags pass through: ./webui.sh --port 7861 --listen --no-autolaunch --models-dir DIR --outputs-dir DIR
# (relative paths in flags are taken from the folder you run it in).
set -euo pipefail
root="$(cd "$(dirname "$0")" && pwd)"
bash "$root/scripts/bootstrap.sh"
exec "$root/.venv/bin/python" -m webui "$@"
