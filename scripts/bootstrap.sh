#!/usr/bin/env bash
# Create .venv at the project root if missing and install Atelier into it (idempotent, quick when
# nothing changed). Usage: scripts/bootstrap.sh [EXTRAS], e.g. "test".
#
# torch: if the venv has none yet, TORCH_SPEC is installed first (default torch==2.13.0). On Linux
# PyPI serves the CUDA build for NVIDIA GPUs; set TORCH_SPEC/TORCH_INDEX_URL to pick another build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
extras="${1:-}"
python="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
    echo "[atelier] creating virtual environment in .venv"
    "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)

if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    echo "[atelier] installing ${TORCH_SPEC:-torch==2.13.0}"
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        "${pip[@]}" install "${TORCH_SPEC:-torch==2.13.0}" --index-url "$TORCH_INDEX_URL"
    else
        "${pip[@]}" install "${TORCH_SPEC:-torch==2.13.0}"
    fi
fi

stamp=".venv/.atelier-installed"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1) extras=${extras}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[atelier] installing the project${extras:+ with [$extras]}"
    # The torch installed above stays: the project must never swap the build the user chose.
    torch_version="$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])')"
    constraints="$(mktemp)"
    echo "torch==${torch_version}" > "$constraints"
    "${pip[@]}" install -e ".${extras:+[$extras]}" --constraint "$constraints"
    rm -f "$constraints"
    # spandrel without torchvision (see pyproject.toml); its other dependencies came with the project.
    "${pip[@]}" install --no-deps "spandrel>=0.4,<0.5"
    echo "$want" > "$stamp"
fi

# The test suite compares the samplers with k-diffusion's own sampling code; only its wheel is fetched
# (never installed: it depends on torchvision, which must not sit beside a CPU torch).
if [ "$extras" = "test" ] && [ ! -f .venv/reference/k_diffusion-0.1.1.post1-py3-none-any.whl ]; then
    "${pip[@]}" download --no-deps --dest .venv/reference "k-diffusion==0.1.1.post1"
fi
