#!/usr/bin/env bash
# Redis-side costs of the Redis broker (docs/scaling.md, "Figures measured
# here"): the broker's own publish script (one topic, one message per
# call) driven by redis-benchmark with
# and without history, plain PUBLISH, Redis memory per topic and per kept
# message, and the same script on one Redis vs a 3-master Redis Cluster
# (scripts/redis-cluster.sh; the script's PUBLISH becomes SPUBLISH there).
#
#   scripts/bench-redis-capacity.sh          # N=300000 publishes per run
#   N=100000 scripts/bench-redis-capacity.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${N:-300000}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/tether-redis-capacity.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
python3 - "$TMP" <<'EOF'
import re, sys
src = open('crates/tether-hub/src/redis_broker/scripts.rs').read()
lua = re.search(r'pub const PUBLISH_BATCH: &str = r#"(.*?)"#;', src, re.S).group(1)
open(sys.argv[1] + '/publish.lua', 'w').write(lua)
open(sys.argv[1] + '/spublish.lua', 'w').write(lua.replace("redis.call('PUBLISH'", "redis.call('SPUBLISH'"))
EOF
BODY=$(printf 'x%.0s' $(seq 64))
rate() { redis-benchmark "$@" 2>&1 | tr '\r' '\n' | grep 'requests per second' | sed 's/.*: \([0-9.]*\) requests per second.*/\1/'; }
used() { redis-cli -p "$1" info memory | awk -F: '/^used_memory:/{print $2+0}'; }
load() { cut -d' ' -f1 /proc/loadavg; }

P=$(free_port)
redis-server --port "$P" --bind 127.0.0.1 --save '' --appendonly no >/dev/null & PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$P" ping >/dev/null 2>&1 && break; sleep 0.05; done
SHA=$(redis-cli -p "$P" script load "$(cat "$TMP/publish.lua")")
script() { # history-size topics
  rate -p "$P" -n "$N" -r "$2" -P 64 -c 4 -q EVALSHA "$SHA" 2 'tether:{t__rand_int__}:seq' 'tether:{t__rand_int__}:log' \
    ep 86400000 'tether:{t}:ch' "$1" 300000 4194304 1 s-1 1700000000000 t "$BODY"
}
echo "load average at start: $(load)"
echo "one redis, publish script, history 1000, 10000 topics: $(script 1000 10000) publishes/s (load $(load))"
redis-cli -p "$P" flushall >/dev/null
echo "one redis, publish script, history off, 100000 topics: $(script 0 100000) publishes/s (load $(load))"
echo "one redis, plain PUBLISH, no subscriber: $(rate -p "$P" -n $((N * 2)) -r 10000 -P 64 -c 4 -q PUBLISH 'tether:{t__rand_int__}:ch' "$BODY") publishes/s (load $(load))"

redis-cli -p "$P" flushall >/dev/null; m0=$(used "$P")
redis-cli -p "$P" config set save '' >/dev/null
for i in $(seq 0 19999); do echo "EVALSHA $SHA 2 tether:{u$i}:seq tether:{u$i}:log ep 86400000 tether:{u$i}:ch 1000 300000 4194304 1 s-1 1700000000000 t $BODY"; done | redis-cli -p "$P" >/dev/null
m1=$(used "$P")
for i in $(seq 0 1999); do for _ in $(seq 99); do echo "EVALSHA $SHA 2 tether:{u$i}:seq tether:{u$i}:log ep 86400000 tether:{u$i}:ch 1000 300000 4194304 1 s-1 1700000000000 t $BODY"; done; done | redis-cli -p "$P" --pipe >/dev/null
m2=$(used "$P")
echo "memory: a topic with history, first message: $(( (m1 - m0) / 20000 )) B; each further 64-byte message: $(( (m2 - m1) / 198000 )) B"
redis-cli -p "$P" flushall >/dev/null; m0=$(used "$P")
script 0 100000 >/dev/null
echo "memory: a topic's sequence hash (history off): $(( ($(used "$P") - m0) / $(redis-cli -p "$P" dbsize) )) B"

# One Redis vs a 3-master cluster, same script with SPUBLISH, keys of one
# slot per node ({tag} is redis-benchmark's per-node hash tag).
redis-cli -p "$P" flushall >/dev/null
SSHA=$(redis-cli -p "$P" script load "$(cat "$TMP/spublish.lua")")
sharded() { # port, extra args
  local port=$1; shift
  rate -p "$port" "$@" -n "$N" -r 100000 -P 64 -c 12 -q EVALSHA "$SSHA" 2 'tether:{tag}t__rand_int__:seq' 'tether:{tag}t__rand_int__:log' \
    ep 86400000 'tether:{tag}:ch' 100 300000 4194304 1 s-1 1700000000000 t "$BODY"
}
one=$(sharded "$P")
echo "one redis, script with SPUBLISH, history 100: $one publishes/s (load $(load))"
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true; PIDS=()
scripts/redis-cluster.sh -- bash -c '
  set -e
  for addr in ${REDIS_CLUSTER//,/ }; do redis-cli -p "${addr##*:}" script load "$(cat '"$TMP"'/spublish.lua)" >/dev/null; done
  first=${REDIS_CLUSTER%%,*}
  redis-benchmark -p "${first##*:}" --cluster -n '"$N"' -r 100000 -P 64 -c 12 -q EVALSHA '"$SSHA"' 2 "tether:{tag}t__rand_int__:seq" "tether:{tag}t__rand_int__:log" \
    ep 86400000 "tether:{tag}:ch" 100 300000 4194304 1 s-1 1700000000000 t '"$BODY"' 2>&1 | tr "\r" "\n" | grep "requests per second" | sed "s/.*: \([0-9.]*\) requests per second.*/\1/" >'"$TMP"'/cluster
' 2>/dev/null
three=$(cat "$TMP/cluster")
echo "3-master cluster (each with a replica), same script: $three publishes/s (load $(load)); ratio $(python3 -c "print(f'{$three/$one:.2f}x')")"
