#!/usr/bin/env bash
# Install what the tests need beyond Rust: Python's websockets package (the
# interop peer). Idempotent and quick when everything is present.
set -euo pipefail
PY=${TETHER_PYTHON:-python3}
if ! "$PY" -c 'import websockets' 2>/dev/null; then
    echo "installing python websockets for interop tests" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check 'websockets>=13' \
        || "$PY" -m pip install --quiet --break-system-packages 'websockets>=13'
fi
"$PY" -c 'import websockets; print("python websockets", websockets.__version__)' >&2
