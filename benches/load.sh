#!/usr/bin/env bash
# load.sh — turnout against nginx and HAProxy (and a direct connection)
# through the shared harness, every scenario of issue 6, one command.
#
#   benches/load.sh [ROUNDS]        default 5 rounds per scenario
#
# Installs the peers (apt: nginx, haproxy, wrk, h2load), builds turnout in
# release mode, runs keep-alive, new-connection, TLS keep-alive and TLS
# handshake-bound scenarios, and prints each scenario's summary table with
# CPU per request as a ratio to nginx measured in the same run. Raw rows stay
# in /tmp/proxy-bench.*/. Takes about 3 minutes per scenario at 5 rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
harness=../shared/bench
bash "$harness/setup-peers.sh" >/dev/null
cargo build --release --locked
peer=(--custom-name turnout --custom-cmd benches/turnout-peer.sh --rounds "$rounds")
for scenario in "keepalive nginx,haproxy,direct,custom" "close nginx,haproxy,custom" "tls nginx,custom" "tls-close nginx,custom"; do
  set -- $scenario
  echo "== mode $1"
  "$harness/proxy-bench.sh" --mode "$1" --peers "$2" "${peer[@]}" | sed -n '/^| peer/,/^$/p'
done
