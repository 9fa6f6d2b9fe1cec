#!/usr/bin/env bash
# rate_limit.sh — what a rate limit buys at the request level (SPEC
# section 16, issue 19), with the release build:
#
#   benches/rate_limit.sh cost [N]        user-space instructions per request
#                                         (callgrind): a proxied request, one
#                                         under limits that pass, a
#                                         429 from rate_limit, a 429 from
#                                         client_rate_limit; and nginx's
#                                         proxied request against its own
#                                         limit_req 429. N requests (default
#                                         10 000) beyond a 1 000 warm-up.
#   benches/rate_limit.sh isolation [ROUNDS]
#                                         tenant B at a modest fixed rate
#                                         (h2load, 2 connections x 250 req/s,
#                                         10 s) alone, then while tenant A is
#                                         flooded (wrk, 32 connections, as
#                                         fast as they go) without a limit,
#                                         then with rate_limit; B's p50/p99
#                                         per round and their medians.
#
# Placement: turnout alone on CPU 1 with one worker thread (so "the proxy's
# full CPU" is one core the flood can saturate); the nginx upstream, wrk,
# h2load and the callgrind client on CPU 0. Needs nginx, wrk, h2load,
# valgrind and python3. Figures: benches/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
case "$mode" in
  cost) n=${2:-10000}; tools=(valgrind nginx python3) ;;
  isolation) rounds=${2:-3}; tools=(nginx wrk h2load python3) ;;
  *) echo "usage: $0 cost [N] | isolation [ROUNDS]" >&2; exit 2 ;;
esac
for tool in "${tools[@]}" curl taskset; do
  command -v "$tool" >/dev/null || { echo "rate_limit.sh needs $tool" >&2; exit 1; }
