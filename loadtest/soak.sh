#!/usr/bin/env bash
# Soak with faults (issue 26): a fleet of idle keep-alive browsers, bursts of load on top, and
# the six faults an operator meets, for SOAK_MINUTES; then the accounting every 2xx must pass.
#
#   fleet   FLEET clients, one beacon each every 15 s +-20 % (beacon-loadgen fleet mode, which
#           resends once on a new connection when a reused one was closed, as browsers do)
#   bursts  every BURST_EVERY s a 20 s burst: an open loop of BURST_RATE req/s or a -c64 closed
#           loop, alternating
#   faults  spread over the run, in this order: the processing stage kill -9'd; the stage
#           stopped (SIGSTOP) for 29 s; SIGHUP twice; the spool's disk filled (the stage stopped
#           90 s with the spool on a 192 MiB tmpfs; root only, else skipped and said so); the
#           collector kill -9'd and started again; SIGTERM and started again
#
# Accounting at the end: every beacon answered 2xx is in the NDJSON files (lost = 0), copies
# counted, every line read by Python's json; the fleet's and the bursts' answers apart (503s
# while the spool is full are the promise kept: refused, not lost; a closed-loop burst meets
# many), failed requests and browser-style retries; the collector's RSS and open fds sampled every
# 10 s (printed: first, peak, last). The collector is started with the release build and the
# default config but for ports, directories and logging. Bounded: SOAK_MINUTES (default 45) plus
# the final flush; every process it starts is stopped on exit.
#
# Knobs: SOAK_MINUTES=45 FLEET=12000 BURST_RATE=20000 BURST_EVERY=240.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
source "$ROOT/loadtest/common.sh"
MINUTES=${SOAK_MINUTES:-45}
FLEET=${FLEET:-12000}
BURST_RATE=${BURST_RATE:-20000}
BURST_EVERY=${BURST_EVERY:-240}
PORT=18090
need_release
need curl curl
need python3 python3
raise_nofile
machine
TMPFS=""
finish() {
  local rc=$?
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  [ "$rc" = 0 ] || { echo "--- collector log (last lines)"; tail -20 "$WORK/c/collector.log" 2>/dev/null; }
  [ -n "$TMPFS" ] && umount "$TMPFS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap finish EXIT

D=$WORK/c
mkdir -p "$D/spool"
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=192m tmpfs "$D/spool" 2>/dev/null; then
  TMPFS=$D/spool
fi
cat > "$D/collector.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
[admin]
listen = "127.0.0.1:18091"
[forward]
socket_path = "$D/run/processor.sock"
[processor.files]
data_dir = "$D/data"
[processor.admin]
listen = "127.0.0.1:18092"
[spool]
dir = "$D/spool"
max_bytes = 167772160
segment_bytes = 16777216
[log]
format = "json"
level = "warn"
TOML

COLLECTOR=""
start() {
  "$BIN" serve -c "$D/collector.toml" 2>>"$D/collector.log" &
  COLLECTOR=$!
  wait_http "http://127.0.0.1:$PORT/livez"
}
stage_pid() { pgrep -P "$COLLECTOR" -f "process --watch-stdin" | head -1; }
say() { echo "[$(date +%H:%M:%S) +$((SECONDS - T0))s] $*"; }

start
T0=$SECONDS
END=$((MINUTES * 60))
"$LG" --clients "$FLEET" --interval 15s -d "${END}s" --json "http://127.0.0.1:$PORT/beacon" \
  > "$WORK/fleet.json" 2>"$WORK/fleet.err" &
FLEET_PID=$!

# Bursts, each writing its report.
(
  n=0
  sleep 60
  while [ $((SECONDS - T0 + 20)) -lt "$END" ]; do
    n=$((n + 1))
    if [ $((n % 2)) = 1 ]; then
      "$LG" --rate "$BURST_RATE" -c 64 -d 20s --json "http://127.0.0.1:$PORT/beacon" > "$WORK/burst-$n.json" 2>/dev/null || true
    else
      "$LG" -c 64 -d 20s --json "http://127.0.0.1:$PORT/beacon" > "$WORK/burst-$n.json" 2>/dev/null || true
    fi
    sleep "$BURST_EVERY"
  done
) &

# RSS and fds every 10 s.
(
  while kill -0 "$FLEET_PID" 2>/dev/null; do
    p=$(pgrep -f "beacon-collector serve -c $D/collector.toml" | head -1 || true)
    if [ -n "$p" ]; then
      echo "$(awk '/VmRSS/ {print $2}' /proc/$p/status 2>/dev/null) $(ls /proc/$p/fd 2>/dev/null | wc -l)" >> "$WORK/samples"
    fi
    sleep 10
  done
) &

# The faults, spread evenly over the run.
step=$((END / 8))
at() { local t=$(( $1 * step )); while [ $((SECONDS - T0)) -lt $t ]; do sleep 1; done; }
at 1; say "fault: processing stage kill -9"; kill -9 "$(stage_pid)"
at 2; say "fault: processing stage stopped 29 s"; s=$(stage_pid); kill -STOP "$s"; sleep 29; kill -CONT "$s"
at 3; say "fault: SIGHUP twice"; kill -HUP "$COLLECTOR"; sleep 5; kill -HUP "$COLLECTOR"
at 4
if [ -n "$TMPFS" ]; then
  say "fault: spool disk filled (stage stopped 90 s, spool on a 192 MiB tmpfs)"
  s=$(stage_pid); kill -STOP "$s"
  head -c 100M /dev/zero > "$TMPFS/filler" 2>/dev/null || true
  sleep 90
  rm -f "$TMPFS/filler"; kill -CONT "$s"
else
  say "skipped: spool disk filled (needs root to mount a tmpfs)"
fi
at 5; say "fault: collector kill -9, started again"; kill -9 "$COLLECTOR"; wait "$COLLECTOR" 2>/dev/null || true
pkill -9 -f "process --watch-stdin -c $D/spool" 2>/dev/null || true; start
at 6; say "fault: SIGTERM, started again"; kill -TERM "$COLLECTOR"; wait "$COLLECTOR" 2>/dev/null || true; start

wait "$FLEET_PID" || true
say "load done; stopping the collector (SIGTERM: drain and flush)"
kill -TERM "$COLLECTOR"; wait "$COLLECTOR" 2>/dev/null || true
for _ in 1 2; do wait 2>/dev/null || true; done

python3 - "$WORK" "$D/data" <<'PY'
import glob, json, os, sys
work, data = sys.argv[1], sys.argv[2]
answered = 0
parts = {}
for name, files in (("fleet", [os.path.join(work, "fleet.json")]),
                    ("bursts", glob.glob(os.path.join(work, "burst-*.json")))):
    p = parts[name] = {"2xx": 0, "503": 0, "other non-2xx": 0, "failed": 0, "retried": 0}
    for f in files:
        try:
            r = json.load(open(f))
        except Exception:
            continue
        for k, v in r["status"].items():
            p["2xx" if k.startswith("2") else "503" if k == "503" else "other non-2xx"] += v
        p["failed"] += r["errors_total"]
        p["retried"] += r.get("retried", 0)
    answered += p["2xx"]
lines = ids = 0
seen = set()
unreadable = 0
for f in glob.glob(os.path.join(data, "*.ndjson*")):
    for line in open(f, "rb"):
        lines += 1
        try:
            seen.add(json.loads(line)["id"])
        except Exception:
            unreadable += 1
samples = [tuple(map(int, l.split())) for l in open(os.path.join(work, "samples")) if len(l.split()) == 2]
rss = [s[0] for s in samples]
fds = [s[1] for s in samples]
print(f"answered 2xx: {answered:,}  distinct records: {len(seen):,}  lost: {max(0, answered - len(seen)):,}  copies: {lines - len(seen) - unreadable:,}  unreadable lines: {unreadable}")
for name, p in parts.items():
    print(f"{name}: " + ", ".join(f"{k} {v:,}" for k, v in p.items()))
if rss:
    print(f"collector RSS KB first/peak/last: {rss[0]:,} / {max(rss):,} / {rss[-1]:,}; open fds first/peak/last: {fds[0]} / {max(fds)} / {fds[-1]}")
sys.exit(0 if answered <= len(seen) and unreadable == 0 else 1)
PY
