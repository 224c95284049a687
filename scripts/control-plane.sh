#!/usr/bin/env bash
# A real Kubernetes control plane for the tests: etcd and kube-apiserver,
# built from their Go modules (tests/control-plane/go.mod pins both) and run on
# loopback. No kubelet, scheduler or controller-manager: tests create Node
# objects themselves.
#
#   scripts/control-plane.sh check-go # Go >= the go.mod's `go` line, or a clear error
#   scripts/control-plane.sh build    # once; cached in $PORTICO_CONTROL_PLANE_CACHE/<version>-r<recipe>/bin
#   scripts/control-plane.sh start    # prints `export PORTICO_REAL_KUBECONFIG=...` etc. on stdout
#   scripts/control-plane.sh stop
#   scripts/control-plane.sh restart-apiserver   # same etcd, same certs: watches break, state stays
#   eval "$(scripts/control-plane.sh start)"
#
# What it starts: RBAC authorization, serving certs and service-account keys
# generated with openssl, an admin client certificate (system:masters), a
# NodePort range wide enough for 10,000 single-port Services, and an audit log
# of every request (user, verb, resource, response code) at
# $PORTICO_CP_DIR/audit.log.
#
# Environment:
#   PORTICO_CONTROL_PLANE_CACHE  build cache (default ~/.cache/portico-control-plane)
#   PORTICO_CP_DIR               runtime dir: certs, data, logs (default /tmp/portico-control-plane)
#   PORTICO_CP_PORT              kube-apiserver secure port (default 16443)
#   PORTICO_ETCD_PORT            etcd client port (default 12379)
#
# Everything informational goes to stderr; stdout carries only export lines.
set -euo pipefail

HERE="$(cd "$(dirname "$0")/.." && pwd)"
MODULE="$HERE/tests/control-plane"
VERSION="$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$MODULE/go.mod" | sed -n 1p)"
ETCD_VERSION="$(awk '{ for (i = 1; i < NF; i++) if ($i == "go.etcd.io/etcd/server/v3") { print $(i + 1); exit } }' "$MODULE/go.mod")"
GO_NEEDED="$(awk '$1 == "go" { print $2 }' "$MODULE/go.mod" | sed -n 1p)"
CACHE="${PORTICO_CONTROL_PLANE_CACHE:-$HOME/.cache/portico-control-plane}"
# The cache key is the Kubernetes version and RECIPE: bump RECIPE when the
# way the binaries are built changes them (a cold build takes 20+ minutes).
# The etcd version is not in the path (adding it would have thrown away every
# cache): `cached` asks the cached etcd for its version instead.
RECIPE=2
BIN="$CACHE/$VERSION-r$RECIPE/bin"
DIR="${PORTICO_CP_DIR:-/tmp/portico-control-plane}"
PORT="${PORTICO_CP_PORT:-16443}"
ETCD_PORT="${PORTICO_ETCD_PORT:-12379}"
ETCD_PEER_PORT=$((ETCD_PORT + 1))

