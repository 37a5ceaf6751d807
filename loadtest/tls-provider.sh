#!/usr/bin/env bash
# Which rustls crypto provider the HTTPS listener uses, by measurement: for ring and aws-lc-rs,
#   1. the build of loadtest/tls-provider from a clean target directory (seconds, release),
#   2. the size of that binary (what the provider adds to a program that does only TLS),
#   3. server-side CPU per full and per resumed TLS 1.3 handshake (X25519) with an ECDSA P-256
#      and an RSA 2048 certificate, in memory, pinned to one core (RUNS runs each, alternating,
#      medians).
# Usage: loadtest/tls-provider.sh        Knobs: RUNS=3 N=2000 CPU=1
# Needs openssl (certificates), a C compiler and cmake (aws-lc-sys).
set -euo pipefail
RUNS=${RUNS:-3}
N=${N:-2000}
CPU=${CPU:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
MANIFEST="$ROOT/loadtest/tls-provider/Cargo.toml"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -keyout "$WORK/ec.key" -out "$WORK/ec.pem" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -keyout "$WORK/rsa.key" -out "$WORK/rsa.pem" 2>/dev/null

echo "rustls crypto providers, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $N handshakes per run, pinned to CPU $CPU"
declare -A BIN
for p in ring aws-lc-rs; do
  # Dependencies fetched first, so the clock measures compiling only.
  cargo fetch -q --manifest-path "$MANIFEST"
  start=$(date +%s.%N)
  cargo build -q --release --manifest-path "$MANIFEST" --no-default-features --features "$p" \
    --target-dir "$WORK/target-$p"
  end=$(date +%s.%N)
  BIN[$p]="$WORK/target-$p/release/tls-provider"
  strip -o "$WORK/$p.stripped" "${BIN[$p]}"
  printf '%-10s build from clean: %5.0f s   binary: %5.1f MB (stripped %4.1f MB)\n' "$p" \
    "$(echo "$end - $start" | bc)" "$(echo "$(stat -c %s "${BIN[$p]}") / 1048576" | bc -l)" \
    "$(echo "$(stat -c %s "$WORK/$p.stripped") / 1048576" | bc -l)"
done
for r in $(seq "$RUNS"); do
  for p in ring aws-lc-rs; do
    taskset -c "$CPU" "${BIN[$p]}" "$WORK/ec.pem" "$WORK/ec.key" "$WORK/rsa.pem" "$WORK/rsa.key" "$N" \
      | sed "s/^/run $r: /" | tee -a "$WORK/runs"
  done
done
echo "medians (handshakes per server CPU-second):"
python3 - "$WORK/runs" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"run \d+: (\S+) (\S+) (\S+): (\d+) handshakes", line)
    if m:
        rows.setdefault(m.group(1, 2, 3), []).append(int(m.group(4)))
for (p, key, kind), v in sorted(rows.items(), key=lambda x: (x[0][1], x[0][2], x[0][0])):
    print(f"  {key:10} {kind:8} {p:10} {statistics.median(v):8.0f}   ({', '.join(map(str, v))})")
PY
