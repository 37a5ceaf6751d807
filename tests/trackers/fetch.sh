#!/usr/bin/env bash
# Fetches the trackers the browser test loads as they are (boomerangjs, @snowplow/browser-tracker,
# posthog-js, versions pinned in package.json and package-lock.json, from the npm registry) into
# DIR, default target/trackers/node_modules. Does nothing when DIR already holds that lock.
# Needs npm (.ci/run installs it when missing). No install scripts run: the test serves the
# packages' own dist files, nothing is built.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$ROOT/target/trackers}
LOCK="$ROOT/tests/trackers/package-lock.json"
stamp=$(cat "$ROOT/tests/trackers/package.json" "$LOCK" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$OUT/.fetched" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
rm -rf "$OUT"
mkdir -p "$OUT"
cp "$ROOT/tests/trackers/package.json" "$LOCK" "$OUT/"
(cd "$OUT" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
echo "$stamp" > "$OUT/.fetched"
echo "trackers: $(ls "$OUT/node_modules" | tr '\n' ' ') in $OUT"
