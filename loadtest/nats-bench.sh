#!/usr/bin/env bash
# The processing stage's sinks under load: beacon-loadgen closed loop (-t1 -c64) against one
# collector whose embedded stage writes files, publishes to NATS JetStream, or both; a local
# single nats-server (file storage, R1) on loopback. Alternating runs, then a graceful stop
# and a check that the stream holds at least every 2xx the clients counted.
#
#   loadtest/nats-bench.sh                 # RUNS=3 DUR=10s
#   BEFORE=/path/to/old/beacon-collector loadtest/nats-bench.sh   # adds "files (before)" runs
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
source "$ROOT/loadtest/common.sh"
trap cleanup EXIT

RUNS="${RUNS:-3}"
DUR="${DUR:-10s}"
NATS_PORT=14222
NATS_MON=18222
need nats-server nats-server
need curl curl
[ -x "$ROOT/target/release/beacon-collector" ] && [ -x "$ROOT/target/release/beacon-loadgen" ] ||
  (cd "$ROOT" && cargo build --release --workspace --locked)
LOADGEN="$ROOT/target/release/beacon-loadgen"

nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON" -sd "$WORK/js" >"$WORK/nats.log" 2>&1 &
wait_http "http://127.0.0.1:$NATS_MON/healthz"

stream_messages() {
  curl -fs "http://127.0.0.1:$NATS_MON/jsz?streams=true" | python3 -c '
import json, sys
j = json.load(sys.stdin)
print(sum(s["state"]["messages"] for a in j.get("account_details", []) for s in a.get("stream_detail", [])))'
}

NATS_TOML="[processor.nats]
servers = [\"nats://127.0.0.1:$NATS_PORT\"]"
variants=("files" "nats" "files+nats")
[ -n "${BEFORE:-}" ] && variants=("files (before)" "${variants[@]}")

machine
echo "nats-server $(nats-server --version | awk '{print $2}'), JetStream file storage, R1, loopback"
printf '%-16s %4s %9s %8s %8s\n' sinks run "req/s" "p99 ms" "errors"
port=18100
for i in $(seq "$RUNS"); do
  for v in "${variants[@]}"; do
    port=$((port + 1))
    name="c$port"
    case "$v" in
      "files (before)") COLLECTOR_BIN="$BEFORE" OLD_KEYS=1 PROCESSOR_EXTRA="" EXTRA_TOML="" start_collector "$name" "$port" 0 ;;
      files) PROCESSOR_EXTRA='sinks = ["files"]' EXTRA_TOML="$NATS_TOML" start_collector "$name" "$port" 0 ;;
      nats) PROCESSOR_EXTRA='sinks = ["nats"]' EXTRA_TOML="$NATS_TOML" start_collector "$name" "$port" 0 ;;
      files+nats) PROCESSOR_EXTRA='sinks = ["files", "nats"]' EXTRA_TOML="$NATS_TOML" start_collector "$name" "$port" 0 ;;
    esac
    before=$(stream_messages)
    out="$WORK/$name.json"
    "$LOADGEN" --json -t 1 -c 64 -d "$DUR" "http://127.0.0.1:$port/beacon" >"$out" || true
    read -r rps p99 errors ok < <(python3 - "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ok = sum(v for k, v in r["status"].items() if k.startswith("2"))
print(f'{r["requests_per_second"]:.0f} {(r["latency_us"] or {}).get("p99", 0)/1000:.2f} {r["errors_total"]} {ok}')
PY
)
    # A graceful stop flushes the spool through the stage: then every 2xx is in its sinks.
    pid=$(cat "$WORK/$name/pid")
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    stored=$(( $(stream_messages) - before ))
    written=$( (cat "$WORK/$name"/data/*.ndjson* 2>/dev/null || true) | wc -l)
    printf '%-16s %4s %9s %8s %8s   2xx %s, stream +%s, files %s\n' "$v" "$i" "$rps" "$p99" "$errors" "$ok" "$stored" "$written"
    case "$v" in *nats*) [ "$stored" -ge "$ok" ] || { echo "LOST in the stream: $((ok - stored))"; exit 1; } ;; esac
    case "$v" in *files*) [ "$written" -ge "$ok" ] || { echo "LOST in the files: $((ok - written))"; exit 1; } ;; esac
    echo "$v $rps" >>"$WORK/cmp"
  done
done
echo
echo "mean requests/s over $RUNS runs:"
awk '{k=$0; sub(/ [^ ]+$/, "", k); s[k]+=$NF; n[k]++; if (!(k in lo) || $NF<lo[k]) lo[k]=$NF; if ($NF>hi[k]) hi[k]=$NF}
     END {for (k in s) printf "  %-16s %9.0f  (%.0f-%.0f)\n", k, s[k]/n[k], lo[k], hi[k]}' "$WORK/cmp" | sort
