#!/usr/bin/env bash
# Cross-node broadcast through Redis vs within one node (docs/BENCHMARKS-cluster.md).
# Starts its own redis-server and `tether serve` nodes on loopback ports, runs
# crates/tether-hub/examples/cluster_bench.rs against them, stops them.
#
#   scripts/bench-cluster.sh                 # default: 50 receivers, 10 s per run
#   RECEIVERS=100 SECONDS_PER_RUN=5 scripts/bench-cluster.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RECEIVERS=${RECEIVERS:-50}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
RATE=${RATE:-1000}
cargo build -j 1 --release -q -p tether-cli
cargo build -j 1 --release -q -p tether-hub --example cluster_bench
BIN=target/release/tether
BENCH=target/release/examples/cluster_bench
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
PIDS+=($!); wait_port "$REDIS_PORT"
MEM=$(free_port); A=$(free_port); B=$(free_port)
RUST_LOG=warn $BIN serve --listen 127.0.0.1:$MEM >/dev/null & PIDS+=($!)
RUST_LOG=warn $BIN serve --listen 127.0.0.1:$A --broker redis://127.0.0.1:$REDIS_PORT >/dev/null & PIDS+=($!)
RUST_LOG=warn $BIN serve --listen 127.0.0.1:$B --broker redis://127.0.0.1:$REDIS_PORT >/dev/null & PIDS+=($!)
wait_port $MEM; wait_port $A; wait_port $B; sleep 0.5

run() { $BENCH --receivers "$RECEIVERS" --seconds "$SECONDS_PER_RUN" "$@"; }
echo "== fixed rate ($RATE msg/s x $RECEIVERS receivers): latency"
run --rate "$RATE" --publish ws://127.0.0.1:$MEM/ --receive ws://127.0.0.1:$MEM/
run --rate "$RATE" --publish ws://127.0.0.1:$A/ --receive ws://127.0.0.1:$A/
run --rate "$RATE" --publish ws://127.0.0.1:$A/ --receive ws://127.0.0.1:$B/
echo "== as fast as a 256-publish window allows: throughput"
run --rate 0 --publish ws://127.0.0.1:$MEM/ --receive ws://127.0.0.1:$MEM/
run --rate 0 --publish ws://127.0.0.1:$A/ --receive ws://127.0.0.1:$A/
run --rate 0 --publish ws://127.0.0.1:$A/ --receive ws://127.0.0.1:$B/
