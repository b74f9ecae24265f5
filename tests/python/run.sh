#!/usr/bin/env bash
# Starts the built gateway binary on free loopback ports with the built-in Loomis
# simulator, runs tests/python/grpc_client.py against it, and stops the gateway.
# Needs: python3 with grpcio, grpcio-reflection and protobuf; the debug binary (built
# here if missing). Exit status is the client's.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
bin="${GATEWAY_BIN:-$target/debug/safepoint-gateway}"
if [[ ! -x "$bin" ]]; then
    (cd "$root" && cargo build --quiet --bin safepoint-gateway)
fi

tmp="$(mktemp -d)"
gw_pid=""
cleanup() {
    if [[ -n "$gw_pid" ]] && kill -0 "$gw_pid" 2>/dev/null; then
        kill -TERM "$gw_pid" 2>/dev/null || true
        wait "$gw_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# Port 0: the gateway picks free ports and logs them (JSON log, "gateway listening").
cat > "$tmp/gateway.toml" <<TOML
[server]
http_listen = "127.0.0.1:0"
grpc_listen = "127.0.0.1:0"

[store]
path = "$tmp/store"

[loomis]
url = "simulator"
auth = { type = "none" }

[callbacks]
auth = { type = "bearer", token_env = "PYTEST_CALLBACK_TOKEN" }

[simulator]
accept_after_ms = 100
close_after_ms = 100

[log]
format = "json"

[[integrations]]
name = "internal"
customer_number = "C000001"
mapping = "$root/mappings/internal-grpc.toml"
api_key_env = "PYTEST_INTERNAL_KEY"
TOML

export PYTEST_CALLBACK_TOKEN="cb-$RANDOM-$RANDOM-$RANDOM"
export PYTEST_INTERNAL_KEY="key-$RANDOM-$RANDOM-$RANDOM"

"$bin" serve --config "$tmp/gateway.toml" > "$tmp/gateway.log" 2>&1 &
gw_pid=$!

addr=""
for _ in $(seq 1 300); do
    addr="$(python3 - "$tmp/gateway.log" <<'PY'
import json, sys
for line in open(sys.argv[1], errors="replace"):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("message") == "gateway listening" and e.get("grpc"):
        print(e["grpc"])
        break
PY
)"
    [[ -n "$addr" ]] && break
    if ! kill -0 "$gw_pid" 2>/dev/null; then
        echo "gateway exited before listening:" >&2
        cat "$tmp/gateway.log" >&2
        exit 1
    fi
    sleep 0.1
done
if [[ -z "$addr" ]]; then
    echo "gateway did not report its gRPC address within 30 s:" >&2
    cat "$tmp/gateway.log" >&2
    exit 1
fi
echo "gateway gRPC on $addr"

status=0
python3 "$root/tests/python/grpc_client.py" --address "$addr" --key "$PYTEST_INTERNAL_KEY" --integration internal || status=$?
if [[ $status -ne 0 ]]; then
    echo "--- gateway log ---" >&2
    tail -n 50 "$tmp/gateway.log" >&2
fi
exit $status
