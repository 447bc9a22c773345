#!/usr/bin/env bash
# Fetches Apache Kafka (broker, controller and its own command-line tools) from Maven Central
# into target/kafka/lib, once: the Kafka of tests/services/kafka.rs and of .ci/run. Nothing
# comes from anywhere but the registry (Maven resolves the jars and their dependencies).
# Usage: tests/services/kafka/fetch.sh [TARGET_DIR]   (default: target/kafka)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-$HERE/../../../target/kafka}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ -f "$OUT/lib/.complete" ]; then
    exit 0
fi
command -v mvn >/dev/null || { echo "kafka: mvn (Maven) is not installed" >&2; exit 1; }
command -v java >/dev/null || { echo "kafka: java (17 or later) is not installed" >&2; exit 1; }
rm -rf "$OUT/lib"
mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$OUT/lib" -DincludeScope=runtime
touch "$OUT/lib/.complete"
echo "kafka: $(ls "$OUT/lib" | grep -c '\.jar$') jars in $OUT/lib"
