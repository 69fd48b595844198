#!/usr/bin/env bash
# Makes the folder the compose files mount read-only (default
# deploy/compose/secrets, or the folder given):
#   pki/   a development PKI from `caseshare dev-pki`: ca.pem, server.pem,
#          server.key (for the brokers), client certificates for admin,
#          auditor and three sample agencies (for you), and for the
#          cluster's NATS TLS nats.pem/nats.key (the NATS nodes: names
#          nats-1, nats-2, nats-3) and nats-client.pem/.key (the brokers'
#          NATS client certificate). Not for production: put your own CA's
#          files there instead, with the same names.
#   keys/  the broker's keys from `caseshare keygen`: checkpoint.skey (the
#          audit log's signing key, origin CASESHARE_AUDIT_ORIGIN, default
#          caseshare.local/audit) and pseudonym.key. Every broker of a
#          cluster must have the same two keys: keep this folder.
# The files the brokers read are then given to the image's user (read from
# the image), mode 0600, as the broker requires, and nats.key to the NATS
# image's user (root in the official image); run as root or with sudo.
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

cs dev-pki --out "$(path pki)" --nats-host nats-1 --nats-host nats-2 --nats-host nats-3
cs keygen --out "$(path keys)" --origin "$ORIGIN"

# Hand the brokers' files to the image's user (e.g. "10001" or "65532:65532").
user="$(docker image inspect -f '{{.Config.User}}' "$IMAGE" 2>/dev/null || true)"
files=("$OUT/pki/server.key" "$OUT/pki/nats-client.key" "$OUT/keys/checkpoint.skey" "$OUT/keys/pseudonym.key")
# The NATS image's user (empty: root); the containers drop every
# capability, so even root reads only a key it owns.
nats_user="$(docker image inspect -f '{{.Config.User}}' "${NATS_IMAGE:-nats:2.15.1}" 2>/dev/null || true)"
nats_user="${nats_user:-0}"
chmod 600 "${files[@]}" "$OUT/pki/nats.key"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if [ "${CASESHARE_CHOWN:-1}" = 0 ]; then
  user=""
  echo "CASESHARE_CHOWN=0: the files stay yours, mode 0600" >&2
elif [ -z "$user" ]; then
  echo "image $IMAGE not found: before starting, run  sudo chown UID ${files[*]}  with the image's user" >&2
  as_root chown "$nats_user" "$OUT/pki/nats.key"
else
  as_root chown "$user" "${files[@]}"
  as_root chown "$nats_user" "$OUT/pki/nats.key"
fi
echo "made $OUT (pki/ and keys/); the brokers' files belong to ${user:-$(id -un)}"
