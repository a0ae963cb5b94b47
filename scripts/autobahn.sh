#!/usr/bin/env bash
# Autobahn|Testsuite against `tether echo` (server) and the example client.
# Cases 12.x/13.x (permessage-deflate) only with TETHER_AUTOBAHN_DEFLATE=1:
# then the echo server and the client run with --deflate, so cases 1-10 are
# also checked with compression enabled (~25 min more, bound by wstest).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
conformance/setup.sh
DEFLATE=()
if [[ "${TETHER_AUTOBAHN_DEFLATE:-0}" == 1 ]]; then
    export AUTOBAHN_EXCLUDE=""
    export AUTOBAHN_TIMEOUT="${AUTOBAHN_TIMEOUT:-2400}"
    DEFLATE=(--deflate)
fi

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
LOG=$(mktemp /tmp/tether-autobahn-echo.XXXXXX)
./target/release/tether echo --listen "127.0.0.1:$PORT" "${DEFLATE[@]}" >"$LOG" 2>&1 &
ECHO_PID=$!
trap 'kill $ECHO_PID 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 100); do grep -q listening "$LOG" 2>/dev/null && break; sleep 0.1; done
if ! grep -q listening "$LOG"; then
    echo "tether echo did not start:" >&2
    cat "$LOG" >&2
    exit 1
fi

status=0
conformance/run.sh server "ws://127.0.0.1:$PORT" || status=1
conformance/run.sh client ./target/release/examples/autobahn_client "${DEFLATE[@]}" || status=1
kill -INT $ECHO_PID 2>/dev/null || true
wait $ECHO_PID 2>/dev/null || true
exit $status
