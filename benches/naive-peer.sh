#!/usr/bin/env bash
# naive-peer.sh — examples/naive_proxy.rs (a plain hyper + hyper-util proxy,
# the reference point of issue 6) as the "custom" peer of
# ../shared/bench/proxy-bench.sh, to be measured beside turnout:
#   cargo build --release --example naive_proxy
#   ../shared/bench/proxy-bench.sh --peers nginx,custom --custom-name naive-hyper \
#       --custom-cmd benches/naive-peer.sh --rounds 5
set -eu
bin=${NAIVE_BIN:-$PWD/target/release/examples/naive_proxy}
export TOKIO_WORKER_THREADS=${BENCH_WORKERS:-1}
exec "$bin" "127.0.0.1:$BENCH_LISTEN_PORT" "$BENCH_HOST" \
  "127.0.0.1:$BENCH_BLUE_PORT" "127.0.0.1:$BENCH_GREEN_PORT"
