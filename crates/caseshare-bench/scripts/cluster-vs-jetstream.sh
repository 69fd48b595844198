#!/usr/bin/env bash
# Issue 15: Caseshare cluster mode vs raw JetStream R3, every figure of
# docs/BENCHMARKS.md "Cluster mode vs JetStream R3 (issue #15)" in one run.
# Usage: crates/caseshare-bench/scripts/cluster-vs-jetstream.sh [OUT_DIR]
# Needs a release build (`cargo build --release -p caseshare-bench -p
# caseshare-cli --bins`; the bench runs the `caseshare` binary beside it, or
# $CASESHARE_BIN) and nats-server >= 2.10 ($CASESHARE_NATS_SERVER, e.g. the
# pinned 2.15.1 `tests/run-all.sh` installs into <target>/nats-server-venv).
set -euo pipefail
out=${1:-/var/tmp/caseshare-bench-issue15}
target=${CARGO_TARGET_DIR:-target}
data=${BENCH_DATA_DIR:-/var/tmp/bench}
mkdir -p "$out" "$data"
B="$target/release/caseshare-bench --embedded --data-dir $data"
run() {
  local name=$1; shift
  echo "### $name: $* (load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$out/log.txt"
  $B "$@" --json-out "$out/$name.json" 2>&1 | tee -a "$out/log.txt" ||
    echo "### $name FAILED" | tee -a "$out/log.txt"
}
git log -1 --format='commit %h %cd' | tee "$out/log.txt"
# (1) pipelined publish rate, one subscriber.
run 1-always-both --target both --cluster 2 --nats-cluster 3 --nats-sync always --events 200000
run 1-default-nats --target nats --nats-cluster 3 --nats-sync default --events 200000
# (2) publish -> delivery latency at a fixed 2,000 events/s.
run 2-always-both --target both --cluster 2 --nats-cluster 3 --nats-sync always --events 20000 --rate 2000
run 2-default-nats --target nats --nats-cluster 3 --nats-sync default --events 20000 --rate 2000
# (3) time without writes after the stream leader is SIGKILLed.
run 3-always-both --failover --target both --cluster 2 --nats-cluster 3 --nats-sync always \
  --events 8000 --rate 200 --kill-after-secs 10
run 3-default-nats --failover --target nats --nats-cluster 3 --nats-sync default \
  --events 8000 --rate 200 --kill-after-secs 10
# (4) what limits cluster mode: publishing alone; subscriber on the publishing replica.
run 4-publish-alone --target caseshare --cluster 2 --events 100000 --subscribers 0
run 4-same-replica --target caseshare --cluster 2 --subscribe-replica 0 --events 100000
