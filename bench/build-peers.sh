#!/usr/bin/env bash
# Builds the benchmark peer servers. Safe to run again: cargo and npm only redo what changed.
#   bench/peers -> cargo build --release (jobs from CARGO_BUILD_JOBS, default 1, leaving
#                  a core free on the 2-core machines); binaries in bench/peers/target/release/
#   bench/node  -> npm ci (npm install when there is no package-lock.json)
# SKIP_RUST=1 or SKIP_NODE=1 leaves that half out.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"

log() { printf '[build-peers] %s\n' "$*"; }

if [[ "${SKIP_RUST:-0}" != 1 ]]; then
    command -v cargo >/dev/null || { log "cargo not found"; exit 1; }
    log "cargo build --release -j ${CARGO_BUILD_JOBS} in bench/peers ..."
    start=$SECONDS
    (cd "$here/peers" && cargo build --release --locked -j "$CARGO_BUILD_JOBS")
    log "rust peers built in $((SECONDS - start))s:"
    for bin in tungstenite-echo fastwebsockets-echo tungstenite-broadcast; do
        log "  $here/peers/target/release/$bin"
    done
fi

if [[ "${SKIP_NODE:-0}" != 1 ]]; then
    command -v npm >/dev/null || { log "npm not found"; exit 1; }
    cd "$here/node"
    lock_is_newer() { [[ node_modules/.package-lock.json -nt package-lock.json && node_modules/.package-lock.json -nt package.json ]]; }
    if [[ -f package-lock.json ]] && [[ -d node_modules/ws ]] && lock_is_newer; then
        log "bench/node: node_modules up to date with package-lock.json, skipping npm ci"
    elif [[ -f package-lock.json ]]; then
        log "npm ci in bench/node ..."
        npm ci --no-audit --no-fund
    else
        log "npm install in bench/node (no package-lock.json yet) ..."
        npm install --no-audit --no-fund
    fi
    log "node peers: node $here/node/echo.js [--port N] [--deflate], node $here/node/broadcast.js [--port N]"
fi

log "done"
