#!/usr/bin/env bash
# Autobahn|Testsuite against `tether echo` (server) and the example client.
#
# Default (CI): every case except 12.x/13.x without compression (the
# server side twice: `tether echo` on its event-loop driver, its default, and
# with `--driver tokio`, the library's `WebSocket` that `tether serve` and
# embedders use), then a permessage-deflate sample with --deflate on both sides: 12.1.* and the
# first six cases of every 13.x parameter set (60 cases, ~2 min).
# TETHER_AUTOBAHN_DEFLATE=1: the full 12.x/13.x instead of the sample, with
# cases 1-10 also under --deflate (~21 min more, bound by wstest itself).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
conformance/setup.sh

ECHO_PID=""
LOG=$(mktemp /tmp/tether-autobahn-echo.XXXXXX)
trap 'if [[ -n $ECHO_PID ]]; then kill $ECHO_PID 2>/dev/null || true; fi; rm -f "$LOG"' EXIT

start_echo() {
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    ./target/release/tether echo --listen "127.0.0.1:$PORT" "$@" >"$LOG" 2>&1 &
    ECHO_PID=$!
    for _ in $(seq 100); do grep -q listening "$LOG" 2>/dev/null && break; sleep 0.1; done
    if ! grep -q listening "$LOG"; then
        echo "tether echo did not start:" >&2
        cat "$LOG" >&2
        exit 1
    fi
}

stop_echo() {
    kill -INT "$ECHO_PID" 2>/dev/null || true
    wait "$ECHO_PID" 2>/dev/null || true
    ECHO_PID=""
}

# run_server LABEL CASES EXCLUDE [ECHO_FLAGS...]: a server run only.
run_server() {
    local label=$1 cases=$2 exclude=$3
    shift 3
    echo "== Autobahn $label: server cases [$cases] exclude [$exclude] flags [$*]" >&2
    start_echo "$@"
    AUTOBAHN_CASES=$cases AUTOBAHN_EXCLUDE=$exclude AUTOBAHN_OUTDIR="conformance/reports/server-$label" \
        conformance/run.sh server "ws://127.0.0.1:$PORT" || status=1
    stop_echo
}

# run_pair LABEL CASES EXCLUDE [FLAGS...]: server and client runs.
run_pair() {
    local label=$1 cases=$2 exclude=$3
    run_server "$@"
    shift 3
    echo "== Autobahn $label: client cases [$cases] exclude [$exclude] flags [$*]" >&2
    AUTOBAHN_CASES=$cases AUTOBAHN_EXCLUDE=$exclude AUTOBAHN_OUTDIR="conformance/reports/client-$label" \
        conformance/run.sh client ./target/release/examples/autobahn_client "$@" || status=1
}

status=0
if [[ "${TETHER_AUTOBAHN_DEFLATE:-0}" == 1 ]]; then
    export AUTOBAHN_TIMEOUT="${AUTOBAHN_TIMEOUT:-2400}"
    run_pair plain '*' '12.*,13.*'
    run_server plain-tokio '*' '12.*,13.*' --driver tokio
    run_pair deflate '*' '' --deflate
    run_server deflate-tokio '*' '' --deflate --driver tokio
else
    run_pair plain '*' '12.*,13.*'
    run_server plain-tokio '*' '12.*,13.*' --driver tokio
    run_pair deflate-sample '12.1.*,13.*.1,13.*.2,13.*.3,13.*.4,13.*.5,13.*.6' '' --deflate
fi
exit $status
