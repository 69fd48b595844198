#!/usr/bin/env bash
# Makes the folder the compose files mount read-only (default
# deploy/compose/secrets, or the folder given):
#   pki/   a development PKI from `caseshare dev-pki`: ca.pem, server.pem,
#          server.key (for the brokers) and client certificates for admin,
#          auditor and three sample agencies (for you). Not for production:
#          put your own CA's files there instead, with the same names.
#   keys/  the broker's keys: checkpoint.skey (the audit log's signing key)
#          and pseudonym.key, made by starting a broker once on an empty
#          data directory (there is no key-making command yet). Every broker
#          of a cluster must have the same two keys: keep this folder.
# The files the brokers read are then given to the image's user (read from
# the image), mode 0600, as the broker requires; run as root or with sudo.
# CASESHARE_CHOWN=0 leaves them yours (for `kubectl create secret`).
#   bash deploy/compose/make-secrets.sh [DIR]
# Uses `caseshare` from CASESHARE_BIN (or PATH); without one, the image
# ${CASESHARE_IMAGE:-caseshare:0.1.0} itself.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${1:-$HERE/secrets}"
IMAGE="${CASESHARE_IMAGE:-caseshare:0.1.0}"
ORIGIN="${CASESHARE_AUDIT_ORIGIN:-caseshare.local/audit}"
[ -e "$OUT" ] && { echo "$OUT exists: keep it, or remove it to make new keys (a new pseudonym or signing key means a new broker)" >&2; exit 1; }
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

BIN="${CASESHARE_BIN:-$(command -v caseshare || true)}"
if [ -n "$BIN" ]; then
  cs() { "$BIN" "$@"; }
  path() { echo "$OUT/$1"; }
else
  cs() { docker run --rm --user "$(id -u):$(id -g)" -v "$OUT:/out" --network none \
    -e CASESHARE_AUDIT_ORIGIN="$ORIGIN" --entrypoint /usr/local/bin/caseshare "$IMAGE" "$@"; }
  path() { echo "/out/$1"; }
fi

cs dev-pki --out "$(path pki)"

# The keys: a broker started once on an empty data directory writes them to
# <data_dir>/secrets/ and is stopped as soon as they are there.
if [ -n "$BIN" ]; then
  CASESHARE_AUDIT_ORIGIN="$ORIGIN" "$BIN" serve --data-dir "$OUT/keygen" \
    --listen 127.0.0.1:0 --ops-listen 127.0.0.1:0 > "$OUT/keygen.log" 2>&1 &
  pid=$!
  stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
else
  cid=$(docker run -d --user "$(id -u):$(id -g)" -v "$OUT:/out" --network none \
    -e CASESHARE_AUDIT_ORIGIN="$ORIGIN" --entrypoint /usr/local/bin/caseshare "$IMAGE" \
    serve --data-dir /out/keygen --listen 127.0.0.1:0 --ops-listen 127.0.0.1:0)
  stop() { docker rm -f "$cid" > /dev/null; }
fi
for _ in $(seq 1 300); do
  [ -s "$OUT/keygen/secrets/checkpoint.skey" ] && [ -s "$OUT/keygen/secrets/pseudonym.key" ] && break
  sleep 0.1
done
stop
[ -s "$OUT/keygen/secrets/pseudonym.key" ] || { echo "no keys were made; see $OUT/keygen.log" >&2; exit 1; }
mkdir -p "$OUT/keys"
cp "$OUT/keygen/secrets/checkpoint.skey" "$OUT/keygen/secrets/pseudonym.key" "$OUT/keys/"
rm -rf "$OUT/keygen" "$OUT/keygen.log"

# Hand the brokers' files to the image's user (e.g. "10001" or "65532:65532").
user="$(docker image inspect -f '{{.Config.User}}' "$IMAGE" 2>/dev/null || true)"
files=("$OUT/pki/server.key" "$OUT/keys/checkpoint.skey" "$OUT/keys/pseudonym.key")
chmod 600 "${files[@]}"
if [ "${CASESHARE_CHOWN:-1}" = 0 ]; then
  user=""
  echo "CASESHARE_CHOWN=0: the files stay yours, mode 0600" >&2
elif [ -z "$user" ]; then
  echo "image $IMAGE not found: before starting, run  sudo chown UID ${files[*]}  with the image's user" >&2
elif [ "$(id -u)" -eq 0 ]; then
  chown "$user" "${files[@]}"
else
  sudo chown "$user" "${files[@]}"
fi
echo "made $OUT (pki/ and keys/); the brokers' files belong to ${user:-$(id -un)}"
