#!/usr/bin/env bash
# Start or stop a local moto server, the AWS emulator the portico-aws tests
# and benchmarks run against (no Docker needed).
#
#   scripts/moto.sh start    # idempotent; prints `export AWS_ENDPOINT_URL=...`
#   scripts/moto.sh stop
#   scripts/moto.sh status
#   eval "$(scripts/moto.sh start)"   # start and export in the current shell
#
# Environment:
#   PORTICO_TOOLS   where the venv lives (default ~/.cache/portico-tools)
#   MOTO_PORT       port to listen on (default 5055)
#   MOTO_VERSION    moto version to install (default pinned below)
#
# Everything informational goes to stderr; stdout carries only the export
# line, so `eval "$(scripts/moto.sh start)"` works.
set -euo pipefail

MOTO_VERSION="${MOTO_VERSION:-5.2.5}"
PORT="${MOTO_PORT:-5055}"
TOOLS="${PORTICO_TOOLS:-$HOME/.cache/portico-tools}"
VENV="$TOOLS/moto-venv"
PIDFILE="$TOOLS/moto-$PORT.pid"
LOG="$TOOLS/moto-$PORT.log"
URL="http://127.0.0.1:$PORT"

log() { echo "moto.sh: $*" >&2; }

answering() {
    curl -s -o /dev/null --max-time 2 "$URL/moto-api/"
}

install() {
    mkdir -p "$TOOLS"
    if [[ -x "$VENV/bin/moto_server" ]] &&
        "$VENV/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
        return
    fi
    log "installing moto[server]==$MOTO_VERSION into $VENV"
    if [[ ! -x "$VENV/bin/python" ]]; then
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
}

start() {
    if answering; then
        log "already running on $URL"
    else
        install
        log "starting moto_server on $URL (log: $LOG)"
        # setsid: the server outlives this script and the shell that ran it.
        setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 </dev/null &
        echo $! >"$PIDFILE"
        for _ in $(seq 1 100); do
            if answering; then
                break
            fi
            if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
                log "moto_server exited; last log lines:"
                tail -n 20 "$LOG" >&2
                exit 1
            fi
            sleep 0.2
        done
        if ! answering; then
            log "moto_server did not answer on $URL within 20s"
            exit 1
        fi
        log "ready"
    fi
    echo "export AWS_ENDPOINT_URL=$URL"
}

stop() {
    if [[ -f "$PIDFILE" ]]; then
        local pid
        pid="$(cat "$PIDFILE")"
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            log "stopped (pid $pid)"
        fi
        rm -f "$PIDFILE"
    else
        log "not running (no $PIDFILE)"
    fi
}

case "${1:-start}" in
start) start ;;
stop) stop ;;
status)
    if answering; then
        log "running on $URL"
    else
        log "not running on $URL"
        exit 1
    fi
    ;;
*)
    echo "usage: $0 [start|stop|status]" >&2
    exit 2
    ;;
esac
