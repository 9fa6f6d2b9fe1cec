#!/usr/bin/env bash
# latency.sh — latency percentiles at a fixed request rate, turnout against
# nginx and HAProxy, through the shared harness. Issue 6's latency target is
# "p99 at half of nginx's saturation rate no worse than nginx's"; the
# harness's fixed-rate mode (h2load) reports only the mean, so this runs it
# with benches/latency/h2load first in PATH, which keeps every request's
# time, and reads p50/p99/p99.9 from those.
#
#   benches/latency.sh [ROUNDS] [RATE]    default 5 rounds; RATE in req/s
#
# Without RATE, nginx's saturation rate is measured first (keep-alive, 3
# rounds) and half its median is used. Raw runs stay in the directory
# printed at the end. Takes about 1 minute per run (peers × rounds).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
rate=${2:-}
harness=../shared/bench
bash "$harness/setup-peers.sh" >/dev/null
cargo build --release --locked
out=$(mktemp -d /tmp/turnout-latency.XXXXXX)

if [ -z "$rate" ]; then
  "$harness/proxy-bench.sh" --peers nginx --rounds 3 --out "$out/saturation" >/dev/null
  rate=$(awk -F, 'NR > 1 && $4 == "nginx" && $6 == "ok" { print $7 }' "$out/saturation/runs.csv" |
    sort -n | awk '{ v[NR] = $1 } END { if (NR) print int(v[int((NR + 1) / 2)] / 2) }')
  [ -n "$rate" ] || { echo "latency.sh: no usable nginx saturation run in $out/saturation" >&2; exit 1; }
  echo "nginx saturation (median of 3): $((rate * 2)) req/s; fixed rate: $rate req/s"
fi

PATH="$PWD/benches/latency:$PATH" "$harness/proxy-bench.sh" --rate "$rate" \
  --peers nginx,haproxy,custom --custom-name turnout --custom-cmd benches/turnout-peer.sh \
  --rounds "$rounds" --out "$out/rate" >/dev/null

python3 - "$out/rate" <<'PY'
import csv, os, statistics, sys

out = sys.argv[1]

def percentiles(path):
    with open(path) as f:
        micros = sorted(int(line.split("\t")[2]) for line in f if line.strip())
    at = lambda q: micros[min(len(micros) - 1, int(q * len(micros)))] / 1000
    return at(0.50), at(0.99), at(0.999)

runs = {}
with open(os.path.join(out, "runs.csv")) as f:
    for row in csv.DictReader(f):
        if row["status"] not in ("ok", "short"):
            continue
        d = os.path.join(out, f"run-{row['round']}-{row['peer']}")
        if row["attempt"] not in ("", "1"):
            d += f"-a{row['attempt']}"
        log = os.path.join(d, "requests.tsv")
        if not os.path.exists(log):
            sys.exit(f"latency.sh: {log} is missing (was benches/latency/h2load used?)")
        p50, p99, p999 = percentiles(log)
        runs.setdefault(row["peer"], {})[row["round"]] = dict(
            rps=float(row["rps"]), p50=p50, p99=p99, p999=p999,
            cpu=float(row["cpu_us_per_req"] or "nan"), short=row["status"] == "short")

def median(peer, key):
    return statistics.median(r[key] for r in runs[peer].values())

print("| peer | rounds (short of the rate) | req/s | p50 ms | p99 ms | p99.9 ms | p99 vs nginx, median of rounds (range) | CPU µs/req |")
print("|---|---|---|---|---|---|---|---|")
for peer in runs:
    ratios = [r["p99"] / runs["nginx"][k]["p99"]
              for k, r in runs[peer].items() if k in runs.get("nginx", {})]
    ratio = (f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
             if ratios else "–")
    short = sum(r["short"] for r in runs[peer].values())
    print(f"| {peer} | {len(runs[peer])} ({short}) | {median(peer, 'rps'):.0f} | "
          f"{median(peer, 'p50'):.2f} | {median(peer, 'p99'):.2f} | {median(peer, 'p999'):.2f} | "
          f"{ratio} | {median(peer, 'cpu'):.1f} |")
PY
echo "raw runs: $out"
