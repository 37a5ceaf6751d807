#!/usr/bin/env bash
# The processing stage's sinks under load, with Kafka: beacon-loadgen closed loop (-t1 -c64)
# against one collector whose embedded stage writes files, produces to Kafka, or both; one
# local Apache Kafka broker (KRaft, the jars tests/kafka/fetch.sh fetches, 512 MB heap) on
# loopback; the topic has 6 partitions, replication 1, lz4, the idempotent producer with
# acks=all. Alternating runs. Per run: requests/s, p99, and the CPU-seconds (utime+stime) the
# stage and the broker spent per beacon; then a graceful stop and a check that the topic holds
# every 2xx the clients counted (read back with examples/kafka-consumer, copies dropped).
#
#   loadtest/kafka-bench.sh                 # RUNS=3 DUR=10s, about 4 minutes
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
source "$ROOT/loadtest/common.sh"
trap 'kill "$(cat "$WORK/kafka.pid" 2>/dev/null)" 2>/dev/null || true; cleanup' EXIT

RUNS="${RUNS:-3}"
DUR="${DUR:-10s}"
KAFKA_PORT=19092
need java openjdk-17-jre-headless
need mvn maven
need python3 python3
bash "$ROOT/tests/kafka/fetch.sh"
LIBS="$ROOT/target/kafka-libs"
(cd "$ROOT" && cargo build --release --workspace --locked -q && cargo build --release --locked -q --example kafka-consumer)
LOADGEN="$ROOT/target/release/beacon-loadgen"
CONSUMER="$ROOT/target/release/examples/kafka-consumer"

cat >"$WORK/kafka.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$((KAFKA_PORT + 1))
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$((KAFKA_PORT + 1))
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$WORK/kafka-data
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
java -cp "$LIBS/*" kafka.tools.StorageTool format -t YmVhY29uLWNvbGxlY3Rvcg -c "$WORK/kafka.properties" >/dev/null 2>&1
java -Xms512m -Xmx512m -cp "$LIBS/*" kafka.Kafka "$WORK/kafka.properties" >"$WORK/kafka.log" 2>&1 &
echo $! >"$WORK/kafka.pid"
for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null && break; sleep 0.2; done

HZ=$(getconf CLK_TCK)
KAFKA_PID=$(cat "$WORK/kafka.pid")

KAFKA_TOML="[processor.kafka]
bootstrap_servers = [\"127.0.0.1:$KAFKA_PORT\"]"
variants=("files" "kafka" "files+kafka")

machine
echo "Apache Kafka $(basename "$LIBS"/kafka_2.13-*.jar .jar | sed 's/kafka_2.13-//'), KRaft single node, loopback; java $(java -version 2>&1 | head -1 | cut -d'"' -f2)"
printf '%-12s %4s %9s %8s %7s %12s %13s\n' sinks run "req/s" "p99 ms" errors "stage us/b" "broker us/b"
port=18200
for i in $(seq "$RUNS"); do
  for v in "${variants[@]}"; do
    port=$((port + 1))
    name="c$port"
    case "$v" in
      files) PROCESSOR_EXTRA='sinks = ["files"]' ;;
      kafka) PROCESSOR_EXTRA='sinks = ["kafka"]' ;;
      files+kafka) PROCESSOR_EXTRA='sinks = ["files", "kafka"]' ;;
    esac
    PROCESSOR_EXTRA="$PROCESSOR_EXTRA" EXTRA_TOML="$KAFKA_TOML" start_collector "$name" "$port" 0
    pid=$(cat "$WORK/$name/pid")
    stage=$(pgrep -P "$pid" | head -1)
    s0=$(cpu_ticks "$stage"); s1=$s0; k0=$(cpu_ticks "$KAFKA_PID")
    out="$WORK/$name.json"
    "$LOADGEN" --json -t 1 -c 64 -d "$DUR" "http://127.0.0.1:$port/beacon" >"$out" || true
    # A graceful stop flushes the spool through the stage: then every 2xx is in its sinks,
    # and the stage's and broker's CPU covers every beacon of the run.
    kill -TERM "$pid"
    while kill -0 "$stage" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$stage/stat" 2>/dev/null)" != Z ]; do
      s1=$(cpu_ticks "$stage" 2>/dev/null || echo "${s1:-$s0}")
      sleep 0.1
    done
    wait "$pid" 2>/dev/null || true
    k1=$(cpu_ticks "$KAFKA_PID")
    read -r rps p99 errors ok < <(python3 - "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ok = sum(v for k, v in r["status"].items() if k.startswith("2"))
print(f'{r["requests_per_second"]:.0f} {(r["latency_us"] or {}).get("p99", 0)/1000:.2f} {r["errors_total"]} {ok}')
PY
)
    per() { python3 -c "print(f'{($1) / $HZ * 1e6 / max($2, 1):.1f}')"; }
    stage_us=$(per "$s1 - $s0" "$ok"); broker_us=$(per "$k1 - $k0" "$ok")
    written=$( (cat "$WORK/$name"/data/*.ndjson* 2>/dev/null || true) | wc -l)
    printf '%-12s %4s %9s %8s %7s %12s %13s   2xx %s, files %s\n' "$v" "$i" "$rps" "$p99" "$errors" "$stage_us" "$([ "$v" = files ] && echo - || echo "$broker_us")" "$ok" "$written"
    case "$v" in *files*) [ "$written" -ge "$ok" ] || {
      echo "LOST in the files: $((ok - written)); the collector's last warnings:"
      grep -v '"INFO"' "$WORK/$name/collector.log" | grep -v '"check: ' | tail -15
      exit 1
    } ;; esac
    case "$v" in *kafka*) echo "$ok" >>"$WORK/kafka-ok" ;; esac
    echo "$v $rps $stage_us $broker_us" >>"$WORK/cmp"
  done
done
echo
echo "medians over $RUNS runs (requests/s, stage and broker CPU per beacon in microseconds):"
python3 - "$WORK/cmp" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    *name, rps, s, b = line.split()
    rows.setdefault(" ".join(name), []).append((float(rps), float(s), float(b)))
for name, r in rows.items():
    med = [statistics.median(x[i] for x in r) for i in range(3)]
    broker = "-" if name == "files" else f"{med[2]:.1f}"
    print(f"  {name:12} {med[0]:9.0f} req/s   stage {med[1]:5.1f} us/beacon   broker {broker} us/beacon")
PY
# Every 2xx of the Kafka runs is in the topic (read back once, copies dropped by beacon-id).
want=$(awk '{s+=$1} END {print s+0}' "$WORK/kafka-ok")
got=$("$CONSUMER" --brokers "127.0.0.1:$KAFKA_PORT" --group bench-check --exit-when-idle 3 2>/dev/null | wc -l)
echo "topic: $got beacons for $want 2xx counted by the clients (in-flight answers at a run's end are stored but not counted)"
[ "$got" -ge "$want" ] || { echo "LOST in the topic: $((want - got))"; exit 1; }
