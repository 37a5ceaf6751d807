#!/usr/bin/env bash
# Raw speed against nginx: wrk against GET /beacon?... on loopback, for
#   1. beacon-collector with its embedded processing stage writing NDJSON files, and
#   2. nginx answering `return 204` with a buffered JSON access_log (the nginx + log-shipper
#      tier this replaces),
# in the same sitting, same wrk settings. Prints one table with requests/s and p99.
#
# Usage: loadtest/wrk-vs-nginx.sh [runs] [duration]   (defaults: 3 runs of 10s)
# Needs wrk and nginx (Debian: apt-get install wrk nginx-light); installs them if root.
set -euo pipefail
RUNS=${1:-3}
DUR=${2:-10s}
THREADS=${WRK_THREADS:-1}
CONNS=${WRK_CONNS:-64}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
. "$ROOT/loadtest/common.sh"
trap cleanup EXIT

need_nginx_bench_tools

cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" -p beacon-collector -q
URL_PATH='/beacon?u=https%3A%2F%2Fwww.example.com%2Fproducts%2F42%3Fref%3Dhome&t_done=1234&t_page=987&t_resp=120&sid=7f3a9c2e-51b4-4f7e-9a0d-2f9e8a1b3c4d&v=1.0'

# Collector with default workers (one per CPU) on :18080, worker_threads = 1 on :18082: on a
# 2-core box wrk itself needs a core; the 1-worker row shows the collector without fighting wrk
# for the second one.
start_collector c0 18080 0
start_collector c1 18082 1
start_nginx 18081

printf '%-34s %5s %12s %10s %8s\n' "server (wrk -t$THREADS -c$CONNS -d$DUR)" run "requests/s" "p99 ms" non-2xx
for i in $(seq "$RUNS"); do
  read -r rps p99 bad _ < <(run_wrk "http://127.0.0.1:18080$URL_PATH" "$THREADS" "$CONNS" "$DUR")
  printf '%-34s %5s %12s %10s %8s\n' "beacon-collector (+stage, files)" "$i" "$rps" "$p99" "$bad"
  read -r rps p99 bad _ < <(run_wrk "http://127.0.0.1:18082$URL_PATH" "$THREADS" "$CONNS" "$DUR")
  printf '%-34s %5s %12s %10s %8s\n' "  same, worker_threads = 1" "$i" "$rps" "$p99" "$bad"
  read -r rps p99 bad _ < <(run_wrk "http://127.0.0.1:18081$URL_PATH" "$THREADS" "$CONNS" "$DUR")
  printf '%-34s %5s %12s %10s %8s\n' "nginx return 204 + JSON log" "$i" "$rps" "$p99" "$bad"
done

kill -TERM $(jobs -p) 2>/dev/null; wait 2>/dev/null || true
lines=$(cat "$WORK"/c*/data/*.ndjson* 2>/dev/null | wc -l)
echo "collector wrote $lines NDJSON records; nginx wrote $(wc -l < "$WORK/nginx/beacons.ndjson") log lines"
machine