log() { echo "control-plane.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# Go, at least the version tests/control-plane/go.mod names: an older one
# would try to download a newer toolchain or fail on the module's syntax.
check_go() {
    command -v go >/dev/null ||
        die "the Go toolchain (>= $GO_NEEDED) is needed to build kube-apiserver and etcd; install it (https://go.dev/dl) and run again"
    local have
    have="$(go env GOVERSION)" # go1.26.8
    have="${have#go}"
    # sort -V puts the smaller first: the needed one must come first.
    if [[ "$(printf '%s\n%s\n' "$GO_NEEDED" "$have" | sort -V | head -n 1)" != "$GO_NEEDED" ]]; then
        die "Go $have is too old: building kube-apiserver $VERSION needs Go >= $GO_NEEDED (tests/control-plane/go.mod); install it (https://go.dev/dl) and run again"
    fi
}

# Both binaries are in the cache and are the versions go.mod pins.
cached() {
    [[ -x "$BIN/kube-apiserver" && -x "$BIN/etcd" ]] || return 1
    local etcd apiserver
    etcd="$("$BIN/etcd" --version 2>/dev/null | sed -n 's/^etcd Version: //p')"
    apiserver="$("$BIN/kube-apiserver" --version 2>/dev/null)"
    if [[ "v$etcd" != "$ETCD_VERSION" || "$apiserver" != "Kubernetes $VERSION" ]]; then
        log "cached binaries are etcd v$etcd and ${apiserver:-no kube-apiserver}, go.mod pins etcd $ETCD_VERSION and $VERSION: rebuilding"
        return 1
    fi
}

build() {
    [[ -n "$VERSION" ]] || die "no k8s.io/kubernetes version in $MODULE/go.mod"
    [[ -n "$ETCD_VERSION" ]] || die "no go.etcd.io/etcd/server/v3 version in $MODULE/go.mod"
    if cached; then
        log "kube-apiserver $VERSION and etcd $ETCD_VERSION cached in $BIN"
        return
    fi
    check_go
    rm -rf "$BIN.partial"
    mkdir -p "$BIN.partial"
    log "building kube-apiserver $VERSION and etcd into $BIN (cold: tens of minutes on 2 cores)"
    local started=$SECONDS
    (
        cd "$MODULE"
        # -trimpath and no VCS stamping: the same source gives the same binary.
        # -mod=readonly: go.mod and go.sum are complete and committed; a
        # build never edits them (it gave the same binaries as -mod=mod did,
        # so RECIPE stayed).
        export CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath -buildvcs=false"
        go mod download >&2 ||
            die "go mod download failed: is the Go module proxy reachable (GOPROXY=$(go env GOPROXY))?"
        # Stamp the version as the Kubernetes release build does, so clients
        # (helm's kubeVersion check, kubectl version) see v1.X.Y.
        local minor="${VERSION#v1.}"
        minor="${minor%%.*}"
        local stamp="k8s.io/component-base/version"
        go build -ldflags="-s -w -X $stamp.gitVersion=$VERSION -X $stamp.gitMajor=1 -X $stamp.gitMinor=$minor -X $stamp.gitTreeState=clean" \
            -o "$BIN.partial/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver >&2
        go build -ldflags="-s -w" -o "$BIN.partial/etcd" ./cmd/etcd >&2
    )
    rm -rf "$BIN"
    mv "$BIN.partial" "$BIN"
    log "built in $((SECONDS - started)) s"
}

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

certs() {
    local pki="$DIR/pki"
    [[ -f "$pki/admin.crt" ]] && return
    command -v openssl >/dev/null || die "openssl is needed to make the control plane's certificates"
    mkdir -p "$pki"
    (
        cd "$pki"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=portico-test-ca" \
            -keyout ca.key -out ca.crt 2>/dev/null
        cat >server.ext <<EOF
subjectAltName = DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, IP:127.0.0.1, IP:10.96.0.1
extendedKeyUsage = serverAuth
EOF
        openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
            -keyout server.key -out server.csr 2>/dev/null
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile server.ext -out server.crt 2>/dev/null
        printf 'extendedKeyUsage = clientAuth\n' >client.ext
        openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=portico-admin" \
            -keyout admin.key -out admin.csr 2>/dev/null
        openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile client.ext -out admin.crt 2>/dev/null
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    )
}

kubeconfig() {
    local pki="$DIR/pki"
    cat >"$DIR/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: portico-real
  cluster:
    server: https://127.0.0.1:$PORT
    certificate-authority: $pki/ca.crt
users:
- name: portico-admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: portico-real
  context:
    cluster: portico-real
    user: portico-admin
current-context: portico-real
EOF
}

audit_policy() {
    # Metadata level for every request: user, verb, resource, namespace and
    # response code, which is all the RBAC comparison needs.
    cat >"$DIR/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
EOF
}

start_etcd() {
    pid_alive "$DIR/etcd.pid" && return
    mkdir -p "$DIR/etcd"
    "$BIN/etcd" --name portico --data-dir "$DIR/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "portico=http://127.0.0.1:$ETCD_PEER_PORT" \
        --unsafe-no-fsync --quota-backend-bytes 4294967296 \
        --log-level warn >"$DIR/etcd.log" 2>&1 &
    echo $! >"$DIR/etcd.pid"
    local i
    for i in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$ETCD_PORT/health" >/dev/null && return
        pid_alive "$DIR/etcd.pid" || die "etcd exited; see $DIR/etcd.log"
        sleep 0.2
    done
    die "etcd not healthy after 20 s; see $DIR/etcd.log"
}

start_apiserver() {
    pid_alive "$DIR/apiserver.pid" && return
    local pki="$DIR/pki"
    "$BIN/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --bind-address 127.0.0.1 --secure-port "$PORT" --advertise-address 127.0.0.1 \
        --tls-cert-file "$pki/server.crt" --tls-private-key-file "$pki/server.key" \
        --client-ca-file "$pki/ca.crt" \
        --service-account-key-file "$pki/sa.pub" \
        --service-account-signing-key-file "$pki/sa.key" \
        --service-account-issuer https://kubernetes.default.svc \
        --api-audiences https://kubernetes.default.svc \
        --authorization-mode RBAC \
        --service-cluster-ip-range 10.96.0.0/16 \
        --service-node-port-range 20000-60000 \
        --audit-policy-file "$DIR/audit-policy.yaml" \
        --audit-log-path "$DIR/audit.log" --audit-log-maxsize 0 \
        --enable-priority-and-fairness=false \
        --max-requests-inflight 2000 --max-mutating-requests-inflight 1000 \
        --v 1 >"$DIR/apiserver.log" 2>&1 &
    echo $! >"$DIR/apiserver.pid"
    local i
    for i in $(seq 1 300); do
        if curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
            "https://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then
            return
        fi
        pid_alive "$DIR/apiserver.pid" || die "kube-apiserver exited; see $DIR/apiserver.log"
        sleep 0.2
    done
    die "kube-apiserver not ready after 60 s; see $DIR/apiserver.log"
}

start() {
    build
    mkdir -p "$DIR"
    certs
    kubeconfig
    audit_policy
    # A fresh start (nothing running, e.g. after a run that was killed
    # before `stop`) begins a fresh audit log: the RBAC check must not count
    # an earlier run's requests. The old one is kept beside it.
    if ! pid_alive "$DIR/etcd.pid" && ! pid_alive "$DIR/apiserver.pid"; then
        [[ -f "$DIR/audit.log" ]] && mv "$DIR/audit.log" "$DIR/audit.log.previous"
        rm -f "$DIR/restarts"
    fi
    local started=$SECONDS
    start_etcd
    start_apiserver
    log "kube-apiserver $VERSION ready on https://127.0.0.1:$PORT in $((SECONDS - started)) s"
    log "kubeconfig: $DIR/admin.kubeconfig   audit log: $DIR/audit.log"
    echo "export PORTICO_REAL_KUBECONFIG=$DIR/admin.kubeconfig"
    echo "export PORTICO_REAL_AUDIT_LOG=$DIR/audit.log"
    echo "export PORTICO_REAL_CONTROL_PLANE=$HERE/scripts/control-plane.sh"
}

stop_one() {
    local pidfile="$DIR/$1.pid"
    if pid_alive "$pidfile"; then
        local pid
        pid="$(cat "$pidfile")"
        kill "$pid" 2>/dev/null || true
        local i
        for i in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

stop() {
    stop_one apiserver
    stop_one etcd
    rm -rf "$DIR"
    log "stopped"
}

case "${1:-}" in
check-go) check_go ;;
build) build ;;
start) start ;;
stop) stop ;;
restart-apiserver)
    # While it stops and starts, kube-apiserver answers some requests with 403
    # (its RBAC caches are torn down or not filled yet): record the window, so
    # the RBAC check from the audit log can tell those from real refusals.
    began="$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)"
    stop_one apiserver
    start_apiserver
    sleep 2
    echo "$began $(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)" >>"$DIR/restarts"
    log "kube-apiserver restarted"
    ;;
*)
    echo "usage: $0 check-go|build|start|stop|restart-apiserver" >&2
    exit 2
    ;;
esac
