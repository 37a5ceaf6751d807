# Shared by the loadtest scripts (source it): tool checks, a collector with its processing
# stage and a reference nginx on loopback, each in its own directory under $WORK.
# The caller sets ROOT and WORK and kills its jobs on exit (`cleanup` below helps).

# PIN=1: every server confined to CPU $SERVER_CPU (1) with one worker (the collector: one
# ingest worker, its forwarder and its processing stage; nginx: one worker process), every
# generator to CPU $LOAD_CPU (0). On a 2-core box unpinned figures flatter whichever server
# leaves the generator more of the machine; pinned, each server has exactly one core.
SERVER_PREFIX=""
LOAD_PREFIX=""
if [ "${PIN:-0}" = 1 ]; then
  SERVER_PREFIX="taskset -c ${SERVER_CPU:-1}"
  LOAD_PREFIX="taskset -c ${LOAD_CPU:-0}"
fi

# need CMD PACKAGE: the command, installed from Debian's packages when running as root.
need() {
  command -v "$1" >/dev/null 2>&1 && return
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1 ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }
  fi
  command -v "$1" >/dev/null 2>&1 || { echo "need $1 (apt-get install $2)" >&2; exit 2; }
}

# The tools every nginx comparison needs.
need_nginx_bench_tools() {
  need wrk wrk
  need nginx nginx-light
  need curl curl
  need python3 python3
}

# The release binaries the load scripts run: sets LG and BIN, or says how to build them.
need_release() {
  LG=$ROOT/target/release/beacon-loadgen
  BIN=$ROOT/target/release/beacon-collector
  [ -x "$LG" ] && [ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
}

# Raise the soft nofile limit to the hard one: the fleet scenario holds 10k connections on
# each side of loopback.
raise_nofile() { ulimit -n "$(ulimit -Hn)"; }

wait_http() { # URL: up to 10 s for the server to answer
  for _ in $(seq 100); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "no answer from $1" >&2; return 1
}

# start_collector NAME PORT WORKERS: beacon-collector + its embedded stage writing NDJSON under
# $WORK/NAME/data; pid in $WORK/NAME/pid. $SERVER_EXTRA goes into [server] (e.g. the engine),
# $SPOOL_EXTRA into [spool], $PROCESSOR_EXTRA into [processor] (e.g. sinks), $EXTRA_TOML at the
# end (e.g. a [processor.nats] table); $COLLECTOR_BIN runs another build ($WORKERS_KEY names
# its worker-count key: `worker_threads` before the thread-per-core workers; OLD_KEYS=1 writes
# the [processor] keys as builds before [processor.files] read them).
start_collector() {
  local workers=$3
  [ "${PIN:-0}" != 1 ] || workers=1
  mkdir -p "$WORK/$1"
  local stage="[processor.files]
data_dir = \"$WORK/$1/data\"
[processor.admin]
enabled = false"
  [ -z "${OLD_KEYS:-}" ] || stage="data_dir = \"$WORK/$1/data\"
admin_enabled = false"
  cat > "$WORK/$1/collector.toml" <<TOML
[server]
listen = "127.0.0.1:$2"
${WORKERS_KEY:-workers} = $workers
${SERVER_EXTRA:-}
[admin]
enabled = false
[forward]
socket_path = "$WORK/$1/run/processor.sock"
[processor]
${PROCESSOR_EXTRA:-}
$stage
[spool]
dir = "$WORK/$1/spool"
${SPOOL_EXTRA:-}
[shutdown]
deregistration_delay_seconds = 0
[log]
format = "json"
level = "warn"
${EXTRA_TOML:-}
TOML
  $SERVER_PREFIX "${COLLECTOR_BIN:-$ROOT/target/release/beacon-collector}" serve -c "$WORK/$1/collector.toml" 2>"$WORK/$1/collector.log" &
  echo $! > "$WORK/$1/pid"
  wait_http "http://127.0.0.1:$2/healthz"
}

# start_nginx PORT: `return 204` for /beacon with a buffered JSON access log (the nginx +
# log-shipper tier the collector replaces); master pid in $WORK/nginx.pid. $NGINX_TLS_LISTEN
# goes into its server block (tls-bench.sh: an `ssl` listener and its certificate).
start_nginx() {
  mkdir -p "$WORK/nginx"
  cat > "$WORK/nginx.conf" <<NGX
worker_processes $([ "${PIN:-0}" = 1 ] && echo 1 || echo auto);
worker_rlimit_nofile $(ulimit -Hn);
pid $WORK/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  log_format beacon escape=json '{"time":"\$time_iso8601","remote_addr":"\$remote_addr",'
    '"method":"\$request_method","uri":"\$uri","query":"\$query_string",'
    '"user_agent":"\$http_user_agent","referer":"\$http_referer"}';
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  keepalive_timeout 75s;
  server {
    listen 127.0.0.1:$1 reuseport backlog=4096;
${NGINX_TLS_LISTEN:-}
    location /beacon { access_log $WORK/nginx/beacons.ndjson beacon buffer=64k flush=1s; return 204; }
  }
}
NGX
  $SERVER_PREFIX nginx -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log"
  wait_http "http://127.0.0.1:$1/beacon"
}

