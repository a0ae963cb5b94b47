#!/usr/bin/env bash
# Check the server API against its OpenAPI document (docs/openapi.json) on a
# running `tether serve`, with schemathesis (installed by scripts/deps.sh):
# every operation gets schema-valid and schema-violating requests; the
# answers must match the document (status codes, content types, bodies),
# valid requests must be accepted and invalid ones refused, and no request
# may get a 5xx. Bounded: --max-time (default 45 s) for the whole run.
#
#   scripts/api-contract.sh [path/to/tether] [max-seconds]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${1:-target/release/tether}
MAX_TIME=${2:-45}
PY=${TETHER_PYTHON:-python3}
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
KEY=contract-$RANDOM$RANDOM
LOG=$(mktemp)
# Many wrong keys are part of the run: no throttle here.
"$BIN" serve --listen "127.0.0.1:$PORT" --api-key "$KEY" --max-auth-failures 1000000000 --message-rate 100000 >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -f "$LOG"' EXIT
for _ in $(seq 100); do
    grep -q "listening on" "$LOG" && break
    sleep 0.1
done
# ASCII strings: the document's lengths are bytes (the server's rule), and
# JSON Schema counts characters; with ASCII the two agree. One worker: the
# coverage phase hit a Python error (AST recursion) in threads with two.
"$PY" -m schemathesis.cli run "http://127.0.0.1:$PORT/api/openapi.json" \
    -H "X-API-Key: $KEY" --checks all --generation-codec ascii \
    --phases "${TETHER_CONTRACT_PHASES:-coverage,fuzzing}" \
    --max-examples 30 --workers 1 --max-time "$MAX_TIME" --no-color
