#!/usr/bin/env bash
# The benchmark: beacon-collector with its processing stage, and nginx (`return 204` +
# JSON access log) for comparison, on loopback, through one fixed scenario matrix driven by
# beacon-loadgen:
#   fleet    10,000 idle keep-alive browsers, one beacon each every 15 s ±20 %  (seed 002)
#            + the server's RSS per idle connection
#   closed   64 and 256 busy keep-alive connections (wrk's model)
#   open     fixed rates, latency from the intended send time (coordinated omission corrected)
#   close    a new connection per request, as behind a proxy speaking HTTP/1.0  (seed 004)
#   ramp     open loop rising from 2,000 to 150,000 req/s over 30 s, RUNS times alternating:
#            the knee (the rate from which p99 stayed over 10 ms) of each server, and the
#            picture of the median runs side by side (throughput, latency over time, latency
#            distribution) written to $PLOT
# then wrk and beacon-loadgen against the same servers with the same -t/-c, alternating runs.
# Prints one table per part; every run is bounded and the servers stop with the script.
#
# Usage: loadtest/bench.sh            (about 13 minutes)
# Knobs: PARTS="fleet matrix ramp generators" DUR=10s RUNS=3 FLEET_CLIENTS=10000 FLEET_DUR=45s
#        RATES="10000 30000 50000" RAMP=2000..150000 RAMP_DUR=30s PLOT=target/bench/bench.svg
# Needs wrk, nginx, curl, python3 (Debian packages; installed when run as root).
set -euo pipefail
PARTS=${PARTS:-fleet matrix ramp generators}
RAMP=${RAMP:-2000..150000}
RAMP_DUR=${RAMP_DUR:-30s}
DUR=${DUR:-10s}
RUNS=${RUNS:-3}
FLEET_CLIENTS=${FLEET_CLIENTS:-10000}
FLEET_DUR=${FLEET_DUR:-45s}
RATES=${RATES:-10000 30000 50000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PLOT=${PLOT:-$ROOT/target/bench/bench.svg}
WORK=$(mktemp -d)
. "$ROOT/loadtest/common.sh"
trap cleanup EXIT

need_nginx_bench_tools
need taskset util-linux
raise_nofile

cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" --workspace -q
LOADGEN="$ROOT/target/release/beacon-loadgen"
COLLECTOR=18080
NGINX=18081
start_collector c0 $COLLECTOR 0
start_nginx $NGINX

collector_pids() { cat "$WORK/c0/pid"; }
# nginx's memory is its workers' (the master holds no connections).
nginx_pids() { pgrep -P "$(cat "$WORK/nginx.pid")"; }

# summary FILE -> "requests/s p50_ms p99_ms errors 2xx target_rate held" from a --json report
summary() {
  python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency_us"] or {}
ok = sum(v for k, v in r["status"].items() if k.startswith("2"))
held = (r["connections_held"] or {}).get("min_after_ramp", 0)
print(f'{r["requests_per_second"]:.0f} {l.get("p50", 0)/1000:.2f} {l.get("p99", 0)/1000:.2f} {r["errors_total"]} {ok} {r["target_rate"] or 0:.0f} {held}')
PY
}
errors_of() {
  python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["errors"]; print("; ".join(f"{k}: {v}" for k,v in e.items()))' "$1"
}

OK_TO_COLLECTOR=0 # 2xx counted by the clients, compared with the records written at the end
count_ok() { [ "$1" = collector ] && OK_TO_COLLECTOR=$((OK_TO_COLLECTOR + $2)) || true; }

echo "beacon-loadgen benchmark, $(date -u +%Y-%m-%dT%H:%MZ)"
machine
echo

part() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# --- fleet first, on fresh processes, so RSS growth is the connections' -----------------------
if part fleet; then
printf '%-44s %-10s %9s %9s %8s %8s %7s %8s %12s\n' "fleet: $FLEET_CLIENTS clients, every 15s, $FLEET_DUR" server "req/s" "target" "p50 ms" "p99 ms" errors held "RSS/conn KB"
for server in collector nginx; do
  port=$([ $server = collector ] && echo $COLLECTOR || echo $NGINX)
  pids=$(${server}_pids)
  before=$(rss_kb $pids)
  out="$WORK/fleet-$server.json"
  "$LOADGEN" --json --clients "$FLEET_CLIENTS" --interval 15s -d "$FLEET_DUR" "http://127.0.0.1:$port/beacon" > "$out" || true &
  lg=$!
  # Sample while every client is connected and idle between pings (10 s before the end).
  sleep $(( ${FLEET_DUR%s} - 10 ))
  during=$(rss_kb $pids)
  wait $lg || true
  read -r rps p50 p99 errs ok target held < <(summary "$out")
  count_ok $server "$ok"
  per=$(python3 -c "print(f'{($during - $before) / max($held, 1):.1f}')")
  printf '%-44s %-10s %9s %9s %8s %8s %7s %8s %12s\n' "" $server "$rps" "$target" "$p50" "$p99" "$errs" "$held" "$per"
  echo "    RSS ${before} kB idle -> ${during} kB with the fleet connected" >&2
  [ "$errs" = 0 ] || echo "    errors: $(errors_of "$out")"
done
echo
fi

# --- the matrix --------------------------------------------------------------------------------
scenario() { # label, loadgen args...
  local label=$1 server port out
  shift
  for server in collector nginx; do
    port=$([ $server = collector ] && echo $COLLECTOR || echo $NGINX)
    out="$WORK/run.json"
    "$LOADGEN" --json -t 1 -d "$DUR" "$@" "http://127.0.0.1:$port/beacon" > "$out" || true
    read -r rps p50 p99 errs ok _ _ < <(summary "$out")
    count_ok $server "$ok"
    printf '%-44s %-10s %9s %8s %8s %7s\n' "$label" $server "$rps" "$p50" "$p99" "$errs"
    [ "$errs" = 0 ] || echo "    errors: $(errors_of "$out")"
    label=""
  done
}
if part matrix; then
printf '%-44s %-10s %9s %8s %8s %7s\n' "scenario (-t1, $DUR, generated GET beacons)" server "req/s" "p50 ms" "p99 ms" errors
scenario "closed loop, 64 connections" -c 64
scenario "closed loop, 256 connections" -c 256
for rate in $RATES; do
  scenario "open loop, $rate req/s, 64 connections" -c 64 --rate "$rate"
done
scenario "POST sendBeacon text/plain 512 B, 64 conns" -c 64 --method post --body text --body-bytes 512
scenario "new connection per request, 16 at once" -c 16 --close
echo
fi

# --- the ramp: where each server stops keeping up ----------------------------------------------
if part ramp; then
printf '%-44s %-10s %5s %10s %10s %12s %9s\n' "ramp $RAMP req/s over $RAMP_DUR, -t1 -c256" server run "knee req/s" "why" "best below" "max req/s"
for i in $(seq "$RUNS"); do
  for server in collector nginx; do
    port=$([ $server = collector ] && echo $COLLECTOR || echo $NGINX)
    out="$WORK/ramp-$server-$i.json"
    "$LOADGEN" --json -t 1 -c 256 --rate "$RAMP" --ramp "$RAMP_DUR" "http://127.0.0.1:$port/beacon" > "$out" || true
    read -r _ _ _ errs ok _ _ < <(summary "$out")
    count_ok $server "$ok"
    python3 - "$out" "$server" "$i" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
k = r["ramp"]["knee"]
best = max((b["responses_per_second"] for b in r["timeline"]), default=0)
knee, why = (f'{k["rate"]:.0f}', k["reason"]) if k else ("none", "-")
print(f'{"":44} {sys.argv[2]:10} {sys.argv[3]:>5} {knee:>10} {why:>10} {r["ramp"]["max_good_responses_per_second"]:12.0f} {best:9.0f}')
PY
  done
done
# The median run of each server (by knee) goes into the picture.
median_run() {
  python3 - "$WORK" "$1" "$RUNS" <<'PY'
import json, sys
work, server, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
def knee(i):
    k = json.load(open(f"{work}/ramp-{server}-{i}.json"))["ramp"]["knee"]
    return k["rate"] if k else float("inf")
order = sorted(range(1, runs + 1), key=knee)
print(f"{work}/ramp-{server}-{order[(runs - 1) // 2]}.json")
PY
}
mkdir -p "$(dirname "$PLOT")"
"$LOADGEN" compare --label collector --label nginx --plot "$PLOT" \
  --title "beacon-collector vs nginx: open loop ramping $RAMP req/s over $RAMP_DUR (median of $RUNS runs)" \
  "$(median_run collector)" "$(median_run nginx)" | sed 's/^/  /'
echo "  picture: $PLOT"
echo
fi

if part generators; then
# --- the same servers, wrk and beacon-loadgen, same -t/-c, alternating ---------------------------
# Twice: sharing both cores with the server (as above), and pinned (server on CPU 1, the load
# generator on CPU 0), where the generator does not compete with the server for a core and the
# comparison is of the generators alone.
URL_PATH='/beacon?u=https%3A%2F%2Fwww.example.com%2Fproducts%2F42%3Fref%3Dhome&t_done=1234&t_page=987&t_resp=120&sid=7f3a9c2e-51b4-4f7e-9a0d-2f9e8a1b3c4d&v=1.0'
server_pids() { if [ "$1" = collector ]; then collector_pids; pgrep -P "$(collector_pids)"; else nginx_pids; fi; }
pin() { # CPUS server: every thread of the server's processes
  local p
  for p in $(server_pids "$2"); do taskset -a -pc "$1" "$p" >/dev/null; done
}
printf '%-44s %-10s %5s %9s %8s\n' "same URL, -t1 -c64 -d$DUR (loadgen --fixed)" server run "req/s" "p99 ms"
for setting in shared pinned; do
  pre=""
  if [ $setting = pinned ]; then pin 1 collector; pin 1 nginx; pre="taskset -c 0"; fi
  for i in $(seq "$RUNS"); do
    for server in collector nginx; do
      port=$([ $server = collector ] && echo $COLLECTOR || echo $NGINX)
      read -r rps p99 bad n < <($pre bash -c ". '$ROOT/loadtest/common.sh'; run_wrk 'http://127.0.0.1:$port$URL_PATH' 1 64 '$DUR'")
      count_ok $server $((n - bad))
      printf '%-44s %-10s %5s %9.0f %8s\n' "wrk ($setting cores)" $server "$i" "$rps" "$p99"
      echo "$setting $server wrk $rps" >> "$WORK/cmp"
      out="$WORK/run.json"
      $pre "$LOADGEN" --json --fixed -t 1 -c 64 -d "$DUR" "http://127.0.0.1:$port$URL_PATH" > "$out" || true
      read -r rps p50 p99 errs ok _ _ < <(summary "$out")
      count_ok $server "$ok"
      printf '%-44s %-10s %5s %9s %8s\n' "beacon-loadgen ($setting cores)" $server "$i" "$rps" "$p99"
      echo "$setting $server beacon-loadgen $rps" >> "$WORK/cmp"
    done
  done
done
pin 0-1 collector; pin 0-1 nginx
echo
echo "mean requests/s over $RUNS runs:"
awk '{k=$1" "$2" "$3; s[k]+=$4; n[k]++; if (!(k in lo) || $4<lo[k]) lo[k]=$4; if ($4>hi[k]) hi[k]=$4}
     END {for (k in s) printf "  %-40s %9.0f  (%.0f-%.0f)\n", k, s[k]/n[k], lo[k], hi[k]}' "$WORK/cmp" | sort
echo
fi

# --- nothing lost: a graceful stop, then every 2xx is a record ---------------------------------
kill -TERM "$(collector_pids)"
wait "$(collector_pids)" 2>/dev/null || true
written=$(cat "$WORK"/c0/data/*.ndjson* 2>/dev/null | wc -l)
echo "collector: $OK_TO_COLLECTOR 2xx counted by the clients, $written records written (in-flight answers at a run's end are written but not counted, so written >= counted)"
[ "$written" -ge "$OK_TO_COLLECTOR" ] || { echo "LOST: $((OK_TO_COLLECTOR - written))"; exit 1; }
