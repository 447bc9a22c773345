#!/usr/bin/env bash
# Builds deploy/container/Dockerfile with podman and runs the image the way it is deployed:
# health answers, the user is not root, published messages are acked while the sink is down,
# the container is SIGKILLed, and started again on the same volume it replays every acked
# message to the sink. Usage: deploy/container/test.sh path/to/sidelog
#
# The binary given is put in the image (BINARY_FROM) instead of compiling inside the build, and
# the Debian base image is made from Debian's packages with mmdebstrap when it is not there:
# this machine reaches no container registry. Needs podman and mmdebstrap (`.ci/run`
# installs both) and root for podman's networking.
set -euo pipefail
BIN=$(realpath "${1:?usage: $0 path/to/sidelog}")
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
NAME=sidelog-container-test
PORT=50151
VOLUME=$NAME-data
BASE=docker.io/library/debian:bookworm-slim
# This VM's cgroups (v1 with v2 mounted beside, "hybrid") are refused by crun, podman's default
# runtime, but not by runc; and podman's default limits are above this machine's hard limits.
RUN_OPTS=(--runtime runc)
LIMITS=(--ulimit "nofile=$(ulimit -n):$(ulimit -Hn)" --ulimit nproc=4096:4096)
work=$(mktemp -d)
cleanup() {
    podman rm -f "$NAME" >/dev/null 2>&1 || true
    podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
podman rm -f "$NAME" >/dev/null 2>&1 || true
podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true

if ! podman image exists "$BASE"; then
    echo "container test: making $BASE from Debian's packages (mmdebstrap)"
    mmdebstrap --variant=minbase --quiet bookworm "$work/base.tar" http://deb.debian.org/debian
    podman import --quiet "$work/base.tar" "$BASE" >/dev/null
fi
mkdir -p "$work/binary/out"
cp "$BIN" "$work/binary/out/sidelog"
# The OpenSSL the binary links (the Kafka sink's TLS), as the Dockerfile's build stage puts it.
mkdir -p "$work/binary/out/lib"
ldd "$BIN" | awk '/libssl\.so|libcrypto\.so/ {print $3}' | xargs -r cp -t "$work/binary/out/lib"
printf 'FROM scratch\nCOPY out/ /out/\n' > "$work/binary/Containerfile"
podman build --quiet -t localhost/sidelog-binary:test "$work/binary" >/dev/null
podman "${RUN_OPTS[@]}" build --quiet --format docker --layers=false "${LIMITS[@]}" -f "$ROOT/deploy/container/Dockerfile" \
    --build-arg BINARY_FROM=localhost/sidelog-binary:test -t localhost/sidelog:test "$ROOT" >/dev/null
echo "container test: image built"

start() { # start SINK: the container on the volume, published on loopback
    podman "${RUN_OPTS[@]}" run -d "${LIMITS[@]}" --health-interval disable --name "$NAME" -p "127.0.0.1:$PORT:50051" -e SIDELOG_LISTEN=0.0.0.0:50051 \
        -v "$VOLUME:/var/lib/sidelog" localhost/sidelog:test serve --sink "$1" >/dev/null
    for _ in $(seq 1 100); do
        if podman exec "$NAME" sidelog health >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    podman logs "$NAME" | tail -20
    echo "container test: FAILED: sidelog in the container never became healthy" >&2
    exit 1
}

# The sink is down (nothing listens at port 1): what is acked stays in the journal.
start http://127.0.0.1:1
[ "$(podman exec "$NAME" id -u)" = 10001 ] || { echo "container test: FAILED: runs as root" >&2; exit 1; }
podman healthcheck run "$NAME" || { echo "container test: FAILED: HEALTHCHECK" >&2; exit 1; }
out=$("$BIN" publish --target "http://127.0.0.1:$PORT" --count 500 --id-prefix ctr --retry-for-ms 20000)
echo "container test: $out"
case "$out" in *"accepted 500 "*) ;; *) echo "container test: FAILED: not all acked" >&2; exit 1 ;; esac

podman kill --signal KILL "$NAME" >/dev/null
podman rm -f "$NAME" >/dev/null
echo "container test: SIGKILLed; starting again on the same volume with a file sink"
start file:/var/lib/sidelog/out
for _ in $(seq 1 150); do
    delivered=$(podman exec "$NAME" sh -c 'cat /var/lib/sidelog/out/* 2>/dev/null' \
        | grep -a -o 'ctr-[0-9]*' | sort -u | wc -l)
    [ "$delivered" -ge 500 ] && break
    sleep 0.2
done
echo "container test: $delivered of 500 acked messages replayed to the sink"
[ "$delivered" -eq 500 ] || { podman logs "$NAME" | tail -20; echo "container test: FAILED" >&2; exit 1; }
podman stop -t 15 "$NAME" >/dev/null
echo "container test: passed"
