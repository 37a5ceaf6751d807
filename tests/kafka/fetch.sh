#!/usr/bin/env bash
# Fetches the Apache Kafka broker the Kafka sink's tests start (kafka_2.13 and its runtime
# dependencies, from Maven Central; Maven caches them in ~/.m2) into DIR, default
# target/kafka-libs. Does nothing when DIR already holds what tests/kafka/pom.xml lists.
# Needs Java 17 and Maven (.ci/run installs them when missing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$ROOT/target/kafka-libs}
POM="$ROOT/tests/kafka/pom.xml"
stamp=$(sha256sum "$POM" | cut -d' ' -f1)
if [ "$(cat "$OUT/.fetched" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi
rm -rf "$OUT"
mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$OUT"
echo "$stamp" > "$OUT/.fetched"
echo "Kafka broker: $(ls "$OUT" | grep -c '\.jar$') jars in $OUT"
