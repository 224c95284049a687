#!/usr/bin/env bash
# Data-plane benchmark: direct vs portico vs HAProxy on loopback.
# Installs HAProxy (Debian package) if it is missing, runs
# `cargo bench -p portico-slb --bench dataplane`, and writes the figures into
# the "Data plane" section of BENCHMARKS.md (between the BEGIN/END markers).
# Knobs (environment): BENCH_STREAMS, BENCH_MB, BENCH_RTT, BENCH_CONNS,
# BENCH_REPEAT, BENCH_BUF; see providers/slb/benches/dataplane.rs.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/root/.cache/portico-target}"

if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
    echo "installing haproxy" >&2
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq haproxy >/dev/null
fi

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
cargo bench -p portico-slb --bench dataplane 2>&1 | tee "$out"

table="$(sed -n '/^=== markdown ===$/,$p' "$out" | tail -n +2)"
if [ -z "$table" ]; then
    echo "no results found in the benchmark output" >&2
    exit 1
fi

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)"
section="$(cat <<MD
<!-- BEGIN dataplane -->
Run $(date -u +%Y-%m-%dT%H:%MZ) with \`scripts/bench-dataplane.sh\` on $(nproc) cores ($cpu), $(uname -r), shared machine.

$table
<!-- END dataplane -->
MD
)"

file="$root/BENCHMARKS.md"
if [ ! -f "$file" ]; then
    printf '# portico benchmarks\n' > "$file"
fi
if ! grep -q '<!-- BEGIN dataplane -->' "$file"; then
    printf '\n## Data plane (portico-slb)\n\n<!-- BEGIN dataplane -->\n<!-- END dataplane -->\n' >> "$file"
fi
SECTION="$section" python3 - "$file" <<'PY'
import os, re, sys
path = sys.argv[1]
text = open(path).read()
new = os.environ["SECTION"]
text = re.sub(r"<!-- BEGIN dataplane -->.*?<!-- END dataplane -->", lambda _: new, text, flags=re.S)
open(path, "w").write(text)
PY
echo "updated $file" >&2
