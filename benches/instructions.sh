#!/usr/bin/env bash
# instructions.sh — user-space instructions per proxied request, turnout
# against nginx, counted by valgrind (callgrind). Unlike CPU time on this
# shared VM (±20–35 % between runs), the count is the same run after run, so
# it shows a change of a few per cent; the kernel's share (about half of the
# CPU, the same syscalls for both proxies) is not counted.
#
#   benches/instructions.sh [BIN ...]     default: target/release/turnout
#
# A BIN named naive_proxy is run as examples/naive_proxy.rs (the plain hyper
# proxy of issue 6) instead of as turnout:
#   cargo build --release --example naive_proxy
#   benches/instructions.sh target/release/turnout target/release/examples/naive_proxy
#
# The job is the shared harness's: Host tenant-a.example split 90/10 between
# two single-process nginx upstreams, 8 keep-alive client connections. Each
# proxy serves 1 000 and then 11 000 requests under callgrind; the difference
# of the two totals over 10 000 is the cost of one request, without start-up.
# Needs valgrind, nginx and python3. Takes about two minutes per proxy.
set -euo pipefail
cd "$(dirname "$0")/.."
bins=("$@")
[ ${#bins[@]} -gt 0 ] || { cargo build --release --locked; bins=("$PWD/target/release/turnout"); }
for tool in valgrind nginx python3; do
  command -v "$tool" >/dev/null || { echo "instructions.sh needs $tool" >&2; exit 1; }
done
work=$(mktemp -d /tmp/turnout-instructions.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
listen=38080 blue=38081 green=38082
temp_paths() {
  echo "client_body_temp_path $1/body; proxy_temp_path $1/proxy; fastcgi_temp_path $1/fcgi; uwsgi_temp_path $1/uwsgi; scgi_temp_path $1/scgi;"
}

for spec in "blue $blue" "green $green"; do
  set -- $spec
  mkdir -p "$work/$1"
  cat >"$work/$1/nginx.conf" <<EOF
worker_processes 1; master_process off; daemon off;
pid $work/$1/nginx.pid; error_log $work/$1/error.log warn;
events { worker_connections 1024; }
http {
  access_log off; default_type text/plain; keepalive_requests 100000000; keepalive_timeout 300s;
  $(temp_paths "$work/$1")
  server { listen 127.0.0.1:$2; add_header X-Pool $1; location = / { return 200 "ok"; } }
}
EOF
  nginx -p "$work/$1" -c "$work/$1/nginx.conf" -e "$work/$1/error.log" >/dev/null 2>&1 &
  pids+=($!)
done

mkdir -p "$work/proxy"
cat >"$work/proxy/nginx.conf" <<EOF
worker_processes 1; master_process off; daemon off;
pid $work/proxy/nginx.pid; error_log $work/proxy/error.log warn;
events { worker_connections 1024; }
http {
  access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  $(temp_paths "$work/proxy")
  upstream tenant_a_pool {
    server 127.0.0.1:$blue weight=9; server 127.0.0.1:$green weight=1;
    keepalive 256; keepalive_requests 100000000; keepalive_timeout 300s;
  }
  server { listen 127.0.0.1:$listen default_server; server_name _; return 404; }
  server {
    listen 127.0.0.1:$listen; server_name tenant-a.example;
    location / { proxy_pass http://tenant_a_pool; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host \$host; }
  }
}
EOF
# turnout and the plain proxy start through their harness peer scripts (the
# control file and arguments the load runs use), with the binary wrapped in
# callgrind.
peer_env=(BENCH_RUN_DIR="$work" BENCH_LISTEN_PORT="$listen" BENCH_HOST=tenant-a.example
  BENCH_BLUE_PORT="$blue" BENCH_GREEN_PORT="$green")
cat >"$work/under-callgrind" <<EOF
#!/usr/bin/env bash
exec valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" "\$CALLGRIND_BIN" "\$@"
EOF
chmod +x "$work/under-callgrind"
cat >"$work/client.py" <<'PY'
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
req = b"GET / HTTP/1.1\r\nHost: tenant-a.example\r\n\r\n"
done = 0
while done < n:
    for s in conns:
        s.sendall(req)
    for s in conns:
        buf = b""
        while not (b"\r\n\r\n" in buf and buf.endswith(b"ok")):
            chunk = s.recv(4096)
            if not chunk:
                sys.exit("connection closed")
            buf += chunk
    done += len(conns)
PY

# total_ir NAME N: callgrind's instruction total for a run serving N requests.
total_ir() {
  local name=$1 n=$2 pid
  rm -f "$work"/cg.*
  if [ "$name" = nginx ]; then
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
      nginx -p "$work/proxy" -c "$work/proxy/nginx.conf" -e "$work/proxy/error.log" >/dev/null 2>&1 &
  elif [ "$(basename "$name")" = naive_proxy ]; then
    env "${peer_env[@]}" CALLGRIND_BIN="$name" NAIVE_BIN="$work/under-callgrind" \
      benches/naive-peer.sh >/dev/null 2>&1 &
  else
    env "${peer_env[@]}" CALLGRIND_BIN="$name" TURNOUT_BIN="$work/under-callgrind" \
      benches/turnout-peer.sh >/dev/null 2>&1 &
  fi
  pid=$!
  for _ in $(seq 300); do
    curl -sf -o /dev/null -H "Host: tenant-a.example" "http://127.0.0.1:$listen/" && break
    sleep 0.2
  done
  python3 "$work/client.py" "$listen" "$n"
  # (SIGTERM, not SIGINT: a background job of a script ignores SIGINT
  # unless, like turnout, it installs its own handler.)
  if [ "$name" = nginx ]; then kill -QUIT "$pid"; else kill -TERM "$pid"; fi
  wait "$pid" 2>/dev/null || true
  # Each profile file's `summary:` line is its total (its `totals:` line
  # repeats it, so only one of the two is added up).
  grep -h '^summary:' "$work"/cg.* | awk '{ s += $2 } END { print s }'
}

per_request() {
  local a b
  a=$(total_ir "$1" 1000)
  b=$(total_ir "$1" 11000)
  echo $(((b - a) / 10000))
}

echo "| proxy | user-space instructions per request |"
echo "|---|---|"
echo "| nginx | $(per_request nginx) |"
for bin in "${bins[@]}"; do
  echo "| $bin | $(per_request "$bin") |"
done
