#!/usr/bin/env bash
# load.sh — turnout against nginx and HAProxy (and a direct connection)
# through the shared harness, every scenario of issue 6, one command.
#
#   benches/load.sh [ROUNDS]        default 5 rounds per scenario
#
# Installs the peers (apt: nginx, haproxy, wrk, h2load), builds turnout in
# release mode, runs keep-alive, new-connection, TLS keep-alive and TLS
# handshake-bound scenarios, then keep-alive once more with the plain hyper
# proxy of examples/naive_proxy.rs in turnout's place (the reference point
# of issue 6), and prints each scenario's summary table with CPU per request
# as a ratio to nginx measured in the same run. Raw rows stay in
# /tmp/proxy-bench.*/. Takes about 3 minutes per scenario at 5 rounds.
# Latency percentiles at a fixed rate: benches/latency.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
harness=../shared/bench
bash "$harness/setup-peers.sh" >/dev/null
cargo build --release --locked --bin turnout --example naive_proxy
peer=(--custom-name turnout --custom-cmd benches/turnout-peer.sh --rounds "$rounds")
for scenario in "keepalive nginx,haproxy,direct,custom" "close nginx,haproxy,custom" "tls nginx,custom" "tls-close nginx,custom"; do
  set -- $scenario
  echo "== mode $1"
  "$harness/proxy-bench.sh" --mode "$1" --peers "$2" "${peer[@]}" | sed -n '/^| peer/,/^$/p'
done
echo "== mode keepalive, plain hyper proxy for reference"
"$harness/proxy-bench.sh" --peers nginx,custom --custom-name naive-hyper \
  --custom-cmd benches/naive-peer.sh --rounds "$rounds" | sed -n '/^| peer/,/^$/p'
