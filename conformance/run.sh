#!/usr/bin/env bash
# Run Autobahn|Testsuite against a WebSocket server or client.
#
#   conformance/run.sh server ws://127.0.0.1:9001
#       wstest -m fuzzingclient: connects to the (already running) echo
#       server at URL and runs the cases against it.
#
#   conformance/run.sh client CLIENT_CMD [ARGS...]
#       wstest -m fuzzingserver on 127.0.0.1:$AUTOBAHN_PORT, then runs
#       CLIENT_CMD ARGS... ws://127.0.0.1:PORT  (URL appended as last arg).
#       The client must read /getCaseCount, run /runCase?case=N&agent=tether
#       for N = 1..count (echoing every message), then /updateReports?agent=tether.
#
# Environment:
#   AUTOBAHN_CASES     comma-separated case patterns      (default: *)
#   AUTOBAHN_EXCLUDE   comma-separated exclusions         (default: 12.*,13.*; set
#                      to the empty string to exclude nothing)
#   AUTOBAHN_PORT      fuzzingserver port, client mode    (default: 9002; if the
#                      default is taken a free port is picked)
#   AUTOBAHN_TIMEOUT   seconds before wstest / the client are killed (default: 1200)
#   AUTOBAHN_OUTDIR    report dir (default: conformance/reports/<server|client>)
#   AUTOBAHN_VERBOSE=1 stream wstest's output (else: conformance/reports/<mode>/wstest.log)
#   TETHER_AUTOBAHN_HOME  where setup.sh installed wstest (default: ~/.cache/tether-autobahn)
#
# Exit status: check.py's (0 = no case FAILED), or non-zero if wstest or the
# client failed, timed out, or the server could not be reached.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
AGENT=tether
PY3="${PYTHON3:-python3}"
H="${TETHER_AUTOBAHN_HOME:-$HOME/.cache/tether-autobahn}"
WSTEST="$H/bin/wstest"
CASES="${AUTOBAHN_CASES:-*}"
EXCLUDE="${AUTOBAHN_EXCLUDE-12.*,13.*}"
TIMEOUT="${AUTOBAHN_TIMEOUT:-1200}"
VERBOSE="${AUTOBAHN_VERBOSE:-0}"

log() { printf '[autobahn] %s\n' "$*" >&2; }
die() { printf '[autobahn] ERROR: %s\n' "$*" >&2; exit 2; }
usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

