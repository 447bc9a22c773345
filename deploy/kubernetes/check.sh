#!/usr/bin/env bash
# Checks deploy/kubernetes/: every manifest against Kubernetes' schemas (kubernetes-validate,
# from PyPI, offline once installed), and the sidelog.toml of its ConfigMap with
# `sidelog serve --check-config`. Usage: deploy/kubernetes/check.sh path/to/sidelog
set -euo pipefail
BIN=$(realpath "${1:?usage: $0 path/to/sidelog}")
HERE=$(cd "$(dirname "$0")" && pwd)
VENV=${KUBE_VALIDATE_VENV:-$HERE/../../target/kube-venv}
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'kubernetes-validate==1.*'
fi
for manifest in "$HERE"/*.yaml; do
    "$VENV/bin/kubernetes-validate" --strict --quiet "$manifest"
    work=$(mktemp -d)
    "$VENV/bin/python" - "$manifest" "$work" <<'PY'
import sys, yaml
manifest, out = sys.argv[1], sys.argv[2]
for doc in yaml.safe_load_all(open(manifest)):
    if doc and doc.get("kind") == "ConfigMap" and "sidelog.toml" in doc.get("data", {}):
        open(f"{out}/sidelog.toml", "w").write(doc["data"]["sidelog.toml"])
PY
    if [ -f "$work/sidelog.toml" ]; then
        "$BIN" serve --config "$work/sidelog.toml" --data-dir "$work/data" --check-config >/dev/null
        echo "deploy: $(basename "$manifest"): its sidelog.toml passes --check-config"
    fi
    rm -rf "$work"
    echo "deploy: $(basename "$manifest") is valid Kubernetes"
done
