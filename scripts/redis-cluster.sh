#!/usr/bin/env bash
# Start a real Redis Cluster on loopback: three masters, each with a replica
# (Debian's redis-server and `redis-cli --cluster create`), on free ports, in a
# temporary directory. For measurements and tests of the cluster work (#17):
# docs/scaling.md uses it for the per-shard figures.
#
#   scripts/redis-cluster.sh            # start, print the seed ports, wait; Ctrl-C stops and cleans up
#   scripts/redis-cluster.sh -- CMD...  # start, run CMD with REDIS_CLUSTER=host:port,host:port,... , stop
#
# The cluster's nodes listen on 127.0.0.1 only and persist nothing
# (--save '' --appendonly no).
set -euo pipefail
MASTERS=${MASTERS:-3}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/tether-redis-cluster.XXXXXX")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
PORTS=()
for _ in $(seq $((MASTERS * 2))); do
  # The cluster bus listens on port + 10000: both must be free.
  while :; do p=$(free_port); [ "$p" -lt 55535 ] && ! (exec 3<>/dev/tcp/127.0.0.1/$((p + 10000))) 2>/dev/null && break; done
  mkdir -p "$DIR/$p"
  (cd "$DIR/$p" && exec redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file nodes.conf \
     --cluster-node-timeout 2000 --save '' --appendonly no >"$DIR/$p/log" 2>&1) &
  PIDS+=($!); PORTS+=("$p")
done
for p in "${PORTS[@]}"; do
  for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
done
ADDRS=(); for p in "${PORTS[@]}"; do ADDRS+=("127.0.0.1:$p"); done
redis-cli --cluster create "${ADDRS[@]}" --cluster-replicas 1 --cluster-yes >"$DIR/create.log"
for _ in $(seq 200); do
  redis-cli -p "${PORTS[0]}" cluster info | grep -q 'cluster_state:ok' && break; sleep 0.1
done
SEEDS=$(IFS=,; echo "${ADDRS[*]}")
echo "redis cluster up: $SEEDS (dir $DIR)" >&2
if [ "${1:-}" = "--" ]; then
  shift
  REDIS_CLUSTER=$SEEDS "$@"
else
  redis-cli -p "${PORTS[0]}" cluster nodes >&2
  wait
fi
