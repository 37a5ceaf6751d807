#!/usr/bin/env bash
# Cost of the ingest tier against nginx, in one sitting, alternating runs, medians:
#   1. wrk -t1 -c64 and -t2 -c256 against GET /beacon?... with two browser headers, for the
#      collector with the native engine, with the hyper engine (both with their processing stage
#      writing NDJSON files) and nginx (`return 204` + buffered JSON access_log):
#      requests/s, p99, requests per server CPU-second (utime+stime of every server process:
#      collector + stage, nginx master + workers) and voluntary context switches per request
#      (every thread of every server process);
#   2. an open-loop rate of half nginx's -t1 -c64 maximum (beacon-loadgen, coordinated
#      omission corrected): p50/p99 for each server;
#   3. ack_after = "fsync" against "write" (native engine): requests/s; 3b (PARTS has
#      "fsyncfleet"): the same under a fleet of idle browsers plus a fixed open-loop rate: p99;
#   4. a fleet of idle keep-alive browsers (beacon-loadgen --clients N --interval 15s), each
#      server fresh: RSS growth per held connection.
# Every server runs on loopback and stops with the script.
#
# With BEFORE_BIN=path/to/an/older/beacon-collector, that build runs beside the others as
# "before" in parts 1 and 4 (its config uses `worker_threads`, or BEFORE_WORKERS_KEY, and the
# [processor] keys before [processor.files]).
#
# PIN=1: the per-core figure: each server alone on CPU 1 with one worker (collector: worker,
# forwarder and processing stage together; nginx: one worker), wrk and beacon-loadgen on CPU 0.
#
# Usage: loadtest/ingest-bench.sh     (about 8 minutes with the defaults)
# Knobs: RUNS=3 DUR=8s FLEET_CLIENTS=18000 FLEET_DUR=50s PARTS="closed open fsync fleet"
#        (add "fsyncfleet" for part 3b: FSYNC_FLEET=10000 browsers + FSYNC_RATE=30000 open loop)
#        FLEET_SERVERS="native hyper nginx"
# Needs wrk, nginx, curl, python3 (Debian packages; installed when run as root).
set -euo pipefail
RUNS=${RUNS:-3}
DUR=${DUR:-8s}
FLEET_CLIENTS=${FLEET_CLIENTS:-18000}
FLEET_DUR=${FLEET_DUR:-50s}
FSYNC_FLEET=${FSYNC_FLEET:-10000}
FSYNC_RATE=${FSYNC_RATE:-30000}
PARTS=${PARTS:-closed open fsync fleet}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
. "$ROOT/loadtest/common.sh"
trap cleanup EXIT

need_nginx_bench_tools
raise_nofile

cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" --workspace -q
LOADGEN="$ROOT/target/release/beacon-loadgen"
URL_PATH='/beacon?u=https%3A%2F%2Fwww.example.com%2Fproducts%2F42%3Fref%3Dhome&t_done=1234&t_page=987&t_resp=120&sid=7f3a9c2e-51b4-4f7e-9a0d-2f9e8a1b3c4d&v=1.0'
UA='Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36'
REF='https://www.example.com/products/42?ref=home'
TCK=$(getconf CLK_TCK)

declare -A PORT=([native]=18080 [hyper]=18082 [nginx]=18081 [fsync]=18083 [before]=18084)
SERVERS="native hyper nginx"
[ -z "${BEFORE_BIN:-}" ] || SERVERS="before $SERVERS"
start() { # server
  case $1 in
    before) COLLECTOR_BIN=$BEFORE_BIN WORKERS_KEY=${BEFORE_WORKERS_KEY:-worker_threads} OLD_KEYS=1 start_collector before ${PORT[before]} 0 ;;
    native) SERVER_EXTRA='engine = "native"' start_collector native ${PORT[native]} 0 ;;
    hyper) SERVER_EXTRA='engine = "hyper"' start_collector hyper ${PORT[hyper]} 0 ;;
    fsync) SERVER_EXTRA='engine = "native"' SPOOL_EXTRA='ack_after = "fsync"' start_collector fsync ${PORT[fsync]} 0 ;;
    nginx) start_nginx ${PORT[nginx]} ;;
  esac
}
echo "ingest cost benchmark, $(date -u +%Y-%m-%dT%H:%MZ)$([ "${PIN:-0}" = 1 ] && echo ", pinned: servers on CPU ${SERVER_CPU:-1} (one worker), generators on CPU ${LOAD_CPU:-0}")"
machine
echo

