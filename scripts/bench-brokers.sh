#!/usr/bin/env bash
# Publishes/s and publish-to-delivery latency over many topics, in one run,
# for the three brokers (#17, docs/BENCHMARKS-cluster.md "Three brokers"):
#   - memory: one `tether serve`;
#   - one Redis: two nodes on one redis-server, publish on A, receive on B;
#   - 3-shard cluster: two nodes on a 3-master + 3-replica Redis Cluster
#     (scripts/redis-cluster.sh), publish on C, receive on D; then the same
#     with `?replicas=0` (acks do not WAIT for the replica), on E and F.
# Load generator: crates/tether-hub/examples/cluster_bench.rs (release).
#
#   scripts/bench-brokers.sh                  # 200 topics, 10 s per run
#   TOPICS=100 PUBLISHERS=2 SECONDS_PER_RUN=5 scripts/bench-brokers.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${REDIS_CLUSTER:-}" ]; then
  cargo build -j 1 --release -q -p tether-cli
  cargo build -j 1 --release -q -p tether-hub --features redis --example cluster_bench
  exec scripts/redis-cluster.sh -- "$0" "$@"
fi
TOPICS=${TOPICS:-200}
PUBLISHERS=${PUBLISHERS:-4}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
RATE=${RATE:-2000}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release/tether
BENCH=$TARGET/release/examples/cluster_bench
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
load() { cut -d' ' -f1 /proc/loadavg; }

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null & PIDS+=($!)
wait_port "$REDIS_PORT"
OPTS=(--message-rate 0 --subscribe-rate 0 --queue-max-messages 65536)
serve() { RUST_LOG=warn $BIN serve --listen "127.0.0.1:$1" "${OPTS[@]}" "${@:2}" >/dev/null & PIDS+=($!); }
M=$(free_port); A=$(free_port); B=$(free_port); C=$(free_port); D=$(free_port); E=$(free_port); F=$(free_port)
serve "$M"
serve "$A" --broker "redis://127.0.0.1:$REDIS_PORT"
serve "$B" --broker "redis://127.0.0.1:$REDIS_PORT"
serve "$C" --broker "redis-cluster://$REDIS_CLUSTER"
serve "$D" --broker "redis-cluster://$REDIS_CLUSTER"
serve "$E" --broker "redis-cluster://$REDIS_CLUSTER?replicas=0"
serve "$F" --broker "redis-cluster://$REDIS_CLUSTER?replicas=0"
for p in $M $A $B $C $D $E $F; do wait_port "$p"; done; sleep 1

run() { echo "$1 (load $(load)): $($BENCH --topics "$TOPICS" --seconds "$SECONDS_PER_RUN" "${@:2}")"; }
echo "load average at start: $(load); $TOPICS topics, $PUBLISHERS publishers"
echo "== throughput: $PUBLISHERS publishers, each with a 256-publish window, 1 receiver following every topic"
for path in "memory:$M:$M" "one redis:$A:$B" "3-shard cluster:$C:$D" "3-shard cluster, replicas=0:$E:$F"; do
  IFS=: read -r name pub rec <<<"$path"
  run "$name" --rate 0 --publishers "$PUBLISHERS" --receivers 1 --publish "ws://127.0.0.1:$pub/" --receive "ws://127.0.0.1:$rec/"
done
echo "== latency: $RATE msg/s in all, 4 receivers following every topic"
for path in "memory:$M:$M" "one redis:$A:$B" "3-shard cluster:$C:$D" "3-shard cluster, replicas=0:$E:$F"; do
  IFS=: read -r name pub rec <<<"$path"
  run "$name" --rate "$RATE" --publishers "$PUBLISHERS" --receivers 4 --publish "ws://127.0.0.1:$pub/" --receive "ws://127.0.0.1:$rec/"
done
echo "load average at end: $(load)"
