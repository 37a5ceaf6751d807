#!/usr/bin/env bash
# What durability costs: the whole pipeline (HTTP -> spool -> forwarder -> processing stage ->
# files) under wrk, with spool.ack_after = "write" and "fsync", in the same sitting. With
# BASELINE_BIN set to a binary built before the spool existed (in-memory queue), it is measured
# the same way for comparison:
#   git worktree add /tmp/old 4c0a101 && (cd /tmp/old && cargo build --release)
#   BASELINE_BIN=/tmp/old/target/release/beacon-collector loadtest/spool-bench.sh
# Usage: loadtest/spool-bench.sh [runs] [duration]  (defaults: 3 runs of 10s, wrk -t1 -c64)
# The spool is put under $SPOOL_BASE (default: a temp dir under /var/tmp, a real disk, so that
# fdatasync costs what it costs; tmpfs would make "fsync" free).
set -euo pipefail
RUNS=${1:-3}
DUR=${2:-10s}
THREADS=${WRK_THREADS:-1}
CONNS=${WRK_CONNS:-64}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${SPOOL_BASE:-/var/tmp}/spool-bench.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$WORK"' EXIT
command -v wrk >/dev/null || { echo "need wrk (apt-get install wrk)" >&2; exit 2; }
cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" -q
BIN="$ROOT/target/release/beacon-collector"
URL_PATH='/beacon?u=https%3A%2F%2Fwww.example.com%2Fproducts%2F42%3Fref%3Dhome&t_done=1234&t_page=987&t_resp=120&sid=7f3a9c2e-51b4-4f7e-9a0d-2f9e8a1b3c4d&v=1.0'

start() { # name port bin [spool-toml-lines]
  local name=$1 port=$2 bin=$3 spool=${4:-}
  mkdir -p "$WORK/$name"
  cat > "$WORK/$name/c.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
[admin]
enabled = false
[forward]
socket_path = "$WORK/$name/run/p.sock"
[processor.files]
data_dir = "$WORK/$name/data"
[processor.admin]
enabled = false
[shutdown]
deregistration_delay_seconds = 0
[log]
format = "json"
level = "warn"
$spool
TOML
  (cd "$WORK/$name" && exec "$bin" serve -c c.toml 2>log) &
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$port/healthz" && return; sleep 0.1; done
  echo "$name did not start: $(cat "$WORK/$name/log")" >&2; exit 1
}

rows=()
[ -n "${BASELINE_BIN:-}" ] && { start memory 18090 "$BASELINE_BIN"; rows+=("memory 18090 in-memory queue (before spool)"); }
start write 18091 "$BIN" $'[spool]\ndir = "spool"\nack_after = "write"'
rows+=("write 18091 spool ack_after=write")
start fsync 18092 "$BIN" $'[spool]\ndir = "spool"\nack_after = "fsync"'
rows+=("fsync 18092 spool ack_after=fsync")

printf '%-36s %4s %12s %9s %9s %8s\n' "pipeline (wrk -t$THREADS -c$CONNS -d$DUR)" run "requests/s" "p50 ms" "p99 ms" non-2xx
ms() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v); print v} else {sub(/s/,"",v); print v*1000} }'; }
for i in $(seq "$RUNS"); do
  for row in "${rows[@]}"; do
    read -r name port label <<<"$row"
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DUR" --latency "http://127.0.0.1:$port$URL_PATH")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
    p99=$(ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
    bad=$(awk '/Non-2xx/ {print $4}' <<<"$out")
    printf '%-36s %4s %12s %9s %9s %8s\n' "$label" "$i" "$rps" "$p50" "$p99" "${bad:-0}"
  done
done
kill -TERM $(jobs -p) 2>/dev/null || true
wait 2>/dev/null || true
for row in "${rows[@]}"; do
  read -r name _ label <<<"$row"
  echo "$label: $(cat "$WORK/$name"/data/*.ndjson* 2>/dev/null | wc -l) records delivered"
done
echo "machine: $(nproc) cores, $(uname -r), spool on $(df -T "$WORK" | awk 'NR==2 {print $2}')"
