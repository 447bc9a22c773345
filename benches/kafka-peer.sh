#!/usr/bin/env bash
# sidelog's modes next to Apache Kafka, in one run (issue 26).
#
# Starts two single-node Kafka brokers (KRaft) on loopback from the jars
# tests/services/kafka/fetch.sh puts in target/kafka (Maven Central): one with Kafka's default
# flush (no fsync before the ack: the OS writes the log back when it likes) and one with
# `log.flush.interval.messages=1` (fsync before every ack, as sidelog does). Runs `sidelog
# bench` with both as peers (a librdkafka producer workload, acks=all, idempotent), and with
# sidelog's modes delivering through the Kafka sink into the first broker (end to end), then
# stops them. Extra arguments go to `sidelog-bench`, e.g.:
#
#   benches/kafka-peer.sh --modes none,hml --duration 5s --batch 100 --producers 16
#
# The Kafka sink is exactly once (transactions and progress records) unless
# KAFKA_SINK_OPTIONS says otherwise, e.g. KAFKA_SINK_OPTIONS=exactly_once=false for the
# idempotent producer alone (at least once).
#
# Needs Java 17+ and Maven (for the first fetch), and a release build of sidelog (built here).
set -euo pipefail
cd "$(dirname "$0")/.."

tests/services/kafka/fetch.sh
cp="$PWD/target/kafka/lib/*"
cargo build --release --quiet -p sidelog -p sidelog-bench
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start() { # name port controller_port extra_setting
  local props="$work/$1.properties"
  cat >"$props" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$3
listeners=PLAINTEXT://127.0.0.1:$2,CONTROLLER://127.0.0.1:$3
advertised.listeners=PLAINTEXT://127.0.0.1:$2
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$work/$1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
$4
PROPS
  java -cp "$cp" kafka.tools.StorageTool format -t c2lkZWxvZy1iZW5jaC1rYWZrYS1jbHVzdGVy -c "$props" >/dev/null
  java -Xmx1g -cp "$cp" kafka.Kafka "$props" >"$work/$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
    sleep 0.2
  done
  echo "Kafka ($1) did not start:" >&2
  tail -20 "$work/$1.log" >&2
  exit 1
}

start default 19192 19193 ""
default_pid=${pids[-1]}
start fsync 19194 19195 "log.flush.interval.messages=1"
fsync_pid=${pids[-1]}
java -cp "$cp" org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:19192 \
  --create --topic sidelog-bench-e2e --partitions 8 --replication-factor 1 >/dev/null

target/release/sidelog-bench \
  --sink "kafka://127.0.0.1:19192/sidelog-bench-e2e${KAFKA_SINK_OPTIONS:+?$KAFKA_SINK_OPTIONS}" \
  --peer "kafka://127.0.0.1:19192?label=kafka-default&pid=$default_pid" \
  --peer "kafka://127.0.0.1:19194?label=kafka-fsync&pid=$fsync_pid" \
  "$@"