RESULTS="$WORK/results" # part server key value
: > "$RESULTS"

# --- 1. closed loop: throughput and cost ---------------------------------------------------------
if [[ " $PARTS " == *" closed "* ]]; then
  for s in $SERVERS; do start $s; done
  for load in "1 64" "2 256"; do
    read -r t c <<<"$load"
    printf '%-22s %-7s %4s %9s %8s %11s %10s\n' "wrk -t$t -c$c -d$DUR" server run "req/s" "p99 ms" "req/CPU-s" "vcsw/req"
    for i in $(seq "$RUNS"); do
      for s in $SERVERS; do
        ps_=$(pids $s | xargs)
        c0=$(cpu_ticks $ps_); v0=$(vcsw $ps_)
        out=$($LOAD_PREFIX wrk -t"$t" -c"$c" -d"$DUR" --latency -H "User-Agent: $UA" -H "Referer: $REF" "http://127.0.0.1:${PORT[$s]}$URL_PATH")
        c1=$(cpu_ticks $ps_); v1=$(vcsw $ps_)
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        n=$(awk '/requests in/ {print $1}' <<<"$out")
        p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$out")
        bad=$(awk '/Non-2xx/ {print $4}' <<<"$out")
        percpu=$(python3 -c "print(f'{$n / max(($c1 - $c0) / $TCK, 1e-9):.0f}')")
        vpr=$(python3 -c "print(f'{($v1 - $v0) / max($n, 1):.3f}')")
        printf '%-22s %-7s %4s %9.0f %8s %11s %10s\n' "" $s "$i" "$rps" "$p99" "$percpu" "$vpr"
        [ -z "$bad" ] || echo "    non-2xx: $bad"
        echo "t${t}c$c $s rps $rps" >> "$RESULTS"
        echo "t${t}c$c $s p99 $p99" >> "$RESULTS"
        echo "t${t}c$c $s percpu $percpu" >> "$RESULTS"
        echo "t${t}c$c $s vcsw $vpr" >> "$RESULTS"
      done
    done
  done
  for s in $SERVERS; do stop $s; done
  echo
fi

# --- 2. open loop at half nginx's maximum ----------------------------------------------------------
if [[ " $PARTS " == *" open "* ]]; then
  for s in native hyper nginx; do start $s; done
  max=$(awk '$1=="t1c64" && $2=="nginx" && $3=="rps" {print $4}' "$RESULTS" | sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}')
  if [ -z "$max" ]; then
    out=$($LOAD_PREFIX wrk -t1 -c64 -d"$DUR" "http://127.0.0.1:${PORT[nginx]}$URL_PATH")
    max=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  fi
  rate=$(python3 -c "print(int($max / 2))")
  printf '%-34s %-7s %4s %9s %8s %8s %7s\n' "open loop $rate req/s, -c64, $DUR" server run "req/s" "p50 ms" "p99 ms" errors
  for i in $(seq "$RUNS"); do
    for s in native hyper nginx; do
      $LOAD_PREFIX "$LOADGEN" --json -t 1 -c 64 --rate "$rate" -d "$DUR" "http://127.0.0.1:${PORT[$s]}$URL_PATH" > "$WORK/open.json" || true
      read -r rps p50 p99 errs < <(python3 - "$WORK/open.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_us"] or {}
print("%.0f %.3f %.3f %d" % (r["requests_per_second"], l.get("p50", 0) / 1000, l.get("p99", 0) / 1000, r["errors_total"]))
PY
)
      printf '%-34s %-7s %4s %9s %8s %8s %7s\n' "" $s "$i" "$rps" "$p50" "$p99" "$errs"
      echo "open $s p99 $p99" >> "$RESULTS"
    done
  done
  for s in native hyper nginx; do stop $s; done
  echo
