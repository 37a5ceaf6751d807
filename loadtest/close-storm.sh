#!/usr/bin/env bash
# Close storm (issue 26): a fleet of idle keep-alive clients closes all at once (a client NAT
# box, a load balancer dropping its pool) while a probe load measures everyone else's latency.
# The fleet is a beacon-loadgen process killed with SIGKILL, so the kernel closes every one of
# its sockets in one go and nothing of the generator's own work is in the measurement: what the
# probe sees is the server's (and the kernel's) cost of thousands of EOFs at once.
#
# For the collector and a reference nginx, alternating, RUNS times each:
#   - FLEET clients connect (one beacon each, then idle: --interval 15s);
#   - a probe runs an open loop of RATE req/s over 64 keep-alive connections for 12 s;
#   - 6 s into the probe the fleet is killed.
# Printed per run: the probe's p99 in the seconds before the kill (median of the 1-s bins), the
# worst 1-s bin from the kill on, and errors; then the medians of both servers.
#
# Knobs: RUNS=3 FLEET=12000 RATE=5000 WORKERS=2. Needs the release build
# (cargo build --release), nginx and curl (installed from Debian's packages as root).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
source "$ROOT/loadtest/common.sh"
trap cleanup EXIT

RUNS=${RUNS:-3}
FLEET=${FLEET:-12000}
RATE=${RATE:-5000}
WORKERS=${WORKERS:-2}
need_release
need nginx nginx-light
need curl curl
need python3 python3
need ss iproute2
raise_nofile
machine

established() { # PORT: connections established to it
  ss -Htn state established "( sport = :$1 )" | wc -l
}

# one NAME PORT: prints "base_p99_ms storm_p99_ms errors"
one() {
  local port=$2 fleet probe
  "$LG" --clients "$FLEET" --interval 15s -d 120s --json "http://127.0.0.1:$port/beacon" \
    > "$WORK/fleet.json" 2>/dev/null &
  fleet=$!
  for _ in $(seq 600); do
    [ "$(established "$port")" -ge $((FLEET * 99 / 100)) ] && break
    sleep 0.1
  done
  "$LG" --rate "$RATE" -c 64 -d 12s --json "http://127.0.0.1:$port/beacon" > "$WORK/probe.json" &
  probe=$!
  sleep 6
  kill -9 "$fleet"
  wait "$probe" || true
  wait "$fleet" 2>/dev/null || true
  python3 - "$WORK/probe.json" <<'PY'
import json, statistics, sys
r = json.load(open(sys.argv[1]))
bins = [b for b in r["timeline"] if b["p99_us"] is not None]
before = [b["p99_us"] for b in bins if b["t"] + b["seconds"] <= 5.5]
after = [b["p99_us"] for b in bins if b["t"] >= 5 and b["t"] < 9]
print(f"{statistics.median(before)/1000:.2f} {max(after)/1000:.2f} {r['errors_total']}")
PY
}

declare -A base storm
start_collector collector 18081 "$WORKERS"
start_nginx 18082
for run in $(seq "$RUNS"); do
  for s in collector nginx; do
    port=$([ $s = collector ] && echo 18081 || echo 18082)
    read -r b w e < <(one $s $port)
    echo "run $run $s: p99 before ${b} ms, worst second after the storm ${w} ms, errors $e"
    base[$s]+="$b "
    storm[$s]+="$w "
    # Let the server finish the last storm's closes before the next fleet connects.
    sleep 3
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for s in collector nginx; do
  echo "$s: median p99 before $(median <<<"${base[$s]}") ms, median worst second after $(median <<<"${storm[$s]}") ms ($FLEET clients closing at once, probe $RATE req/s)"
done
