#!/usr/bin/env bash
# HTTPS cost, the collector against nginx + OpenSSL with its JSON access log, same ECDSA P-256
# certificate, same sitting, runs alternating, medians and ratios:
#   1. keep-alive HTTPS, wrk -t1 -c64: requests/s and requests per server CPU-second;
#   2. full handshakes, beacon-loadgen --close -c16 (a new connection and handshake per
#      request, no resumption): handshakes per server CPU-second;
#   3. resumed handshakes, the same with --tls-resume (TLS 1.3 tickets);
#   4. an idle fleet over HTTPS (beacon-loadgen --clients N --interval 60s), each server
#      fresh: RSS growth per held TLS connection;
#   5. a handshake flood: keep-alive HTTPS browsers (FLOOD_CLIENTS, one beacon every 2 s)
#      alone, then beside an open loop of FLOOD_RATE new connections per second (a full
#      handshake each): the browsers' steady-state p99, and its ratio with and without.
# Server CPU is utime+stime of every server process (collector + its processing stage; nginx
# master + workers) over the run. The generators share the 2 cores: read the per-CPU-second
# figures, not the rates.
#
# On a 2-core box the generators' own handshakes take a core: 5,000 new connections/s needs a
# bigger machine (FLOOD_RATE=5000); the default offers what this one can generate.
# TLS_EXTRA goes into the collector's [tls] section (e.g. max_handshakes_per_worker = 8).
# Knobs: RUNS=3 DUR=8s FLEET_CLIENTS=10000 FLEET_DUR=40s FLOOD_CLIENTS=1000 FLOOD_RATE=2000
#        PARTS="keepalive full resumed fleet flood"
set -euo pipefail
RUNS=${RUNS:-3}
DUR=${DUR:-8s}
FLEET_CLIENTS=${FLEET_CLIENTS:-10000}
FLEET_DUR=${FLEET_DUR:-40s}
FLOOD_CLIENTS=${FLOOD_CLIENTS:-1000}
FLOOD_RATE=${FLOOD_RATE:-2000}
PARTS=${PARTS:-keepalive full resumed fleet flood}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
. "$ROOT/loadtest/common.sh"
trap cleanup EXIT

need_nginx_bench_tools
need openssl openssl
raise_nofile

cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" --workspace -q
LOADGEN="$ROOT/target/release/beacon-loadgen"
TCK=$(getconf CLK_TCK)

# One CA and one ECDSA P-256 leaf for localhost, shared by both servers.
PKI=$WORK/pki
mkdir -p "$PKI"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$PKI/ca.key" \
  -out "$PKI/ca.pem" -days 2 -subj "/CN=bench CA" -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$PKI/leaf.key" \
  -out "$PKI/leaf.csr" -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$PKI/ext"
openssl x509 -req -in "$PKI/leaf.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial \
  -out "$PKI/leaf.pem" -days 2 -extfile "$PKI/ext" 2>/dev/null

declare -A PORT=([collector]=18080 [nginx]=18081)
declare -A TLS_PORT=([collector]=18443 [nginx]=18444)
SERVERS="collector nginx"
start() { # server
  case $1 in
    collector) EXTRA_TOML="[tls]
enabled = true
listen = \"127.0.0.1:${TLS_PORT[collector]}\"
cert_file = \"$PKI/leaf.pem\"
key_file = \"$PKI/leaf.key\"
${TLS_EXTRA:-}" start_collector collector ${PORT[collector]} 0 ;;
    # nginx as it is deployed for this: TLS 1.2/1.3, tickets on, a shared session cache.
    nginx) NGINX_TLS_LISTEN="    listen 127.0.0.1:${TLS_PORT[nginx]} ssl reuseport backlog=4096;
    ssl_certificate $PKI/leaf.pem; ssl_certificate_key $PKI/leaf.key;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m; ssl_session_tickets on;" \
      start_nginx ${PORT[nginx]} ;;
  esac
}
url() { echo "https://localhost:${TLS_PORT[$1]}/beacon?u=https%3A%2F%2Fwww.example.com%2F&t_done=1234&v=1.0"; }

echo "HTTPS cost benchmark, $(date -u +%Y-%m-%dT%H:%MZ)"
machine
echo "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'), $(openssl version)"
echo

RESULTS="$WORK/results" # part server key value
: > "$RESULTS"