done
cargo build --release --locked
bin=$PWD/target/release/turnout
work=$(mktemp -d /tmp/turnout-rate-limit.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
listen=39080 admin=39081 upstream=39082 nginx_listen=39083
temp_paths() {
  echo "client_body_temp_path $1/body; proxy_temp_path $1/proxy; fastcgi_temp_path $1/fcgi; uwsgi_temp_path $1/uwsgi; scgi_temp_path $1/scgi;"
}

# The upstream: one single-process nginx answering "ok", on CPU 0.
mkdir -p "$work/up"
cat >"$work/up/nginx.conf" <<EOF
worker_processes 1; master_process off; daemon off;
pid $work/up/nginx.pid; error_log $work/up/error.log warn;
events { worker_connections 4096; }
http {
  access_log off; default_type text/plain; keepalive_requests 100000000; keepalive_timeout 300s;
  $(temp_paths "$work/up")
  server { listen 127.0.0.1:$upstream; location / { return 200 "ok"; } }
}
EOF
taskset -c 0 nginx -p "$work/up" -c "$work/up/nginx.conf" -e "$work/up/error.log" >/dev/null 2>&1 &
pids+=($!)

# turnout: tenant a-open (no limit), a-limited (rate_limit of 1000 req/s:
# the flood's limit), a-roomy (rate_limit and client_rate_limit that never
# refuse: the cost of the checks on a proxied request), a-shut (rate_limit
# refusing all but the first: the cost of a 429), a-clients
# (client_rate_limit, likewise), b (no limit),
# all on the one upstream.
cat >"$work/turnout.toml" <<EOF
[listen]
http = "127.0.0.1:$listen"
admin = "127.0.0.1:$admin"

[defaults]
max_inflight = 100000

[defaults.health]
path = "/"
interval = "1h"

[tenants.a-open]
hosts = ["a-open.test"]
stable = "blue"
weights = { blue = 1, green = 0 }
pools.blue = ["127.0.0.1:$upstream"]
pools.green = []

[tenants.a-limited]
hosts = ["a-limited.test"]
stable = "blue"
weights = { blue = 1, green = 0 }
pools.blue = ["127.0.0.1:$upstream"]
pools.green = []
rate_limit = { rps = 1000, burst = 1000 }

[tenants.a-roomy]
hosts = ["a-roomy.test"]
stable = "blue"
weights = { blue = 1, green = 0 }
pools.blue = ["127.0.0.1:$upstream"]
pools.green = []
rate_limit = { rps = 100000, burst = 100000 }
client_rate_limit = { rps = 100000, burst = 100000 }

[tenants.a-shut]
hosts = ["a-shut.test"]
stable = "blue"
weights = { blue = 1, green = 0 }
pools.blue = ["127.0.0.1:$upstream"]
pools.green = []
rate_limit = { rps = 0.001, burst = 1 }

[tenants.a-clients]
hosts = ["a-clients.test"]
stable = "blue"
weights = { blue = 1, green = 0 }
pools.blue = ["127.0.0.1:$upstream"]
pools.green = []
client_rate_limit = { rps = 0.001, burst = 1 }

[tenants.b]
hosts = ["b.test"]
stable = "blue"
weights = { blue = 1, green = 0 }
pools.blue = ["127.0.0.1:$upstream"]
pools.green = []
EOF

# nginx as the proxy, for the cost comparison: a proxied host and one
# behind limit_req (refusing with 429 past its first request).
mkdir -p "$work/proxy"
cat >"$work/proxy/nginx.conf" <<EOF
worker_processes 1; master_process off; daemon off;
pid $work/proxy/nginx.pid; error_log $work/proxy/error.log warn;
events { worker_connections 1024; }
http {
  access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  $(temp_paths "$work/proxy")
  limit_req_zone \$host zone=tenants:1m rate=1r/m;
  limit_req_status 429;
  upstream pool { server 127.0.0.1:$upstream; keepalive 256; keepalive_requests 100000000; }
  server { listen 127.0.0.1:$nginx_listen default_server; server_name _; return 404; }
  server {
    listen 127.0.0.1:$nginx_listen; server_name a-open.test;
    location / { proxy_pass http://pool; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host \$host; }
  }
  server {
    listen 127.0.0.1:$nginx_listen; server_name a-shut.test;
    location / { limit_req zone=tenants burst=1 nodelay;
      proxy_pass http://pool; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host \$host; }
  }
}
EOF

wait_up() { # PORT HOST
  for _ in $(seq 300); do
    curl -s -o /dev/null -H "Host: $2" "http://127.0.0.1:$1/" && return 0
    sleep 0.2
  done
  echo "rate_limit.sh: nothing answers on $1" >&2; exit 1
}

if [ "$mode" = cost ]; then
  # N keep-alive requests over 8 connections, each answer read by its
  # Content-Length (a 429's body is text, a proxied one "ok").
  cat >"$work/client.py" <<'PY'
import socket, sys
port, host, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
req = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
def answer(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("connection closed")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(65536)
done = 0
while done < n:
    for s in conns:
        s.sendall(req)
    for s in conns:
        answer(s)
    done += len(conns)
PY
  # total_ir PROXY HOST COUNT: callgrind's instruction total for a run of
  # the proxy (turnout or nginx) serving COUNT requests to HOST.
  total_ir() {
    local proxy=$1 host=$2 count=$3 pid port
    rm -f "$work"/cg.*
    if [ "$proxy" = nginx ]; then
      port=$nginx_listen
      taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
        nginx -p "$work/proxy" -c "$work/proxy/nginx.conf" -e "$work/proxy/error.log" >/dev/null 2>&1 &
    else
      port=$listen
      TOKIO_WORKER_THREADS=1 TURNOUT_LOG=warn taskset -c 1 valgrind --tool=callgrind \
        --callgrind-out-file="$work/cg.%p" "$bin" run --config "$work/turnout.toml" >/dev/null 2>&1 &
    fi
    pid=$!
    wait_up "$port" a-open.test
    # Spend the limited buckets' tokens before counting.
    curl -s -o /dev/null -H "Host: $host" "http://127.0.0.1:$port/"
    curl -s -o /dev/null -H "Host: $host" "http://127.0.0.1:$port/"
    taskset -c 0 python3 "$work/client.py" "$port" "$host" "$count"
    if [ "$proxy" = nginx ]; then kill -QUIT "$pid"; else kill -TERM "$pid"; fi
    wait "$pid" 2>/dev/null || true
    grep -h '^summary:' "$work"/cg.* | awk '{ s += $2 } END { print s }'
  }
  per_request() {
    local a b
    a=$(total_ir "$1" "$2" 1000)
    b=$(total_ir "$1" "$2" $((1000 + n)))
    echo $(((b - a) / n))
  }
  echo "| proxy | request | user-space instructions per request |"
  echo "|---|---|---|"
  echo "| turnout | proxied (no limit) | $(per_request turnout a-open.test) |"
  echo "| turnout | proxied, under rate_limit and client_rate_limit that pass | $(per_request turnout a-roomy.test) |"
  echo "| turnout | 429, rate_limit | $(per_request turnout a-shut.test) |"
  echo "| turnout | 429, client_rate_limit | $(per_request turnout a-clients.test) |"
  echo "| nginx | proxied | $(per_request nginx a-open.test) |"
  echo "| nginx | 429, limit_req | $(per_request nginx a-shut.test) |"
  exit 0
fi

# isolation
TOKIO_WORKER_THREADS=1 TURNOUT_LOG=warn taskset -c 1 "$bin" run --config "$work/turnout.toml" \
  >"$work/turnout.log" 2>&1 &
pids+=($!)
wait_up "$listen" b.test
# b_latency NAME: B at 2 x 250 req/s for 10 s; prints "p50_us p99_us".
b_latency() {
  # Host comes from :authority (a -H host would be a second Host field,
  # refused with 400; -B would name the address).
  taskset -c 0 h2load --h1 -c 2 --rps 250 -D 10 -H ":authority: b.test" \
    --log-file="$work/$1.tsv" "http://127.0.0.1:$listen/" >"$work/$1.h2load.txt"
  python3 - "$work/$1.tsv" <<'PY'
import sys
with open(sys.argv[1]) as f:
    rows = [line.split("\t") for line in f if line.strip()]
bad = sum(1 for r in rows if r[1] != "200")
t = sorted(int(r[2]) for r in rows)
pick = lambda q: t[min(len(t) - 1, int(q * len(t)))]
print(pick(0.50), pick(0.99), len(t), bad)
PY
}
# flooded NAME HOST: B's latency while wrk floods HOST, then the flood's
# rate and its answers that were not 2xx (the 429s).
flooded() {
  taskset -c 0 wrk -t1 -c32 -d13s -H "Host: $2" "http://127.0.0.1:$listen/" >"$work/$1.wrk.txt" &
  local wrk=$! latency
  sleep 1.5 # the flood reaches full speed
  latency=$(b_latency "$1")
  wait "$wrk"
  echo "$latency $(awk '/Requests\/sec/ { rate = $2 } /Non-2xx/ { refused = $NF }
    END { printf "flood %d req/s, %d refused", rate, refused }' "$work/$1.wrk.txt")"
}
printf "%-10s %-6s %-9s %-9s %-8s %s\n" scenario round p50_us p99_us requests "non-200 / flood"
for round in $(seq "$rounds"); do
  read -r p50 p99 count bad < <(b_latency "unloaded-$round")
  printf "%-10s %-6s %-9s %-9s %-8s %s\n" unloaded "$round" "$p50" "$p99" "$count" "$bad"
  for scenario in open limited; do
    out=$(flooded "$scenario-$round" "a-$scenario.test")
    read -r p50 p99 count bad rest <<<"$out"
    printf "%-10s %-6s %-9s %-9s %-8s %s\n" "$scenario" "$round" "$p50" "$p99" "$count" "$bad $rest"
  done
done