# run_wrk URL THREADS CONNS DURATION -> "requests/s p99_ms non-2xx requests"
run_wrk() {
  local out rps p99 non2xx n
  out=$($LOAD_PREFIX wrk -t"$2" -c"$3" -d"$4" --latency "$1")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $4}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  echo "$rps $p99 ${non2xx:-0} $n"
}

# Servers by name ($WORK/NAME/pid for a collector, nginx's master pid file for nginx): the
# processes whose CPU, RSS and context switches the benchmarks read.
# stop SERVER: nginx, or the collector started as NAME; waits until it is gone.
stop() { # server
  if [ "$1" = nginx ]; then
    stop_nginx
    # nginx removes its pid file as it exits: read it once per check, quietly.
    while pid=$(cat "$WORK/nginx.pid" 2>/dev/null) && kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$WORK/nginx.pid"
  else
    kill -TERM "$(cat "$WORK/$1/pid")" 2>/dev/null || true
    while kill -0 "$(cat "$WORK/$1/pid")" 2>/dev/null; do sleep 0.1; done
  fi
}
pids() { # server: every process of it
  if [ "$1" = nginx ]; then
    cat "$WORK/nginx.pid"
    pgrep -P "$(cat "$WORK/nginx.pid")"
  else
    cat "$WORK/$1/pid"
    pgrep -P "$(cat "$WORK/$1/pid")" || true
  fi
}
conn_pids() { # server: the processes holding client connections
  if [ "$1" = nginx ]; then pgrep -P "$(cat "$WORK/nginx.pid")"; else cat "$WORK/$1/pid"; fi
}
cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
vcsw() { # every thread's voluntary context switches
  local t=0 p f
  for p in "$@"; do
    for f in /proc/"$p"/task/*/status; do
      t=$((t + $(awk '/^voluntary_ctxt_switches/ {print $2}' "$f" 2>/dev/null || echo 0)))
    done
  done
  echo $t
}
rss_kb() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $t; }

stop_nginx() { [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true; }

cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  stop_nginx
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

machine() {
  echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB, Linux $(uname -r)"
}

# medians RESULTS: the median of every "part server key value" line of RESULTS, with its ratio
# to nginx's for the same part and key.
medians() {
  echo "medians (ratio to nginx):"
  python3 - "$1" <<'PY'
import sys, statistics, collections
vals = collections.defaultdict(list)
for line in open(sys.argv[1]):
    part, server, key, v = line.split()
    vals[(part, server, key)].append(float(v))
med = {k: statistics.median(v) for k, v in vals.items()}
for (part, server, key), v in sorted(med.items()):
    ref = med.get((part, "nginx", key))
    ratio = f"  ({v / ref:.2f}x)" if ref and server != "nginx" else ""
    print(f"  {part:10} {key:8} {server:9} {v:12.3f}{ratio}")
PY
}

# median RESULTS PART SERVER KEY: one median (empty when there are none).
median() {
  python3 - "$@" <<'PY'
import sys, statistics
f, part, server, key = sys.argv[1:]
v = [float(l.split()[3]) for l in open(f) if l.split()[:3] == [part, server, key]]
print(statistics.median(v) if v else "")
PY
}

# fleet_rss SERVER URL CLIENTS INTERVAL DURATION [LOADGEN OPTION...]: SERVER started fresh (the
# caller's `start`), a fleet of CLIENTS keep-alive browsers on URL; prints and records
# ("fleet SERVER rsskb") the RSS growth per held connection, sampled 10 s before the end, when
# every client is connected and idle between pings.
fleet_rss() {
  local s=$1 url=$2 clients=$3 interval=$4 dur=$5 ps_ before during lg held per
  shift 5
  start "$s"
  sleep 1
  ps_=$(conn_pids "$s" | xargs)
  before=$(rss_kb $ps_)
  $LOAD_PREFIX "$LOADGEN" --json --clients "$clients" --interval "$interval" -d "$dur" "$@" "$url" > "$WORK/fleet.json" || true &
  lg=$!
  sleep $(( ${dur%s} - 10 ))
  during=$(rss_kb $ps_)
  wait $lg || true
  held=$(python3 -c 'import json,sys; print((json.load(open(sys.argv[1]))["connections_held"] or {}).get("min_after_ramp", 0))' "$WORK/fleet.json")
  per=$(python3 -c "print(f'{($during - $before) / max($held, 1):.2f}')")
  printf '%-44s %-9s %8s %12s\n' "" "$s" "$held" "$per"
  echo "    RSS ${before} kB idle -> ${during} kB with the fleet connected"
  echo "fleet $s rsskb $per" >> "$RESULTS"
  stop "$s"
}
