#!/usr/bin/env bash
# Every check and test of portico, on a fresh machine: installs what the
# tests need (cargo-nextest, kubectl + helm, the moto AWS emulator, a real
# control plane built from the kube-apiserver and etcd Go modules), starts
# the emulator and the control plane, then runs fmt, clippy, all tests (on
# the API stand-in and on the real kube-apiserver), the RBAC check from the
# audit log, and the demo end to end.
#
#   ./scripts/test.sh
#
# Builds go to $CARGO_TARGET_DIR (default ~/.cache/portico-target, outside the
# clone, so later runs reuse it).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/portico-target}"
export PORTICO_TOOLS="${PORTICO_TOOLS:-$HOME/.cache/portico-tools}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
step() { printf '\n=== %s (%s)\n' "$*" "$(date +%T)"; }

step "tools"
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
export PATH="$(scripts/tools.sh):$PATH"
kubectl version --client | sed -n 1p  # sed reads to the end: no SIGPIPE under pipefail
helm version --short

command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }
# Go >= the version tests/control-plane/go.mod names, or a clear error.
scripts/control-plane.sh check-go

step "real control plane (kube-apiserver + etcd from Go modules)"
scripts/control-plane.sh build
cleanup() {
    scripts/control-plane.sh stop >/dev/null 2>&1 || true
    scripts/moto.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
# Capture, check, then eval: `eval "$(cmd)"` ignores a failing cmd under set -e.
control_plane_env="$(scripts/control-plane.sh start)" || {
    echo "test.sh: the real control plane did not start (its messages are above)" >&2
    exit 1
}
eval "$control_plane_env"
[[ -n "${PORTICO_REAL_KUBECONFIG:-}" && -n "${PORTICO_REAL_AUDIT_LOG:-}" ]] || {
    echo "test.sh: scripts/control-plane.sh start printed no PORTICO_REAL_KUBECONFIG/PORTICO_REAL_AUDIT_LOG" >&2
    exit 1
}
export PORTICO_REAL_KUBECONFIG PORTICO_REAL_AUDIT_LOG PORTICO_REAL_CONTROL_PLANE

step "moto (AWS emulator)"
moto_env="$(scripts/moto.sh start)" || {
    echo "test.sh: the moto AWS emulator did not start (its messages are above)" >&2
    exit 1
}
eval "$moto_env"
[[ -n "${AWS_ENDPOINT_URL:-}" ]] || {
    echo "test.sh: scripts/moto.sh start printed no AWS_ENDPOINT_URL" >&2
    exit 1
}
export AWS_ENDPOINT_URL
# Without the emulator the AWS tests would skip; here they must fail instead
# (portico_aws::testing::skip).
export PORTICO_REQUIRE_AWS=1

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "tests"
# The RBAC check below reads the audit log from here on: a control plane
# left running by an earlier run keeps that run's requests in its log.
export PORTICO_AUDIT_SINCE="$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)"
cargo nextest run --workspace --all-features --locked --no-fail-fast

step "RBAC: what the controller used (audit log) == what deploy/rbac.yaml grants"
cargo nextest run --workspace --all-features --locked --ignore-default-filter -E 'binary(rbac_audit)' --no-capture
cargo test --workspace --all-features --locked --doc

step "the mock cloud's API against its OpenAPI document (schemathesis)"
cargo build --locked --bin portico
scripts/schemathesis.sh "$CARGO_TARGET_DIR/debug/portico"

step "demo, end to end, 20 runs in a row (from another directory: the examples are built in)"
demo_dir="$(mktemp -d)"
(cd "$demo_dir" && "$CARGO_TARGET_DIR/debug/portico" demo --nodes 3)
for run in $(seq 2 20); do
    (cd "$demo_dir" && "$CARGO_TARGET_DIR/debug/portico" demo --nodes 3 >"$demo_dir/run.log" 2>&1) || {
        cat "$demo_dir/run.log"
        echo "test.sh: demo run $run of 20 failed" >&2
        exit 1
    }
done
echo "demo: 20 of 20 runs passed"

step "all green"
