#!/usr/bin/env bash
# Cross-node publish throughput through one Redis, and what it costs Redis
# (#17, docs/BENCHMARKS-cluster.md "One Redis, batched"): two `tether serve`
# nodes on one redis-server, publishers on node A, one receiver following
# every topic on node B (crates/tether-hub/examples/cluster_bench.rs, each
# publisher with 256 unacknowledged publishes in flight). Reports
# publishes/s and, from /proc (utime + stime), CPU per publish of Redis, of
# the publishing node and of the receiving node.
#
# With BASELINE=/path/to/older/tether, the same measurement runs for both
# binaries, interleaved round by round (each pair on a fresh Redis), so the
# ratio is taken in one run.
#
#   scripts/bench-redis-publish.sh                    # 200 topics, 3 rounds of 10 s
#   BASELINE=/tmp/tether-old ROUNDS=3 TOPICS=1000 scripts/bench-redis-publish.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TOPICS=${TOPICS:-200}
PUBLISHERS=${PUBLISHERS:-4}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
ROUNDS=${ROUNDS:-3}
TARGET=${CARGO_TARGET_DIR:-target}
cargo build -j 1 --release -q -p tether-cli
cargo build -j 1 --release -q -p tether-hub --features redis --example cluster_bench
BIN=${BIN:-$TARGET/release/tether}
BENCH=$TARGET/release/examples/cluster_bench
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
HZ=$(getconf CLK_TCK)

one() { # label binary
  local label=$1 bin=$2 rp a b rpid apid bpid
  rp=$(free_port); a=$(free_port); b=$(free_port)
  redis-server --port "$rp" --bind 127.0.0.1 --save '' --appendonly no >/dev/null & rpid=$!; PIDS+=($rpid)
  wait_port "$rp"
  local opts=(--message-rate 0 --subscribe-rate 0 --queue-max-messages 65536 --broker "redis://127.0.0.1:$rp")
  RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$a" "${opts[@]}" >/dev/null & apid=$!; PIDS+=($apid)
  RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$b" "${opts[@]}" >/dev/null & bpid=$!; PIDS+=($bpid)
  wait_port "$a"; wait_port "$b"; sleep 0.5
  local r0 a0 b0 n0 out n1
  r0=$(ticks $rpid); a0=$(ticks $apid); b0=$(ticks $bpid)
  n0=$(redis-cli -p "$rp" info stats | awk -F: '/^total_commands_processed/{print $2+0}')
  out=$($BENCH --topics "$TOPICS" --seconds "$SECONDS_PER_RUN" --rate 0 --publishers "$PUBLISHERS" --receivers 1 \
    --publish "ws://127.0.0.1:$a/" --receive "ws://127.0.0.1:$b/")
  local r1 a1 b1 seqs
  r1=$(ticks $rpid); a1=$(ticks $apid); b1=$(ticks $bpid)
  # Every publish that got a seq, warmup and stop messages included: the sum of the topics' seq.
  seqs=$(for i in $(seq 0 $((TOPICS - 1))); do echo "HGET tether:{bench-$i}:seq seq"; done | redis-cli -p "$rp" | awk '{s += $1} END {print s + 0}')
  [ "$TOPICS" = 1 ] && seqs=$(redis-cli -p "$rp" hget 'tether:{bench}:seq' seq)
  python3 - "$label" "$out" "$seqs" "$HZ" "$((r1 - r0))" "$((a1 - a0))" "$((b1 - b0))" "$(cut -d' ' -f1 /proc/loadavg)" <<'PY'
import re, sys
label, out, seqs, hz, r, a, b, load = sys.argv[1:]
seqs, hz = int(seqs), int(hz)
pub = re.search(r'published (\d+)/s', out).group(1)
lat = re.search(r'latency ms p50 ([\d.]+) p90 [\d.]+ p99 ([\d.]+)', out)
us = lambda t: int(t) / hz * 1e6 / max(seqs, 1)
print(f"{label:>10}: {int(pub):>7} publishes/s, p50 {lat.group(1)} ms p99 {lat.group(2)} ms; CPU per publish: "
      f"redis {us(r):.1f} us, publishing node {us(a):.1f} us, receiving node {us(b):.1f} us ({seqs} publishes; load {load})")
PY
  kill $apid $bpid $rpid; wait $apid $bpid $rpid 2>/dev/null || true
}

echo "$(nproc) CPUs, load average $(cut -d' ' -f1 /proc/loadavg); $TOPICS topics, $PUBLISHERS publishers, $SECONDS_PER_RUN s per run"
for round in $(seq "$ROUNDS"); do
  one "this" "$BIN"
  [ -n "${BASELINE:-}" ] && one "baseline" "$BASELINE"
done