# measure PART SERVER CMD...: runs CMD, prints and records its rate and the server's cost.
# CMD prints "count rate" on its last line.
measure() {
  local part=$1 s=$2 ps_ c0 c1 out n rate percpu
  shift 2
  ps_=$(pids "$s" | xargs)
  c0=$(cpu_ticks $ps_)
  out=$("$@")
  c1=$(cpu_ticks $ps_)
  read -r n rate <<<"$(tail -1 <<<"$out")"
  percpu=$(python3 -c "print(f'{$n / max(($c1 - $c0) / $TCK, 1e-9):.0f}')")
  printf '  %-10s %-9s %10.0f/s %12s per server CPU-s\n' "$part" "$s" "$rate" "$percpu"
  echo "$part $s rate $rate" >> "$RESULTS"
  echo "$part $s percpu $percpu" >> "$RESULTS"
}
wrk_https() { # URL -> "requests rate"
  local out
  out=$(wrk -t1 -c64 -d"$DUR" "$1")
  echo "$(awk '/requests in/ {print $1}' <<<"$out") $(awk '/Requests\/sec/ {print $2}' <<<"$out")"
}
handshakes() { # URL [--tls-resume] -> "handshakes rate"
  "$LOADGEN" --json --close -c16 -d "$DUR" --cacert "$PKI/ca.pem" "${@:2}" "$1" |
    python3 -c 'import json,sys; j=json.load(sys.stdin); t=j["tls"] or {}; e=j["errors_total"]
print(f"errors {e}", file=sys.stderr) if e else None
print(t.get("handshakes", 0), t.get("per_second", 0))'
}

if [[ " $PARTS " =~ " keepalive "|" full "|" resumed " ]]; then
  for s in $SERVERS; do start $s; done
  for i in $(seq "$RUNS"); do
    echo "run $i"
    for s in $SERVERS; do
      [[ " $PARTS " != *" keepalive "* ]] || measure keepalive $s wrk_https "$(url $s)"
      [[ " $PARTS " != *" full "* ]] || measure full $s handshakes "$(url $s)"
      [[ " $PARTS " != *" resumed "* ]] || measure resumed $s handshakes "$(url $s)" --tls-resume
    done
  done
  for s in $SERVERS; do stop $s; done
  echo
fi

if [[ " $PARTS " == *" fleet "* ]]; then
  printf '%-44s %-9s %8s %12s\n' "fleet: $FLEET_CLIENTS HTTPS clients every 60 s, $FLEET_DUR" server held "RSS/conn KB"
  for s in $SERVERS; do
    fleet_rss $s "$(url $s)" "$FLEET_CLIENTS" 60s "$FLEET_DUR" --cacert "$PKI/ca.pem"
  done
  echo
fi

if [[ " $PARTS " == *" flood "* ]]; then
  printf '%-44s %-9s %10s %10s %8s %12s\n' "flood: $FLOOD_CLIENTS browsers / 2 s, +$FLOOD_RATE handshakes/s" server "p99 alone" "p99 flood" ratio "flood hs/s"
  for s in $SERVERS; do
    start $s
    browsers() {
      "$LOADGEN" --json --clients "$FLOOD_CLIENTS" --interval 2s -d "$DUR" --cacert "$PKI/ca.pem" "$(url $s)" |
        python3 -c 'import json,sys,statistics; j=json.load(sys.stdin)
print(j["errors"], file=sys.stderr) if j["errors_total"] else None
# Steady state: the median of the per-second p99s after the first 3 s (the browsers connect
# and handshake at the start).
b=[x["p99_us"] for x in j["timeline"] if x["t"] >= 3 and x["p99_us"]]
print(statistics.median(b) / 1000 if b else 0)'
    }
    for i in $(seq "$RUNS"); do
      alone=$(browsers)
      "$LOADGEN" --json --close --rate "$FLOOD_RATE" -c 256 -d "$DUR" --cacert "$PKI/ca.pem" "$(url $s)" > "$WORK/flood.json" &
      fl=$!
      flooded=$(browsers)
      wait $fl || true
      hs=$(python3 -c 'import json,sys; print(round((json.load(open(sys.argv[1]))["tls"] or {}).get("per_second", 0)))' "$WORK/flood.json")
      ratio=$(python3 -c "print(f'{$flooded / max($alone, 1e-9):.2f}')")
      printf '%-44s %-9s %8.2fms %8.2fms %8s %12s\n' "" $s "$alone" "$flooded" "$ratio" "$hs"
      echo "flood $s p99ratio $ratio" >> "$RESULTS"
    done
    stop $s
  done
  echo
fi

medians "$RESULTS"
full=$(median "$RESULTS" full collector percpu) res=$(median "$RESULTS" resumed collector percpu)
[ -z "$full" ] || [ -z "$res" ] ||
  python3 -c "print(f'  collector: resumed / full handshakes per CPU-second = {$res / $full:.2f}x')"
