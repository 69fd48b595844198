#!/usr/bin/env bash
# Python interop suite: a Python 3.11 gRPC client against the real broker.
#   bash tests/interop/python/run.sh [pytest args...]
# Env: CASESHARE_BIN (default <repo>/target/debug/caseshare), PYTHON (default python3.11).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
VENV="$HERE/.venv"
GEN="$HERE/gen"

fail() { echo "interop/python: $*" >&2; exit 1; }

CASESHARE_BIN="${CASESHARE_BIN:-$REPO/target/debug/caseshare}"
[[ -f "$CASESHARE_BIN" && -x "$CASESHARE_BIN" ]] ||
  fail "broker binary not found or not executable: $CASESHARE_BIN (build it with 'cargo build -p caseshare-cli' or set CASESHARE_BIN)"
CASESHARE_BIN="$(cd "$(dirname "$CASESHARE_BIN")" && pwd)/$(basename "$CASESHARE_BIN")"
export CASESHARE_BIN

if [[ -z "${PYTHON:-}" ]]; then
  if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi
fi
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' ||
  fail "$PYTHON is $("$PYTHON" --version 2>&1); Python 3.11 or later is needed"

# The venv, (re)installed whenever requirements.txt changes.
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "interop/python: creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV" || fail "could not create the venv"
fi
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "interop/python: installing pinned packages"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$HERE/requirements.txt" || fail "pip install failed"
  echo "$want" >"$stamp"
fi

# Stubs from proto/, regenerated every run (nothing generated is committed).
rm -rf "$GEN"
mkdir -p "$GEN"
mapfile -t protos < <(cd "$REPO/proto" && find . -name '*.proto' | sed 's|^\./||' | sort)
[[ ${#protos[@]} -gt 0 ]] || fail "no .proto files under $REPO/proto"
(cd "$REPO/proto" && "$VENV/bin/python" -m grpc_tools.protoc -I . \
  --python_out="$GEN" --pyi_out="$GEN" --grpc_python_out="$GEN" "${protos[@]}") ||
  fail "protoc failed"

cd "$HERE"
export PYTHONDONTWRITEBYTECODE=1
set +e
"$VENV/bin/python" -m pytest "$@"
rc=$?
set -e
if [[ $rc -ne 0 ]]; then
  echo "interop/python: FAILED (pytest exit code $rc)" >&2
fi
exit "$rc"
