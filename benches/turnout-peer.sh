#!/usr/bin/env bash
# turnout-peer.sh — turnout as the "custom" peer of ../shared/bench/proxy-bench.sh.
# Like ../shared/bench/turnout-peer.sh, plus a health path the harness's
# nginx upstreams answer (they have no /healthz, and turnout's active checks
# would otherwise eject both pools after three probes and answer 503).
#   TURNOUT_BIN   the binary (default: target/release/turnout in the cwd)
set -eu
bin=${TURNOUT_BIN:-$PWD/target/release/turnout}
cfg=$BENCH_RUN_DIR/turnout.toml
admin=$((BENCH_LISTEN_PORT + 1000))
if [ "${BENCH_TLS:-0}" = 1 ]; then
  listen="https = \"127.0.0.1:$BENCH_LISTEN_PORT\"
http = \"127.0.0.1:$((BENCH_LISTEN_PORT + 1001))\""
  tls="tls = { cert = \"$BENCH_TLS_CERT\", key = \"$BENCH_TLS_KEY\" }"
else
  listen="http = \"127.0.0.1:$BENCH_LISTEN_PORT\""
  tls=""
fi
cat > "$cfg" <<CFG
[listen]
$listen
admin = "127.0.0.1:$admin"

[defaults.health]
path = "/"

[tenants.bench]
hosts = ["$BENCH_HOST"]
stable = "blue"
weights = { blue = 90, green = 10 }
pools.blue = ["127.0.0.1:$BENCH_BLUE_PORT"]
pools.green = ["127.0.0.1:$BENCH_GREEN_PORT"]
$tls
CFG
export TOKIO_WORKER_THREADS=${BENCH_WORKERS:-1} TURNOUT_LOG=${TURNOUT_LOG:-warn}
exec "$bin" run --config "$cfg"
