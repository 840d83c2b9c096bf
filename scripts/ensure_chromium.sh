#!/usr/bin/env bash
# The browser tests drive Debian's chromium through playwright (playwright's own browser download
# is not reachable offline). Install the package when it is missing and we may use apt.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[atelier] installing Debian's chromium for the browser tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
else
    echo "[atelier] chromium not found and cannot be installed here: browser tests will be skipped" >&2
fi
