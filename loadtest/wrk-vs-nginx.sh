#!/usr/bin/env bash
# Issue 2 measurement: wrk against GET /beacon?... on loopback, for
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
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null; rm -rf "$WORK"' EXIT

need() { command -v "$1" >/dev/null 2>&1 || { [ "$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; command -v "$1" >/dev/null || { echo "need $1 (apt-get install $2)" >&2; exit 2; }; }
need wrk wrk
need nginx nginx-light

cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" -q
BIN="$ROOT/target/release/beacon-collector"
URL_PATH='/beacon?u=https%3A%2F%2Fwww.example.com%2Fproducts%2F42%3Fref%3Dhome&t_done=1234&t_page=987&t_resp=120&sid=7f3a9c2e-51b4-4f7e-9a0d-2f9e8a1b3c4d&v=1.0'

# --- collector: default workers (one per CPU) on :18080, worker_threads = 1 on :18082 ----------
# On a 2-core box wrk itself needs a core; the 1-worker row shows the collector without
# fighting wrk for the second one.
start_collector() { # name port workers
  mkdir -p "$WORK/$1"
  cat > "$WORK/$1/collector.toml" <<TOML
[server]
listen = "127.0.0.1:$2"
worker_threads = $3
[admin]
enabled = false
[forward]
socket_path = "$WORK/$1/run/processor.sock"
[processor]
data_dir = "$WORK/$1/data"
admin_enabled = false
[spool]
dir = "$WORK/$1/spool"
[shutdown]
deregistration_delay_seconds = 0
[log]
format = "json"
level = "warn"
TOML
  "$BIN" serve -c "$WORK/$1/collector.toml" 2>"$WORK/$1/collector.log" &
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$2/healthz" && break; sleep 0.1; done
}
start_collector c0 18080 0
start_collector c1 18082 1

# --- nginx -----------------------------------------------------------------------------------
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx.conf" <<NGX
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  log_format beacon escape=json '{"time":"\$time_iso8601","remote_addr":"\$remote_addr",'
    '"method":"\$request_method","uri":"\$uri","query":"\$query_string",'
    '"user_agent":"\$http_user_agent","referer":"\$http_referer"}';
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  keepalive_timeout 75s;
  server {
    listen 127.0.0.1:18081 reuseport backlog=4096;
    location /beacon { access_log $WORK/nginx/beacons.ndjson beacon buffer=64k flush=1s; return 204; }
  }
}
NGX
nginx -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log"
sleep 0.5

run_wrk() { # name port -> "rps p99_ms"
  local out rps p99
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DUR" --latency "http://127.0.0.1:$2$URL_PATH")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $4}' <<<"$out")
  echo "$rps ${p99} ${non2xx:-0}"
}

printf '%-34s %5s %12s %10s %8s\n' "server (wrk -t$THREADS -c$CONNS -d$DUR)" run "requests/s" "p99 ms" non-2xx
for i in $(seq "$RUNS"); do
  read -r rps p99 bad < <(run_wrk collector 18080)
  printf '%-34s %5s %12s %10s %8s\n' "beacon-collector (+stage, files)" "$i" "$rps" "$p99" "$bad"
  read -r rps p99 bad < <(run_wrk collector 18082)
  printf '%-34s %5s %12s %10s %8s\n' "  same, worker_threads = 1" "$i" "$rps" "$p99" "$bad"
  read -r rps p99 bad < <(run_wrk nginx 18081)
  printf '%-34s %5s %12s %10s %8s\n' "nginx return 204 + JSON log" "$i" "$rps" "$p99" "$bad"
done

kill -TERM $(jobs -p) 2>/dev/null; wait || true
lines=$(cat "$WORK"/c*/data/*.ndjson* 2>/dev/null | wc -l)
echo "collector wrote $lines NDJSON records; nginx wrote $(wc -l < "$WORK/nginx/beacons.ndjson") log lines"
echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