fi

# --- 3. fsync before every answer vs write ------------------------------------------------------
if [[ " $PARTS " == *" fsync "* ]]; then
  start native; start fsync
  printf '%-22s %-14s %4s %9s %8s\n' "wrk -t1 -c64 -d$DUR" "ack_after" run "req/s" "p99 ms"
  for i in $(seq "$RUNS"); do
    for s in native fsync; do
      read -r rps p99 bad _ < <(run_wrk "http://127.0.0.1:${PORT[$s]}$URL_PATH" 1 64 "$DUR")
      label=$([ $s = fsync ] && echo fsync || echo write)
      printf '%-22s %-14s %4s %9.0f %8s\n' "" "$label" "$i" "$rps" "$p99"
      echo "ack $label rps $rps" >> "$RESULTS"
    done
  done
  stop native; stop fsync
  echo
fi

# --- 3b. fsync vs write under a fleet: FSYNC_FLEET browsers plus an open loop of FSYNC_RATE -----
if [[ " $PARTS " == *" fsyncfleet "* ]]; then
  start native; start fsync
  printf '%-40s %-9s %4s %9s %9s %9s %7s\n' "fleet $FSYNC_FLEET / 15 s + open loop $FSYNC_RATE req/s" ack_after run "req/s" "p99 ms" "fleet p99" errors
  for i in $(seq "$RUNS"); do
    for s in native fsync; do
      label=$([ $s = fsync ] && echo fsync || echo write)
      url="http://127.0.0.1:${PORT[$s]}$URL_PATH"
      # The fleet connects first, then the open loop runs inside its span.
      $LOAD_PREFIX "$LOADGEN" --json --clients "$FSYNC_FLEET" --interval 15s -d "$(( ${DUR%s} + 6 ))s" "$url" > "$WORK/ff.json" || true &
      fl=$!
      sleep 3
      $LOAD_PREFIX "$LOADGEN" --json -c 64 --rate "$FSYNC_RATE" -d "$DUR" "$url" > "$WORK/fo.json" || true
      wait $fl || true
      read -r rps p99 fp99 errs < <(python3 - "$WORK/fo.json" "$WORK/ff.json" <<'PY'
import json, sys
o, f = (json.load(open(p)) for p in sys.argv[1:3])
p99 = lambda r: (r["latency_us"] or {}).get("p99", 0) / 1000
print("%.0f %.3f %.3f %d" % (o["requests_per_second"], p99(o), p99(f), o["errors_total"] + f["errors_total"]))
PY
)
      printf '%-40s %-9s %4s %9s %9s %9s %7s\n' "" "$label" "$i" "$rps" "$p99" "$fp99" "$errs"
      echo "ackfleet $label rps $rps" >> "$RESULTS"
      echo "ackfleet $label p99 $p99" >> "$RESULTS"
      echo "ackfleet $label fleetp99 $fp99" >> "$RESULTS"
    done
  done
  stop native; stop fsync
  echo
fi

# --- 4. idle fleet: RSS per connection, each server fresh ---------------------------------------
if [[ " $PARTS " == *" fleet "* ]]; then
  printf '%-44s %-9s %8s %12s\n' "fleet: $FLEET_CLIENTS clients every 15 s, $FLEET_DUR" server held "RSS/conn KB"
  for s in ${FLEET_SERVERS:-$SERVERS}; do
    fleet_rss $s "http://127.0.0.1:${PORT[$s]}/beacon" "$FLEET_CLIENTS" 15s "$FLEET_DUR"
  done
  echo
fi

# --- medians and ratios ------------------------------------------------------------------------
medians "$RESULTS"
w=$(median "$RESULTS" ack write rps) f=$(median "$RESULTS" ack fsync rps)
[ -z "$w" ] || [ -z "$f" ] ||
  python3 -c "print(f'  fsync costs {100 * (1 - $f / $w):.1f} % of write-mode throughput')"
