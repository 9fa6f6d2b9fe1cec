#!/usr/bin/env bash
# memory.sh — resident memory of turnout and of nginx configured for the same
# job: TENANTS tenants (one host each, a blue/green pool split 90/10 — for
# nginx a `server` and an `upstream` block per tenant), then IDLE client
# connections that each made one request and stay open.
#
#   benches/memory.sh [TENANTS] [IDLE] [PROTO]
#       default 10000 tenants, 1000 idle, PROTO h1 (HTTP/1.1 keep-alive) or
#       h2 (HTTP/2 with prior knowledge; nginx's port then speaks only h2c)
#
# Needs nginx and python3 (benches/load.sh installs the peers). Both proxies
# run one worker; the upstreams are two `turnout upstream` processes.
# Prints RSS (VmRSS) after start-up, with the idle connections open (for
# turnout's HTTP/1.1: as soon as all are parked), the same SETTLE seconds
# later (default 15; the allocator returns freed pages a second or more
# after they are freed, at its next page-level free — see benches/RESULTS.md,
# "Idle client connections"), and the peak (VmHWM), in MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
tenants=${1:-10000}
idle=${2:-1000}
proto=${3:-h1}
settle=${SETTLE:-15}
case "$proto" in h1) h2flag="" ;; h2) h2flag=" http2" ;; *) echo "PROTO is h1 or h2" >&2; exit 64 ;; esac
bin=${TURNOUT_BIN:-$PWD/target/release/turnout}
[ -x "$bin" ] || cargo build --release --locked
work=$(mktemp -d /tmp/turnout-memory.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT
[ -n "${KEEP:-}" ] && echo "work dir: $work"
blue=28081 green=28082 listen=28090 admin=28091
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

"$bin" upstream --name blue --listen "127.0.0.1:$blue" >/dev/null 2>&1 & pids+=($!)
"$bin" upstream --name green --listen "127.0.0.1:$green" >/dev/null 2>&1 & pids+=($!)

python3 - "$work" "$tenants" "$blue" "$green" "$listen" "$admin" "$h2flag" <<'PY'
import sys
work, n, blue, green, listen, admin, h2flag = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
with open(f"{work}/turnout.toml", "w") as f:
    # idle_timeout as nginx's keepalive_timeout below: no idle connection
    # is closed before the last reading.
    f.write(f'[listen]\nhttp = "127.0.0.1:{listen}"\nadmin = "127.0.0.1:{admin}"\nidle_timeout = "300s"\n\n'
            '[defaults.health]\npath = "/"\n\n')
    for i in range(n):
        f.write(f'[tenants.t{i}]\nhosts = ["t{i}.test"]\nstable = "blue"\n'
                f'weights = {{ blue = 90, green = 10 }}\n'
                f'pools.blue = ["127.0.0.1:{blue}"]\npools.green = ["127.0.0.1:{green}"]\n\n')
with open(f"{work}/nginx.conf", "w") as f:
    f.write(f"""worker_processes 1;
master_process off;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  keepalive_timeout 300s;
  server_names_hash_max_size 65536;
  server_names_hash_bucket_size 128;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
""")
    for i in range(n):
        f.write(f"""  upstream p{i} {{ server 127.0.0.1:{blue} weight=9; server 127.0.0.1:{green} weight=1; keepalive 8; }}
  server {{ listen 127.0.0.1:{listen}{h2flag}; server_name t{i}.test;
    location / {{ proxy_pass http://p{i}; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host $host; }} }}
""")
    f.write("}\n")
PY

# Opens $idle connections, one request each to a random tenant, prints
# "open" and holds them until killed.
cat >"$work/hold.py" <<'PY'
import asyncio, random, struct, sys
port, idle, tenants, proto = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload
async def one():
    r, w = await asyncio.open_connection("127.0.0.1", port)
    host = f"t{random.randrange(tenants)}.test"
    if proto == "h1":
        w.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:40]
        return r, w
    # HTTP/2 with prior knowledge: preface, empty SETTINGS, one GET
    # (HPACK: static :method GET, :scheme http, :path /, literal
    # :authority), then wait for the response's HEADERS frame (":status
    # 200" is static index 8: 0x88 first).
    block = bytes([0x82, 0x86, 0x84, 0x01, len(host)]) + host.encode()
    w.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + frame(1, 0x5, 1, block))
    await w.drain()
    while True:
        head = await r.readexactly(9)
        length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
        payload = await r.readexactly(length)
        if kind == 4 and not flags & 1:
            w.write(frame(4, 1, 0))  # SETTINGS ack
        if kind == 1:
            assert payload[:1] == b"\x88", payload[:8]
            return r, w
async def main():
    conns = []
    for i in range(0, idle, 100):
        conns += await asyncio.gather(*(one() for _ in range(min(100, idle - i))))
    print("open", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
PY

rss() { awk -v k="$2" '$1 == k":" { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

measure() {
  local name=$1 pid=$2
  for _ in $(seq 300); do
    curl -sf -o /dev/null ${h2flag:+--http2-prior-knowledge} -H "Host: t0.test" "http://127.0.0.1:$listen/" && break
    sleep 0.1
  done
  sleep 1
  local start parked
  start=$(rss "$pid" VmRSS)
  python3 "$work/hold.py" "$listen" "$idle" "$tenants" "$proto" >"$work/hold.out" 2>&1 &
  local holder=$!
  for _ in $(seq 600); do
    grep -qx open "$work/hold.out" && break
    kill -0 "$holder" 2>/dev/null || { echo "$name: idle connections failed:" >&2; cat "$work/hold.out" >&2; exit 1; }
    sleep 0.1
  done
  sleep 1
  if [ "$name" = turnout ] && [ "$proto" = h1 ]; then
    # Idle HTTP/1.1 connections are parked a second or two after their
    # last request (src/server/served.rs): measure once all of them are.
    for _ in $(seq 100); do
      parked=$(curl -sf "http://127.0.0.1:$admin/metrics" |
        awk '/^turnout_client_connections\{state="parked"\}/ { print $2 }')
      [ "${parked:-0}" = "$idle" ] && break
      sleep 0.1
    done
    echo "turnout: ${parked:-0} of $idle idle connections parked" >&2
  fi
  local open with
  with=$(rss "$pid" VmRSS)
  sleep "$settle"
  open=$(ss -Htn state established "( sport = :$listen )" | wc -l)
  [ "$open" = "$idle" ] || echo "$name: only $open of $idle client connections still open" >&2
  printf '| %s | %s | %s | %s | %s | %s |\n' "$name" "$start" "$with" "$(rss "$pid" VmRSS)" "$(rss "$pid" VmHWM)" "$open"
  kill "$holder" "$pid"; wait "$holder" "$pid" 2>/dev/null || true
}

echo "$tenants tenants, $idle idle $proto client connections (MiB)"
echo "| proxy | RSS after start | RSS with idle connections | the same ${settle} s later | peak RSS | client connections open |"
echo "|---|---|---|---|---|---|"
TOKIO_WORKER_THREADS=1 TURNOUT_LOG=warn "$bin" run --config "$work/turnout.toml" \
  >"$work/turnout.log" 2>&1 & tp=$!
measure turnout "$tp"
nginx -p "$work" -c "$work/nginx.conf" -e "$work/nginx-error.log" >/dev/null 2>&1 & np=$!
measure nginx "$np"
