#!/usr/bin/env bash
# What a collector crash costs a keep-alive fleet (issue 26): a fleet of FLEET browsers pinging
# every INTERVAL, the collector kill -9'd and started again GAP later, with and without socket
# activation (a holder process owns the listening socket and passes it to each collector as
# LISTEN_FDS, as systemd's beacon-collector.socket does). Printed per mode: the fleet's failed
# requests and its browser-style retries (a ping on a dead keep-alive connection is sent again
# once on a new one), RUNS times, alternating.
#
# Knobs: RUNS=2 FLEET=3000 INTERVAL=5s GAP=1. Needs the release build.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
source "$ROOT/loadtest/common.sh"
trap cleanup EXIT
RUNS=${RUNS:-2}
FLEET=${FLEET:-3000}
INTERVAL=${INTERVAL:-5s}
GAP=${GAP:-1}
PORT=18095
need_release
need curl curl
need python3 python3
raise_nofile
machine

cat > "$WORK/collector.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
[admin]
enabled = false
[forward]
socket_path = "$WORK/run/processor.sock"
[processor.files]
data_dir = "$WORK/data"
[processor.admin]
enabled = false
[spool]
dir = "$WORK/spool"
[shutdown]
deregistration_delay_seconds = 0
[log]
format = "json"
level = "warn"
TOML

# A socket holder: binds once, then runs the collector with the socket as fd 3 (LISTEN_FDS=1,
# LISTEN_PID its own pid), again each time it is told to (SIGUSR1) after the collector died.
cat > "$WORK/holder.py" <<'PY'
import os, signal, socket, subprocess, sys
port, cmd = int(sys.argv[1]), sys.argv[2:]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port)); s.listen(4096)
os.dup2(s.fileno(), 3); os.set_inheritable(3, True)
def start():
    return subprocess.Popen(["sh", "-c", 'LISTEN_FDS=1 LISTEN_PID=$$ exec "$@"', "sh"] + cmd,
                            pass_fds=(3,), stderr=open(os.devnull, "w"))
child = start()
open(sys.argv[0] + ".pid", "w").write(str(child.pid))
def again(*_):
    global child
    child.wait()
    child = start()
    open(sys.argv[0] + ".pid", "w").write(str(child.pid))
signal.signal(signal.SIGUSR1, again)
signal.signal(signal.SIGTERM, lambda *_: (child.kill(), sys.exit(0)))
while True:
    signal.pause()
PY

one() { # MODE: prints "failed retried 2xx"
  local mode=$1 holder="" pid
  if [ "$mode" = activated ]; then
    python3 "$WORK/holder.py" "$PORT" "$BIN" serve -c "$WORK/collector.toml" &
    holder=$!
  else
    "$BIN" serve -c "$WORK/collector.toml" 2>/dev/null &
  fi
  wait_http "http://127.0.0.1:$PORT/livez"
  "$LG" --clients "$FLEET" --interval "$INTERVAL" -d 30s --json "http://127.0.0.1:$PORT/beacon" > "$WORK/fleet.json" &
  local lg=$!
  sleep 12
  if [ "$mode" = activated ]; then
    pid=$(cat "$WORK/holder.py.pid")
    kill -9 "$pid"; sleep "$GAP"; kill -USR1 "$holder"
  else
    pid=$(pgrep -f "serve -c $WORK/collector.toml" | head -1)
    kill -9 "$pid"; sleep "$GAP"
    "$BIN" serve -c "$WORK/collector.toml" 2>/dev/null &
  fi
  wait "$lg" || true
  if [ "$mode" = activated ]; then kill -TERM "$holder"; wait "$holder" 2>/dev/null || true
  else pkill -TERM -f "serve -c $WORK/collector.toml"; fi
  while pgrep -f "serve -c $WORK/collector.toml" >/dev/null; do sleep 0.2; done
  python3 -c "
import json; r = json.load(open('$WORK/fleet.json'))
ok = sum(v for k, v in r['status'].items() if k.startswith('2'))
print(r['errors_total'] + sum(v for k, v in r['status'].items() if not k.startswith('2')), r.get('retried', 0), ok)"
}

for run in $(seq "$RUNS"); do
  for mode in bind activated; do
    read -r failed retried ok < <(one $mode)
    echo "run $run $mode: $ok answered 2xx, $failed failed, $retried retried on a new connection ($FLEET clients every $INTERVAL, collector down ${GAP} s)"
  done
done
