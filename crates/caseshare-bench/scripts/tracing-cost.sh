#!/usr/bin/env bash
# Issue 16: the cost of tracing, every figure of docs/BENCHMARKS.md "The cost
# of tracing (issue #16)" in one run: the embedded broker with trace export
# off, on with sampling 1.0 (always_on), and on with a parent-based 10%
# sampler, exporting to the bench's in-process OTLP sink (--otlp-sink).
# Every publish carries its own W3C trace context, 10% of them flagged
# sampled (--trace-context 0.1), in every configuration, so the workload is
# the same. Two rounds, configurations interleaved.
# Usage: crates/caseshare-bench/scripts/tracing-cost.sh [OUT_DIR]
# Needs a release build: cargo build --release -p caseshare-bench
set -euo pipefail
out=${1:-/var/tmp/caseshare-bench-issue16}
target=${CARGO_TARGET_DIR:-target}
data=${BENCH_DATA_DIR:-/var/tmp/bench}
rounds=${ROUNDS:-2}
# Which workloads: 1 (pipelined, as fast as possible), 2 (2,000 events/s).
workloads=${WORKLOADS:-1 2}
mkdir -p "$out" "$data"
B="$target/release/caseshare-bench --embedded --data-dir $data --trace-context 0.1"
# name, then `env` assignments and bench flags for each configuration.
off=()
always=(OTEL_TRACES_SAMPLER=always_on)
ratio=(OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.1)
# always_on with a span queue large enough that nothing is dropped.
bigq=(OTEL_TRACES_SAMPLER=always_on OTEL_BSP_MAX_QUEUE_SIZE=1048576)
run() {
  local name=$1 sink=$2; shift 2
  local -n vars=$1; shift
  echo "### $name: ${vars[*]} $sink $* (load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$out/log.txt"
  env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT "${vars[@]}" \
    $B $sink "$@" --json-out "$out/$name.json" 2>>"$out/stderr.txt" |
    tee -a "$out/log.txt" || echo "### $name FAILED" | tee -a "$out/log.txt"
}
git log -1 --format='commit %h %cd' | tee "$out/log.txt"
for r in $(seq 1 "$rounds"); do
  # (1) pipelined publish rate and p99, one subscriber.
  if [[ " $workloads " == *" 1 "* ]]; then
    run "r$r-1-off" "" off --events 200000
    run "r$r-1-always" --otlp-sink always --events 200000
    run "r$r-1-ratio10" --otlp-sink ratio --events 200000
    run "r$r-1-always-bigq" --otlp-sink bigq --events 200000
  fi
  # (2) publish and publish -> delivery latency at a fixed 2,000 events/s.
  if [[ " $workloads " == *" 2 "* ]]; then
    run "r$r-2-off" "" off --events 20000 --rate 2000
    run "r$r-2-always" --otlp-sink always --events 20000 --rate 2000
    run "r$r-2-ratio10" --otlp-sink ratio --events 20000 --rate 2000
    run "r$r-2-always-bigq" --otlp-sink bigq --events 20000 --rate 2000
  fi
done