MODE="${1:-}"
[[ $# -gt 0 ]] && shift
case "$MODE" in
    server) [[ $# -eq 1 ]] || usage; TARGET_URL="$1" ;;
    client) [[ $# -ge 1 ]] || usage; CLIENT_CMD=("$@") ;;
    -h|--help|help) usage ;;
    *) usage ;;
esac
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "AUTOBAHN_TIMEOUT must be a number of seconds, got '$TIMEOUT'"
command -v "$PY3" >/dev/null 2>&1 || die "python3 not found (needed for check.py)"
command -v timeout >/dev/null 2>&1 || die "'timeout' (coreutils) not found"

# Validate the server URL before doing anything else.
if [[ "$MODE" == server ]]; then
    HOSTPORT=$("$PY3" -c '
import sys
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
if u.scheme not in ("ws", "wss") or not u.hostname:
    sys.exit("not a ws:// or wss:// URL: %r" % sys.argv[1])
print(u.hostname, u.port or (443 if u.scheme == "wss" else 80))
' "$TARGET_URL") || die "bad server URL '$TARGET_URL' (expected e.g. ws://127.0.0.1:9001)"
    read -r HOST PORT <<<"$HOSTPORT"
fi

# Install wstest if needed (fast no-op when already installed).
"$HERE/setup.sh" || die "setup.sh failed"
[[ -x "$WSTEST" ]] || die "$WSTEST missing after setup.sh"

OUTDIR="${AUTOBAHN_OUTDIR:-$HERE/reports/$MODE}"
# The report dir is wiped; refuse if it holds anything that is not ours.
if [[ -d "$OUTDIR" && -n "$(ls -A "$OUTDIR" 2>/dev/null)" && ! -e "$OUTDIR/spec.json" \
      && ! -e "$OUTDIR/index.json" && ! -e "$OUTDIR/wstest.log" ]]; then
    die "refusing to wipe $OUTDIR: not empty and not a report dir of a previous run"
fi
rm -rf "$OUTDIR"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
SPEC="$OUTDIR/spec.json"
WSLOG="$OUTDIR/wstest.log"

# ---------------------------------------------------------------- cleanup
BG_PIDS=()
cleanup() {
    local pid
    for pid in "${BG_PIDS[@]:-}"; do
        [[ -n "$pid" ]] || continue
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- helpers
# write_spec MODE URL: generates $SPEC from AUTOBAHN_CASES / AUTOBAHN_EXCLUDE.
write_spec() {
    "$PY3" - "$SPEC" "$1" "$2" "$OUTDIR" "$CASES" "$EXCLUDE" "$AGENT" <<'PY'
import json, sys
path, mode, url, outdir, cases, exclude, agent = sys.argv[1:]
split = lambda s: [c.strip() for c in s.split(",") if c.strip()]
spec = {"outdir": outdir, "cases": split(cases), "exclude-cases": split(exclude),
        "exclude-agent-cases": {}, "options": {"failByDrop": False}}
if not spec["cases"]:
    sys.exit("AUTOBAHN_CASES is empty")
if mode == "fuzzingclient":
    spec["servers"] = [{"agent": agent, "url": url}]
else:
    spec["url"] = url
with open(path, "w") as f:
    json.dump(spec, f, indent=2)
    f.write("\n")
PY
}

# tcp_open HOST PORT: true if something accepts TCP connections there.
tcp_open() {
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# port_free PORT: true if nothing listens on 127.0.0.1:PORT.
port_free() {
    "$PY3" - "$1" <<'PY'
import socket, sys
s = socket.socket()
# SO_REUSEADDR as Twisted uses it: TIME_WAIT leftovers of a previous run
# must not make the port look taken; only a listener does.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen(1)
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}

free_port() {
    "$PY3" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

cases_started() { grep -c '^Running test case ID' "$WSLOG" 2>/dev/null || true; }
last_case() { grep '^Running test case ID' "$WSLOG" 2>/dev/null | tail -n1 | awk '{print $5}'; }

# start_wstest ARGS...: wstest in the background under `timeout`, output to
# $WSLOG (and the terminal with AUTOBAHN_VERBOSE=1). Sets WSTEST_PID.
start_wstest() {
    : > "$WSLOG"
    # timeout puts itself and wstest in their own process group and forwards
    # SIGTERM to wstest; -k escalates to SIGKILL.
    PYTHONUNBUFFERED=1 timeout -k 15 "$TIMEOUT" "$WSTEST" "$@" >>"$WSLOG" 2>&1 </dev/null &
    WSTEST_PID=$!
    BG_PIDS+=("$WSTEST_PID")
    if [[ "$VERBOSE" == 1 ]]; then
        tail -n +1 -f --pid="$WSTEST_PID" "$WSLOG" >&2 &
        BG_PIDS+=("$!")
    fi
}

show_log_tail() {
    log "last lines of $WSLOG:"
    tail -n "${1:-20}" "$WSLOG" | sed 's/^/    /' >&2 || true
}

expected_cases() {
    sed -n 's/^Ok, will run \([0-9][0-9]*\) test cases.*/\1/p' "$WSLOG" | head -n1
}

run_check() {
    local elapsed="$1"; shift
    local expect
    expect="$(expected_cases)"
    "$PY3" "$HERE/check.py" "$OUTDIR" --agent "$AGENT" --elapsed "$elapsed" ${expect:+--expect "$expect"} "$@"
}

log "mode=$MODE cases=[$CASES] exclude=[$EXCLUDE] timeout=${TIMEOUT}s"
log "reports: $OUTDIR"
START=$(date +%s)

# ================================================================ server mode
if [[ "$MODE" == server ]]; then

    # The server should already be up; give it a few seconds in case it was
    # just started.
    for i in $(seq 1 "${AUTOBAHN_CONNECT_WAIT:-20}"); do
        tcp_open "$HOST" "$PORT" && break
        [[ $i -eq 1 ]] && log "waiting for a server to listen on $HOST:$PORT ..."
        sleep 0.5
    done
    tcp_open "$HOST" "$PORT" || die "nothing accepts connections at $HOST:$PORT ($TARGET_URL); start the server under test first"

    write_spec fuzzingclient "$TARGET_URL"
    log "running wstest -m fuzzingclient against $TARGET_URL (log: $WSLOG)"
    start_wstest -m fuzzingclient -s "$SPEC"

    last_report=$START
    while kill -0 "$WSTEST_PID" 2>/dev/null; do
        sleep 1
        [[ "$(expected_cases)" == 0 ]] && die "no case matches AUTOBAHN_CASES=[$CASES] minus AUTOBAHN_EXCLUDE=[$EXCLUDE]"
        now=$(date +%s)
        if (( now - last_report >= 30 )); then
            log "... $(( now - START ))s: $(cases_started)/$(expected_cases) cases started, current: $(last_case)"
            last_report=$now
        fi
    done
    rc=0; wait "$WSTEST_PID" || rc=$?
    ELAPSED=$(( $(date +%s) - START ))
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        show_log_tail
        die "wstest timed out after ${TIMEOUT}s (AUTOBAHN_TIMEOUT); last case started: $(last_case)"
    elif [[ $rc -ne 0 ]]; then
        show_log_tail
        die "wstest exited with status $rc"
    fi
    if grep -q '^Connection to .* failed' "$WSLOG"; then
        show_log_tail 5
        log "wstest could not (re)connect to the server: it stopped early, so cases are missing"
    fi
    log "wstest finished in ${ELAPSED}s"
    rc=0; run_check "$ELAPSED" || rc=$?
    exit "$rc"
fi

# ================================================================ client mode
if [[ -n "${AUTOBAHN_PORT:-}" ]]; then
    PORT="$AUTOBAHN_PORT"
    [[ "$PORT" =~ ^[0-9]+$ ]] || die "AUTOBAHN_PORT must be a port number, got '$PORT'"
    port_free "$PORT" || die "AUTOBAHN_PORT=$PORT: 127.0.0.1:$PORT is already in use"
else
    PORT=9002
    if ! port_free "$PORT"; then
        PORT="$(free_port)"
        log "port 9002 is in use; using free port $PORT instead"
    fi
fi
URL="ws://127.0.0.1:$PORT"
write_spec fuzzingserver "$URL"

log "starting wstest -m fuzzingserver on $URL (log: $WSLOG)"
# -u 0: no embedded HTTP report server (it would otherwise grab port 8080).
start_wstest -m fuzzingserver -s "$SPEC" -u 0
for i in $(seq 1 120); do
    kill -0 "$WSTEST_PID" 2>/dev/null || { show_log_tail; die "wstest fuzzingserver exited during startup"; }
    tcp_open 127.0.0.1 "$PORT" && break
    sleep 0.25
done
tcp_open 127.0.0.1 "$PORT" || { show_log_tail; die "wstest fuzzingserver did not listen on $PORT within 30s"; }
[[ "$(expected_cases)" == 0 ]] && die "no case matches AUTOBAHN_CASES=[$CASES] minus AUTOBAHN_EXCLUDE=[$EXCLUDE]"
log "fuzzingserver listening ($(expected_cases) cases); running: ${CLIENT_CMD[*]} $URL"

timeout -k 15 "$TIMEOUT" "${CLIENT_CMD[@]}" "$URL" </dev/null &
CLIENT_PID=$!
BG_PIDS+=("$CLIENT_PID")
client_rc=0; wait "$CLIENT_PID" || client_rc=$?
ELAPSED=$(( $(date +%s) - START ))

if ! kill -0 "$WSTEST_PID" 2>/dev/null; then
    wait "$WSTEST_PID" || true
    show_log_tail
    log "wstest fuzzingserver died while the client ran"
fi
cleanup   # stop the fuzzing server (index.json is written on /updateReports)

if [[ $client_rc -eq 124 || $client_rc -eq 137 ]]; then
    log "client timed out after ${TIMEOUT}s (AUTOBAHN_TIMEOUT); last case started: $(last_case)"
elif [[ $client_rc -ne 0 ]]; then
    log "client command exited with status $client_rc"
fi
log "client finished in ${ELAPSED}s"
rc=0; run_check "$ELAPSED" || rc=$?
if [[ $client_rc -ne 0 ]]; then
    log "FAIL: the client command failed (status $client_rc)"
    exit 1
fi
exit "$rc"
