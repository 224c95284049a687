#!/usr/bin/env bash
# The mock cloud keeps its own contract: schemathesis (PyPI) generates
# requests from the `/openapi.json` the cloud serves (its schemas derived
# from the Rust types) and checks every answer: no server error, every
# schema-valid request accepted, every schema-violating one refused, every
# status documented. Fixed seeds and a bounded number of examples, so the
# run is the same every time. The admin endpoints (fault injection, stats)
# are test furniture and left out.
#
#   scripts/schemathesis.sh PATH_TO_PORTICO_BINARY
set -euo pipefail

PORTICO="${1:?usage: $0 PATH_TO_PORTICO_BINARY}"
ST_VERSION="${ST_VERSION:-4.32.5}"
TOOLS="${PORTICO_TOOLS:-$HOME/.cache/portico-tools}"
VENV="$TOOLS/schemathesis-venv"
PORT="${SLB_FUZZ_PORT:-18480}"
URL="http://127.0.0.1:$PORT"

log() { echo "schemathesis.sh: $*" >&2; }

if ! "$VENV/bin/python" -c "import schemathesis, sys; sys.exit(schemathesis.__version__ != '$ST_VERSION')" 2>/dev/null; then
    log "installing schemathesis==$ST_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION" >&2
fi

work="$(mktemp -d)"
"$PORTICO" slb-server --listen "127.0.0.1:$PORT" --vip-range 127.247.0.0/16 >"$work/cloud.log" 2>&1 &
cloud=$!
trap 'kill "$cloud" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 50); do
    curl -sf "$URL/openapi.json" >/dev/null && break
    sleep 0.1
done

for seed in 1 2 3; do
    log "seed $seed"
    (cd "$work" && "$VENV/bin/st" run "$URL/openapi.json" --url "$URL" \
        --checks all --max-examples 30 --seed "$seed" \
        --exclude-path-regex '^/admin') || {
        log "the cloud and its OpenAPI document disagree (seed $seed); see above"
        exit 1
    }
done
log "no failure over 3 seeded runs"
